//! The supervisor's control protocol: one JSON [`Request`] line in, one JSON [`Reply`] line
//! out, on the UNIX socket `control` of the network's state directory (root's, mode 0700).
//!
//! ```text
//! > {"request":"status"}
//! < {"status":{"network":"ivbr0",...}}
//! > {"request":"reconcile"}
//! < {"reconciled":{"restarted":["c2"]}}
//! > {"request":"capture","link":"c2-c3","file":"/tmp/c.pcap","seconds":10,"max_bytes":67108864}
//! < {"capturing":{"file":"/tmp/c.pcap","sampled":true}}
//! > {"request":"down"}
//! < "down"
//! ```
//!
//! An orchestrator may speak it directly; `ivnet status --json` prints the [`Status`] inside.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::status::Status;

/// Longest request line the supervisor reads.
pub const MAX_REQUEST: u64 = 4096;

/// What a client asks the supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "lowercase")]
pub enum Request {
    /// The network's [`Status`].
    Status,
    /// Restart what died (cells' QEMUs, dnsmasq); change nothing else.
    Reconcile,
    /// Tear the network down and exit.
    Down,
    /// Record the frames of one link in a new pcap file for a while (`ivnet capture`).
    Capture(CaptureRequest),
}

/// What to capture, where, and for how long.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureRequest {
    /// The link's name (`c1-host`, `c2-c3`) as `ivnet status` shows it.
    pub link: String,
    /// The pcap file to create (absolute; an existing file is never overwritten).
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
#[serde(rename_all = "lowercase")]
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
    /// A request it could not read.
    Error {
        /// Why.
        message: String,
    },
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Reads one request from a client (at most [`MAX_REQUEST`] bytes, one line).
pub fn read_request(s: &UnixStream) -> io::Result<Request> {
    let mut line = String::new();
    BufReader::new(s.take(MAX_REQUEST)).read_line(&mut line)?;
    serde_json::from_str(line.trim()).map_err(|e| bad(format!("bad request {line:?}: {e}")))
}

/// Writes one reply line.
pub fn write_reply(mut s: &UnixStream, r: &Reply) -> io::Result<()> {
    let text = serde_json::to_string(r).map_err(|e| bad(e.to_string()))?;
    writeln!(s, "{text}")
}

/// Sends `req` to the supervisor listening on `socket`; its reply, within `timeout`.
pub fn call(socket: &Path, req: Request, timeout: Duration) -> io::Result<Reply> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(timeout))?;
    let text = serde_json::to_string(&req).map_err(|e| bad(e.to_string()))?;
    writeln!(s, "{text}")?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    let reply: Reply = serde_json::from_str(answer.trim())
        .map_err(|e| bad(format!("bad answer from the supervisor: {e}")))?;
    match reply {
        Reply::Error { message } => Err(bad(format!("the supervisor refused: {message}"))),
        r => Ok(r),
    }
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
            let req = read_request(&b).unwrap();
            assert_eq!(req, Request::Status);
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
