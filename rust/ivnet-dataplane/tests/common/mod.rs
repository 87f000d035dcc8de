//! Shared by the integration tests: a real ivnet server on a UNIX socket in a temporary
//! directory, and helpers to wait for conditions and bring a link up.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ivnet_dataplane::link::Link;
use ivnet_dataplane::server::{Ivshmem, Server, ServerConfig};

/// A server running on its own thread; stopped and joined when dropped.
pub struct Running {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    /// The server's socket.
    pub path: PathBuf,
    _dir: TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().unwrap().unwrap();
        }
    }
}

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);
impl TempDir {
    /// Creates it, empty.
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("ivnet-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts a server for one link of `size` bytes.
pub fn start(tag: &str, size: usize) -> Running {
    start_observed(tag, size).0
}

/// Starts an ivshmem 2.0 server for one link of a `size` window.
pub fn start_v2(tag: &str, size: usize) -> Running {
    start_with(tag, size, Ivshmem::V2).0
}

/// Starts a server for one link of `size` bytes, with a host observer of its region.
pub fn start_observed(tag: &str, size: usize) -> (Running, ivnet_dataplane::observe::LinkObserver) {
    start_with(tag, size, Ivshmem::V1)
}

/// Starts a server of either generation, with a host observer of its region.
pub fn start_with(
    tag: &str,
    size: usize,
    ivshmem: Ivshmem,
) -> (Running, ivnet_dataplane::observe::LinkObserver) {
    let dir = TempDir::new(tag);
    let path = dir.0.join("link.sock");
    let server = Server::new(ServerConfig {
        ivshmem,
        socket: path.clone(),
        size,
        vectors: 2,
        socket_mode: 0o600,
    })
    .unwrap();
    let observer = server.observer().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let handle = Some(server.spawn(stop.clone()));
    (
        Running {
            stop,
            handle,
            path,
            _dir: dir,
        },
        observer,
    )
}

/// Polls `f` every 2 ms until it holds; fails after 10 s.
pub fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(10), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Two link ends on the server at `s`, both running.
pub fn running_pair(s: &Running) -> (Link, Link) {
    let mut a = Link::new(ivnet_dataplane::client::Client::connect(&s.path, 2).unwrap()).unwrap();
    let mut b = Link::new(ivnet_dataplane::client::Client::connect(&s.path, 2).unwrap()).unwrap();
    link_up(&mut a, &mut b);
    (a, b)
}

/// Drives both ends' state machines until both run.
pub fn link_up(a: &mut Link, b: &mut Link) {
    wait_for("both ends RUN", || {
        a.update_state();
        b.update_state();
        a.running() && b.running()
    });
    assert!(a.carrier() && b.carrier());
}

/// Sends `n` frames each way between two running link ends, every one compared as it arrives
/// (a's frames are `frame(0..n)`, b's `frame(n..2n)`, lengths 60..1514); fails after 60 s.
pub fn exchange_frames(a: &mut Link, b: &mut Link, n: u32, frame: impl Fn(u32) -> Vec<u8>) {
    let (mut sa, mut ra, mut sb, mut rb) = (0u32, 0u32, 0u32, 0u32);
    let mut buf = vec![0u8; 2048];
    let t = Instant::now();
    while ra < n || rb < n {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "stalled at {ra}/{rb}"
        );
        while sa < n && a.send(&frame(sa)).unwrap() {
            sa += 1;
        }
        a.flush_tx();
        while sb < n && b.send(&frame(sb + n)).unwrap() {
            sb += 1;
        }
        b.flush_tx();
        while let Some(len) = b.recv(&mut buf) {
            assert_eq!(&buf[..len], &frame(rb)[..], "a->b frame {rb}");
            rb += 1;
        }
        while let Some(len) = a.recv(&mut buf) {
            assert_eq!(&buf[..len], &frame(ra + n)[..], "b->a frame {ra}");
            ra += 1;
        }
        a.reclaim().unwrap();
        b.reclaim().unwrap();
    }
}
