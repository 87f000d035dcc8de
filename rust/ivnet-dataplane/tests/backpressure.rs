//! Back-pressure on a full ring, end to end over the real pieces: the ivshmem server (memfd,
//! owner table, eventfds over a UNIX socket), two clients each with its own mapping of the
//! region, and two host `Link`s driven by two threads. The sender is much faster than the
//! receiver (which pauses), so the ring fills; the sender must see that, wait for the
//! receiver's completion doorbell and retry the same frame, and the receiver must get every
//! frame exactly once, in order, byte for byte.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ivnet_core::queue::MIN_FRAME;
use ivnet_core::v1::VECTOR_DATA;
use ivnet_dataplane::client::{drain_eventfd, Client};
use ivnet_dataplane::link::Link;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

mod common;

/// Frames sent.
const N: u32 = 20_000;
/// Longest frame (Ethernet header and 1500-byte payload).
const MAX_LEN: usize = 1514;
/// The whole exchange must finish within this, or the test fails.
const DEADLINE: Duration = Duration::from_secs(60);
/// The receiver starts this late, so the sender fills the ring first.
const FIRST_PAUSE: Duration = Duration::from_millis(300);
/// ... and then pauses this long after every `PAUSE_EVERY` frames.
const PAUSE: Duration = Duration::from_millis(3);
const PAUSE_EVERY: u32 = 250;

/// Length of frame `seq`: varied over the whole range a receiver accepts, 14..=1514 (the
/// protocol refuses frames shorter than an Ethernet header as runts, so 1..=13 cannot be sent).
fn frame_len(seq: u32) -> usize {
    let span = (MAX_LEN - MIN_FRAME as usize + 1) as u64;
    MIN_FRAME as usize + (u64::from(seq) * 7919 % span) as usize
}

/// Writes frame `seq` into `buf` (which must be `frame_len(seq)` long): the sequence number,
/// then a pattern that depends on both the sequence number and the position.
fn fill(seq: u32, buf: &mut [u8]) {
    buf[..4].copy_from_slice(&seq.to_le_bytes());
    for (k, b) in buf[4..].iter_mut().enumerate() {
        *b = (seq.wrapping_mul(31) as usize ^ k.wrapping_mul(7)) as u8 ^ 0x5a;
    }
}

/// Our own copy of the link's data-vector eventfd, to wait on from the link's thread.
fn data_eventfd(link: &Link) -> OwnedFd {
    link.client()
        .vector(VECTOR_DATA)
        .unwrap()
        .try_clone_to_owned()
        .unwrap()
}

/// True when `fd` became readable within `ms` milliseconds.
fn readable(fd: BorrowedFd<'_>, ms: u16) -> bool {
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::from(ms)), Ok(n) if n > 0)
}

fn check_deadline(start: Instant, who: &str, progress: u32) {
    assert!(
        start.elapsed() < DEADLINE,
        "{who}: deadline of {DEADLINE:?} passed at frame {progress} of {N}"
    );
}

/// Sets its flag when dropped: a thread's "I am done", also when it panics.
struct Done(Arc<AtomicBool>);
impl Drop for Done {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

#[derive(Debug, Default)]
struct SenderReport {
    /// Times `send` refused a frame because the ring (descriptors or data area) was full.
    full: u32,
    /// Frames accepted before the first refusal.
    before_first_full: Option<u32>,
    /// Completion doorbells that woke the sender.
    doorbells: u32,
    /// Waits that ended on the timer instead (the receiver was pausing).
    timeouts: u32,
}

fn sender(
    mut link: Link,
    start: Instant,
    sender_done: &AtomicBool,
    receiver_done: &AtomicBool,
) -> (Link, SenderReport) {
    let mut rep = SenderReport::default();
    let data = data_eventfd(&link);
    let mut buf = vec![0u8; MAX_LEN];
    let mut seq = 0u32;
    while seq < N {
        check_deadline(start, "sender", seq);
        let len = frame_len(seq);
        fill(seq, &mut buf[..len]);
        if link.send(&buf[..len]).expect("send") {
            seq += 1;
            if seq % 16 == 0 {
                link.flush_tx();
            }
            continue;
        }
        // Refused: the link must still be up (so this is back-pressure, not a link reset).
        assert!(link.running(), "link left RUN at frame {seq}");
        rep.full += 1;
        rep.before_first_full.get_or_insert(seq);
        // Make the pushed frames visible, ask for a completion doorbell, and sleep until room
        // appears; then retry the same frame (never skip it).
        link.flush_tx();
        while !link.wait_tx_room(len) {
            check_deadline(start, "sender (waiting for room)", seq);
            assert!(
                !receiver_done.load(Ordering::Acquire),
                "the receiver stopped while the sender waited for room at frame {seq}"
            );
            if readable(data.as_fd(), 50) {
                drain_eventfd(data.as_fd());
                rep.doorbells += 1;
            } else {
                rep.timeouts += 1;
            }
        }
    }
    link.flush_tx();
    sender_done.store(true, Ordering::Release);
    // Keep the link (and our state word) up until the receiver has checked there is nothing
    // more, then collect the last completions.
    while !receiver_done.load(Ordering::Acquire) {
        check_deadline(start, "sender (waiting for the receiver)", seq);
        thread::sleep(Duration::from_millis(2));
    }
    link.reclaim().expect("reclaim");
    (link, rep)
}

fn receiver(mut link: Link, start: Instant, sender_done: &AtomicBool) -> Link {
    let data = data_eventfd(&link);
    thread::sleep(FIRST_PAUSE);
    let mut got = vec![0u8; 2048];
    let mut want = vec![0u8; MAX_LEN];
    let mut next = 0u32;
    while next < N {
        check_deadline(start, "receiver", next);
        // Read before looking at the ring: the sender sets it after publishing its last frame.
        let sender_finished = sender_done.load(Ordering::Acquire);
        let mut len = None;
        let (n, more) = link.receive(1, |region, f| {
            len = Some(f.len);
            if f.len <= got.len() {
                region.read_bytes(f.offset, &mut got[..f.len]).unwrap();
            }
        });
        let Some(len) = len else {
            assert_eq!(n, 0);
            assert!(
                !sender_finished || more,
                "the sender finished, but frame {next} of {N} never arrived"
            );
            // Nothing pending and the doorbell re-armed: wait for it (unless a frame slipped
            // in meanwhile).
            if !more && readable(data.as_fd(), 50) {
                drain_eventfd(data.as_fd());
            }
            continue;
        };
        let expect_len = frame_len(next);
        fill(next, &mut want[..expect_len]);
        assert!(len >= 4, "frame {next}: {len} bytes, expected {expect_len}");
        let seq = u32::from_le_bytes(got[..4].try_into().unwrap());
        assert_eq!(
            seq, next,
            "expected frame {next}, got frame {seq} (lost, duplicated or reordered)"
        );
        assert_eq!(len, expect_len, "frame {next}: wrong length");
        assert!(
            got[..len] == want[..len],
            "frame {next}: content differs from what was sent"
        );
        next += 1;
        if next % PAUSE_EVERY == 0 {
            thread::sleep(PAUSE);
        }
    }
    // Exactly once: after the sender has published everything, nothing is left.
    while !sender_done.load(Ordering::Acquire) {
        check_deadline(start, "receiver (waiting for the sender)", next);
        thread::sleep(Duration::from_millis(2));
    }
    thread::sleep(Duration::from_millis(20));
    assert_eq!(
        link.recv(&mut got),
        None,
        "a frame arrived after all {N} frames"
    );
    link
}

#[test]
fn full_ring_applies_back_pressure_and_loses_nothing() {
    // Dropped last (declared first): the server outlives both links.
    let server = common::start("backpressure", 1 << 20);
    let mut a = Link::new(Client::connect(&server.path, 2).unwrap()).unwrap();
    let mut b = Link::new(Client::connect(&server.path, 2).unwrap()).unwrap();
    common::link_up(&mut a, &mut b);

    let start = Instant::now();
    let sender_done = Arc::new(AtomicBool::new(false));
    let receiver_done = Arc::new(AtomicBool::new(false));
    let tx = {
        let (sd, rd) = (sender_done.clone(), receiver_done.clone());
        thread::spawn(move || {
            // Say "done" even when failing, so the receiver stops waiting at once.
            let _done = Done(sd.clone());
            sender(a, start, &sd, &rd)
        })
    };
    let rx = {
        let (sd, rd) = (sender_done.clone(), receiver_done.clone());
        thread::spawn(move || {
            let _done = Done(rd);
            receiver(b, start, &sd)
        })
    };
    let rx = rx.join();
    let tx = tx.join();
    let b = rx.expect("receiver failed");
    let (a, rep) = tx.expect("sender failed");
    eprintln!("sender: {rep:?}; took {:?}", start.elapsed());

    assert!(
        rep.full >= 1,
        "the sender never found the ring full: {rep:?}"
    );
    let first = rep.before_first_full.unwrap();
    assert!(
        first > 0 && first < N,
        "the ring filled after {first} frames"
    );
    assert!(
        rep.doorbells >= 1,
        "the sender was never woken by a completion doorbell: {rep:?}"
    );
    assert_eq!(a.stats.tx_frames, u64::from(N), "every frame sent once");
    assert_eq!(b.stats.rx_frames, u64::from(N), "every frame received once");
    assert_eq!((a.stats.protocol_resets, b.stats.protocol_resets), (0, 0));
    assert!(a.running() && b.running());

    drop((a, b));
    drop(server);
}
