//! Target `client_proto`: the client's side of the ivshmem-server protocol
//! (`ivnet_dataplane::proto::recv_msg` through `ivnet_dataplane::client::Client`), fed arbitrary server
//! behaviour over a real UNIX socket.
//!
//! A server thread (one per process) accepts the client's connection and plays a script: an
//! optional well-formed greeting, then messages whose values are chosen (the version, -1,
//! small ids, negative or huge ids, anything), each with zero to two file descriptors of
//! chosen kinds (a sealed or unsealed memfd of some size, an eventfd, a pipe), messages split
//! in two writes (with the fd on either half), and messages cut short; then it closes the
//! connection. The client runs `Client::connect` (which expects 0..=4 vectors) and, if that
//! succeeds, `handle_message` until the server is gone.
//!
//! Invariants: no panic and no hang; every failure is an `io::Error` with a message; a
//! successful setup has exactly the vectors it asked for and maps the memory it was sent; the
//! file descriptors the server sends are either kept by the client or closed, never leaked
//! (the lowest free descriptor number is the same before and after each run).

use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Mutex, OnceLock};

use arbitrary::Arbitrary;
use ivnet_dataplane::client::{Client, ServerEvent};
use ivnet_dataplane::mapping::memfd;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

/// A message value.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Val {
    /// 0: the protocol version (and peer id 0).
    Zero,
    /// -1: the shared memory message.
    MinusOne,
    /// A small peer id (x % 4).
    Id(u8),
    /// Just past the ids a client accepts: 2^32 + (x % 4).
    TooBig(u8),
    /// Negative.
    Negative(u8),
    /// Anything.
    Raw(i64),
}

impl Val {
    fn get(self) -> i64 {
        match self {
            Val::Zero => 0,
            Val::MinusOne => -1,
            Val::Id(x) => i64::from(x % 4),
            Val::TooBig(x) => (1i64 << 32) + i64::from(x % 4),
            Val::Negative(x) => -2 - i64::from(x),
            Val::Raw(v) => v,
        }
    }
}

/// A file descriptor the server sends.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum FdKind {
    /// A memfd of one of a few sizes (0, 100 bytes, a page, the minimum link region),
    /// sealed as ivnet's server seals it or not.
    Memfd {
        /// Size selector (x % 4).
        size: u8,
        /// Sealed against resizing.
        sealed: bool,
    },
    /// An eventfd (a vector).
    EventFd,
    /// The read end of a pipe.
    Pipe,
}

/// One thing the server writes.
#[derive(Arbitrary, Debug, Clone)]
pub enum Msg {
    /// An 8-byte message with these descriptors attached (at most [`MAX_FDS_PER_MSG`] are sent).
    Whole(Val, Vec<FdKind>),
    /// An 8-byte message in two writes, cut after `1 + x % 7` bytes, with a descriptor on
    /// the first or the second write.
    Split(Val, u8, Option<(bool, FdKind)>),
    /// The first `1 + x % 7` bytes of a message, maybe with a descriptor; nothing can follow
    /// (the server then closes the connection).
    CutShort(Val, u8, Option<FdKind>),
}

/// What the server does, and how many vectors the client expects.
#[derive(Arbitrary, Debug, Clone)]
pub struct Input {
    /// Vectors the client expects (x % 5).
    pub vectors: u8,
    /// Start with a well-formed greeting for client id `id % 4`: version, id, the memory,
    /// and the client's own vectors (as many as it expects).
    pub greeting: Option<u8>,
    /// Then these.
    pub script: Vec<Msg>,
}

struct Job {
    input: Input,
    max_fds: usize,
    done: Sender<()>,
}

struct Harness {
    path: PathBuf,
    jobs: Mutex<Sender<Job>>,
}

const SOCK_PREFIX: &str = "ivnet-fuzz-client-";

/// libFuzzer ends a process with `exit()`, so the socket of an earlier run stays behind: remove
/// those whose process is gone.
fn remove_stale_sockets(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(SOCK_PREFIX))
            .and_then(|n| n.strip_suffix(".sock"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let dir = std::env::temp_dir();
        remove_stale_sockets(&dir);
        let path = dir.join(format!("{SOCK_PREFIX}{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).expect("bind the fuzz server socket");
        let (tx, rx) = channel::<Job>();
        std::thread::spawn(move || serve(listener, rx));
        Harness {
            path,
            jobs: Mutex::new(tx),
        }
    })
}

fn make_fd(k: FdKind) -> OwnedFd {
    match k {
        FdKind::Memfd { size, sealed } => {
            let size = [0usize, 100, 0x1000, 0x10000][usize::from(size % 4)];
            if sealed {
                memfd("ivnet-fuzz", size).expect("memfd")
            } else {
                let fd = nix::sys::memfd::memfd_create(
                    c"ivnet-fuzz",
                    nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
                )
                .expect("memfd");
                nix::unistd::ftruncate(&fd, size as i64).expect("ftruncate");
                fd
            }
        }
        FdKind::EventFd => {
            nix::sys::eventfd::EventFd::from_flags(nix::sys::eventfd::EfdFlags::EFD_CLOEXEC)
                .expect("eventfd")
                .into()
        }
        FdKind::Pipe => nix::unistd::pipe().expect("pipe").0,
    }
}

/// One write of `bytes` with `fds` attached; errors (the client left) are ignored.
fn write(sock: RawFd, bytes: &[u8], fds: &[FdKind]) {
    let owned: Vec<OwnedFd> = fds.iter().map(|&k| make_fd(k)).collect();
    let raw: Vec<RawFd> = owned.iter().map(|f| f.as_raw_fd()).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &cmsg };
    let _ = sendmsg::<()>(
        sock,
        &[IoSlice::new(bytes)],
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    );
}

fn serve(listener: UnixListener, jobs: Receiver<Job>) {
    for job in jobs {
        let Ok((stream, _)) = listener.accept() else {
            let _ = job.done.send(());
            continue;
        };
        let s = stream.as_raw_fd();
        let input = &job.input;
        if let Some(id) = input.greeting {
            let id = i64::from(id % 4);
            write(s, &0i64.to_le_bytes(), &[]);
            write(s, &id.to_le_bytes(), &[]);
            let mem = FdKind::Memfd {
                size: 3,
                sealed: true,
            };
            write(s, &(-1i64).to_le_bytes(), &[mem]);
            for _ in 0..input.vectors % 5 {
                write(s, &id.to_le_bytes(), &[FdKind::EventFd]);
            }
        }
        for m in &input.script {
            match m {
                Msg::Whole(v, fds) => {
                    write(
                        s,
                        &v.get().to_le_bytes(),
                        &fds[..fds.len().min(job.max_fds)],
                    );
                }
                Msg::Split(v, cut, fd) => {
                    let b = v.get().to_le_bytes();
                    let cut = 1 + usize::from(cut % 7);
                    let (first, second): (&[FdKind], &[FdKind]) = match fd {
                        Some((false, k)) => (std::slice::from_ref(k), &[]),
                        Some((true, k)) => (&[], std::slice::from_ref(k)),
                        None => (&[], &[]),
                    };
                    write(s, &b[..cut], first);
                    write(s, &b[cut..], second);
                }
                Msg::CutShort(v, n, fd) => {
                    let b = v.get().to_le_bytes();
                    write(s, &b[..1 + usize::from(n % 7)], fd.as_slice());
                    break;
                }
            }
        }
        drop(stream);
        let _ = job.done.send(());
    }
}

/// Open file descriptors of this process (the count includes the directory's own).
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

/// Most descriptors the server attaches to one message in [`run`]: more than the one the
/// protocol allows, so that extras are exercised (three or more once leaked in `recv_msg`; see
/// `fuzz/README.md`, "Findings", and the regression test).
pub const MAX_FDS_PER_MSG: usize = 3;

/// Runs one input.
pub fn run(input: &Input) {
    run_with(input, MAX_FDS_PER_MSG)
}

/// Runs one input, the server attaching at most `max_fds` descriptors to one message.
pub fn run_with(input: &Input, max_fds: usize) {
    let h = harness();
    let before = open_fds();
    let (done, finished) = channel();
    h.jobs
        .lock()
        .unwrap()
        .send(Job {
            input: input.clone(),
            max_fds,
            done,
        })
        .expect("server thread alive");
    let vectors = u16::from(input.vectors % 5);
    match Client::connect(&h.path, vectors) {
        Err(e) => assert!(!e.to_string().is_empty(), "an error without a message"),
        Ok(mut c) => {
            for v in 0..vectors {
                assert!(c.vector(v).is_some(), "vector {v} missing");
            }
            assert!(c.vector(vectors).is_none(), "a vector too many");
            assert!(!c.mapping().is_empty());
            // Every message is at least one byte: this many reads reach the end.
            let limit = 8 * input.script.len() + 2;
            for _ in 0..limit {
                match c.handle_message() {
                    Ok(ServerEvent::Closed) => break,
                    Ok(ServerEvent::PeerVector(id)) => {
                        assert!(c.peer_ids().contains(&id));
                    }
                    Ok(ServerEvent::PeerGone(id)) => {
                        assert!(!c.peer_ids().contains(&id));
                    }
                    Err(e) => assert!(!e.to_string().is_empty(), "an error without a message"),
                }
            }
        }
    }
    finished.recv().expect("server thread finished the script");
    assert_eq!(open_fds(), before, "file descriptors leaked");
}
