//! The supervisor's control protocol: one JSON [`Request`] line in, one JSON [`Reply`] line
//! out, on the UNIX socket `control.sock` of the network's state directory (root's, in a
//! directory of mode 0700). A capture request carries its file as a descriptor (SCM_RIGHTS)
//! with the line: the supervisor never opens a path a client names.
//!
//! ```text
//! > {"request":"status"}
//! < {"status":{"network":"ivbr0",...}}
//! > {"request":"reconcile"}
//! < {"reconciled":{"restarted":["c2"]}}
//! > {"request":"capture","link":"c2-c3","file":"/tmp/c.pcap","seconds":10,"max_bytes":67108864}
//!   (with the open file attached)
//! < {"capturing":{"file":"/tmp/c.pcap","sampled":true}}
//! > {"request":"end-capture","link":"c2-c3"}
//! < {"capture_ended":{"file":"/tmp/c.pcap"}}
//! > {"request":"down"}
//! < "down"
//! ```
//!
//! An orchestrator may speak it directly; `ivnet status --json` prints the [`Status`] inside.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use ivnet_dataplane::proto::{recv_with_fd, send_with_fd};

use crate::status::Status;

/// Longest request line the supervisor reads.
pub const MAX_REQUEST: u64 = 4096;

/// What a client asks the supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "kebab-case")]
pub enum Request {
    /// The network's [`Status`].
    Status,
    /// Restart what died (cells' QEMUs, dnsmasq); change nothing else.
    Reconcile,
    /// Tear the network down and exit.
    Down,
    /// Record the frames of one link in a new pcap file for a while (`ivnet capture`); the
    /// file comes with the request, as a descriptor.
    Capture(CaptureRequest),
    /// End the capture of a link now.
    EndCapture {
        /// The link's name.
        link: String,
    },
}

/// What to capture, where, and for how long.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureRequest {
    /// The link's name (`c1-host`, `c2-c3`) as `ivnet status` shows it.
    pub link: String,
    /// The pcap file's name (absolute), for the status and the logs: the file itself, new and
    /// empty, comes with the request as a descriptor, opened by the client.
    pub file: PathBuf,
    /// How long, in seconds ([`CAPTURE_SECONDS`]).
    pub seconds: u64,
    /// At most this many bytes of file ([`CAPTURE_BYTES`]).
    pub max_bytes: u64,
}

/// The range of [`CaptureRequest::seconds`].
pub const CAPTURE_SECONDS: std::ops::RangeInclusive<u64> = 1..=3600;
/// The range of [`CaptureRequest::max_bytes`].
pub const CAPTURE_BYTES: std::ops::RangeInclusive<u64> = 4096..=(1 << 32);

impl CaptureRequest {
    /// Checks what a client asked for (the socket is root's, but its input is still checked).
    pub fn check(&self) -> Result<(), String> {
        if !CAPTURE_SECONDS.contains(&self.seconds) {
            return Err(format!(
                "capture for {} s: give {} to {} seconds",
                self.seconds,
                CAPTURE_SECONDS.start(),
                CAPTURE_SECONDS.end()
            ));
        }
        if !CAPTURE_BYTES.contains(&self.max_bytes) {
            return Err(format!(
                "capture of at most {} bytes: give {} to {} bytes",
                self.max_bytes,
                CAPTURE_BYTES.start(),
                CAPTURE_BYTES.end()
            ));
        }
        if !self.file.is_absolute() {
            return Err(format!(
                "capture file {}: the supervisor needs an absolute path",
                self.file.display()
            ));
        }
        Ok(())
    }
}

/// The supervisor's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// To [`Request::Status`].
    Status(Box<Status>),
    /// To [`Request::Reconcile`]: the cells (and `dnsmasq`) restarted.
    Reconciled {
        /// What was restarted.
        restarted: Vec<String>,
    },
    /// To [`Request::Down`]: the network is down; the supervisor exits.
    Down,
    /// To [`Request::Capture`]: the capture runs.
    Capturing {
        /// The file it writes.
        file: PathBuf,
        /// Every frame (a link to the host, whose frames the host peer moves), or what a
        /// sampling of the link's memory sees (a cell<->cell link; see
        /// `ivnet_dataplane::observe`).
        sampled: bool,
    },
    /// To [`Request::EndCapture`]: the capture ended and its file is complete.
    CaptureEnded {
        /// Its file.
        file: PathBuf,
    },
    /// A request it could not read.
    Error {
        /// Why.
        message: String,
    },
}

impl From<Result<Reply, String>> for Reply {
    /// A refusal becomes [`Reply::Error`].
    fn from(r: Result<Reply, String>) -> Reply {
        r.unwrap_or_else(|message| Reply::Error { message })
    }
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// How long a client has to send its whole request.
pub const REQUEST_TIME: Duration = Duration::from_millis(500);

/// Reads one request from a client: one line of at most [`MAX_REQUEST`] bytes within
/// [`REQUEST_TIME`] in all, and the first descriptor that came with it.
pub fn read_request(s: &UnixStream) -> io::Result<(Request, Option<OwnedFd>)> {
    let end = Instant::now() + REQUEST_TIME;
    let mut buf = vec![0u8; MAX_REQUEST as usize];
    let (mut got, mut fd) = (0, None);
    while got < buf.len() && !buf[..got].contains(&b'\n') {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(bad(format!("no whole request within {REQUEST_TIME:?}")));
        }
        s.set_read_timeout(Some(left))?;
        let (n, f) = recv_with_fd(s.as_fd(), &mut buf[got..])?;
        if fd.is_none() {
            fd = f;
        }
        if n == 0 {
            break;
        }
        got += n;
    }
    let line = String::from_utf8_lossy(&buf[..got]);
    let line = line.split('\n').next().unwrap_or_default().trim();
    let req = serde_json::from_str(line).map_err(|e| bad(format!("bad request {line:?}: {e}")))?;
    Ok((req, fd))
}

/// Writes one reply line.
pub fn write_reply(mut s: &UnixStream, r: &Reply) -> io::Result<()> {
    let text = serde_json::to_string(r).map_err(|e| bad(e.to_string()))?;
    writeln!(s, "{text}")
}

/// Sends `req` to the supervisor listening on `socket`, with `fd` attached when given; its
/// reply, within `timeout`.
pub fn call_with(
    socket: &Path,
    req: Request,
    fd: Option<BorrowedFd<'_>>,
    timeout: Duration,
) -> io::Result<Reply> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(timeout))?;
    let mut text = serde_json::to_string(&req).map_err(|e| bad(e.to_string()))?;
    text.push('\n');
    send_with_fd(s.as_fd(), text.as_bytes(), fd)?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    let reply: Reply = serde_json::from_str(answer.trim())
        .map_err(|e| bad(format!("bad answer from the supervisor: {e}")))?;
    match reply {
        Reply::Error { message } => Err(bad(format!("the supervisor refused: {message}"))),
        r => Ok(r),
    }
}

/// [`call_with`] without a descriptor.
pub fn call(socket: &Path, req: Request, timeout: Duration) -> io::Result<Reply> {
    call_with(socket, req, None, timeout)
}

/// [`call`] for the status.
pub fn status(socket: &Path, timeout: Duration) -> io::Result<Status> {
    match call(socket, Request::Status, timeout)? {
        Reply::Status(s) => Ok(*s),
        other => Err(bad(format!("the supervisor answered {other:?} to status"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_is_one_tagged_json_value() {
        assert_eq!(
            serde_json::to_string(&Request::Reconcile).unwrap(),
            r#"{"request":"reconcile"}"#
        );
        let r = Reply::Reconciled {
            restarted: vec!["c2".into()],
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(text, r#"{"reconciled":{"restarted":["c2"]}}"#);
        assert_eq!(serde_json::from_str::<Reply>(&text).unwrap(), r);
        assert_eq!(serde_json::to_string(&Reply::Down).unwrap(), r#""down""#);
    }

    #[test]
    fn a_round_trip_over_a_socket_pair() {
        let (a, b) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || {
            let (req, fd) = read_request(&b).unwrap();
            assert_eq!(req, Request::Status);
            assert!(fd.is_none());
            let st = crate::status::tests::sample();
            write_reply(&b, &Reply::Status(Box::new(st))).unwrap();
        });
        let text = serde_json::to_string(&Request::Status).unwrap();
        writeln!(&a, "{text}").unwrap();
        a.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = String::new();
        (&a).read_to_string(&mut answer).unwrap();
        server.join().unwrap();
        let Reply::Status(st) = serde_json::from_str(&answer).unwrap() else {
            panic!("{answer}")
        };
        assert_eq!(*st, crate::status::tests::sample());
    }

    #[test]
    fn a_capture_request_is_checked_before_anything_is_made() {
        let ok = CaptureRequest {
            link: "c2-c3".into(),
            file: "/tmp/x.pcap".into(),
            seconds: 10,
            max_bytes: 64 << 20,
        };
        assert_eq!(ok.check(), Ok(()));
        let wire = serde_json::to_string(&Request::Capture(ok.clone())).unwrap();
        assert!(
            wire.starts_with(r#"{"request":"capture","link":"c2-c3""#),
            "{wire}"
        );
        for (bad, why) in [
            (
                CaptureRequest {
                    seconds: 0,
                    ..ok.clone()
                },
                "0 s",
            ),
            (
                CaptureRequest {
                    seconds: 3601,
                    ..ok.clone()
                },
                "3601 s",
            ),
            (
                CaptureRequest {
                    max_bytes: 100,
                    ..ok.clone()
                },
                "100 bytes",
            ),
            (
                CaptureRequest {
                    file: "x.pcap".into(),
                    ..ok.clone()
                },
                "absolute",
            ),
        ] {
            let e = bad.check().unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn a_descriptor_rides_with_the_request_line() {
        let (a, b) = UnixStream::pair().unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        let text = serde_json::to_string(&Request::EndCapture {
            link: "c2-c3".into(),
        })
        .unwrap();
        assert_eq!(text, r#"{"request":"end-capture","link":"c2-c3"}"#);
        send_with_fd(a.as_fd(), format!("{text}\n").as_bytes(), Some(w.as_fd())).unwrap();
        let (req, fd) = read_request(&b).unwrap();
        assert_eq!(
            req,
            Request::EndCapture {
                link: "c2-c3".into()
            }
        );
        // The descriptor received is the pipe's write end: what goes in comes out of `r`.
        nix::unistd::write(fd.unwrap(), b"x").unwrap();
        let mut got = [0u8; 1];
        nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(&r), &mut got).unwrap();
        assert_eq!(&got, b"x");
    }

    #[test]
    fn a_client_that_trickles_is_cut_off_in_time() {
        let (a, b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            for _ in 0..20 {
                if (&a).write_all(b" ").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let t0 = Instant::now();
        assert!(read_request(&b).is_err());
        assert!(
            t0.elapsed() < REQUEST_TIME + Duration::from_millis(300),
            "{:?}",
            t0.elapsed()
        );
        drop(b);
        t.join().unwrap();
    }

    #[test]
    fn garbage_and_unknown_requests_are_errors_not_panics() {
        for junk in [
            "status\n",
            "{\"request\":\"reboot\"}\n",
            "\u{0}\u{1}\n",
            "{}\n",
        ] {
            let (a, b) = UnixStream::pair().unwrap();
            (&a).write_all(junk.as_bytes()).unwrap();
            assert!(read_request(&b).is_err(), "{junk:?}");
        }
    }
}
