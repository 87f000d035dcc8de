//! `ivnet bench-core`: a microbenchmark of the protocol core on this host.
//!
//! Two threads play the two peers of one link over ONE shared memory region: a memfd of the
//! link's size (1 MiB by default, what `ivnet server --size 1M` creates) mapped twice, once per
//! peer, with the v1 layout of [`ivnet_core::v1`]. The owner table is written as the server
//! writes it; each peer then runs the real link endpoint ([`ivnet_core::endpoint::Endpoint`])
//! up to RUN, which resets its queue on the way.
//!
//! One peer sends frames through [`ivnet_core::queue::TxQueue`] (`reserve`, copy into the slot,
//! `push`, `publish`, `reclaim`); the other receives them through
//! [`ivnet_core::queue::RxQueue`] (`recv`, which copies the frame out, `publish`,
//! `enable_notify`) and checks every frame: its length, its sequence number (the first 8 bytes)
//! and every byte of its body (a pattern that depends on the sequence number). A lost,
//! duplicated, reordered, truncated or corrupted frame ends the run with an error, so figures
//! count only frames that arrived intact.
//!
//! Notification follows the event-index rules: a side rings the other only when `publish` says
//! the other asked for it, and it waits only after re-arming (`enable_notify`,
//! `request_completion_notify`) and looking again. A waiting side wakes only on a doorbell
//! (never on a timer), so a lost notification shows up as a stall, which is an error. The
//! doorbell is an eventfd the waiter blocks on in `poll(2)` (as between the host peer and
//! QEMU), or with [`WaitMode::Spin`] a counter the waiter spins on.
//!
//! The same run measures memcpy bandwidth on this machine (a buffer of each frame size, hot in
//! the cache, and a large one that is not) so the figures can be compared.

use std::io::{self, Write};
use std::os::fd::AsFd;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ivnet_core::endpoint::{Endpoint, V1Words};
use ivnet_core::geometry::frame_slot_size;
use ivnet_core::queue::{Queues, MIN_FRAME};
use ivnet_core::v1::{self, V1Region};
use ivnet_core::ProtocolError;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use ivnet_dataplane::mapping::{memfd, Mapping};

mod peers;
use peers::*;

/// Largest frame size the benchmark accepts.
pub const MAX_FRAME: usize = 65535;
/// Bytes at the start of each frame that carry its sequence number (little endian).
pub const SEQ_BYTES: usize = 8;
/// Frames the sender pushes between two `publish` calls, and the receiver takes between two.
const BATCH: u64 = 64;
/// A wait for a doorbell (or for the other peer during setup) longer than this is a stall.
const STALL: Duration = Duration::from_secs(5);
/// The body of frame `seq` starts at `seq % BODY_SHIFTS` in the pattern (a prime, so that
/// consecutive frames, and frames one ring apart, differ in every byte position).
const BODY_SHIFTS: usize = 251;
/// Size of the buffers of the cache-cold memcpy measurement.
pub const LARGE_COPY: usize = 64 << 20;
/// How long each memcpy measurement runs.
const MEMCPY_TIME: Duration = Duration::from_millis(250);
/// What a peer reports when it stopped because the other one failed.
const ABORTED: &str = "stopped: the other peer failed";

/// How a side that has nothing to do waits for the other's doorbell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitMode {
    /// Block in `poll(2)` on an eventfd the other side writes (the host link's doorbells).
    Eventfd,
    /// Spin (with `spin_loop` hints and an occasional `yield_now`) on a counter the other side
    /// increments; needs a core per peer to be meaningful.
    Spin,
}

impl FromStr for WaitMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "eventfd" => Ok(WaitMode::Eventfd),
            "spin" => Ok(WaitMode::Spin),
            _ => Err(format!("unknown wait mode {s:?} (eventfd or spin)")),
        }
    }
}

impl std::fmt::Display for WaitMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WaitMode::Eventfd => "eventfd",
            WaitMode::Spin => "spin",
        })
    }
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct Config {
    /// Seconds of traffic for each frame size.
    pub seconds: f64,
    /// Frame sizes in bytes (each `MIN_FRAME..=MAX_FRAME`, and it must fit the data area).
    pub sizes: Vec<usize>,
    /// Size of the shared memory region (a valid v1 link size, e.g. 1 MiB).
    pub shm_size: usize,
    /// How the peers wait for doorbells.
    pub wait: WaitMode,
}

impl Config {
    /// Checks the settings; the message names the offending one.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.seconds.is_finite() && self.seconds > 0.0 && self.seconds <= 3600.0) {
            return Err(format!(
                "--seconds {}: must be above 0 and at most 3600",
                self.seconds
            ));
        }
        let g = v1::check_size(self.shm_size).map_err(|e| format!("--size: {e}"))?;
        if self.sizes.is_empty() {
            return Err("--sizes: give at least one frame size".into());
        }
        for &s in &self.sizes {
            if !(MIN_FRAME as usize..=MAX_FRAME).contains(&s) {
                return Err(format!(
                    "--sizes: {s} bytes is outside {MIN_FRAME}..={MAX_FRAME} (a receiver refuses \
                     frames shorter than an Ethernet header)"
                ));
            }
            if frame_slot_size(s) > g.data_size() {
                return Err(format!(
                    "--sizes: a {s}-byte frame does not fit the {}-byte data area",
                    g.data_size()
                ));
            }
        }
        Ok(())
    }
}

/// The outcome of one frame-size run. Every frame counted was received intact.
#[derive(Debug, Clone, Copy)]
pub struct FrameRun {
    /// Frame size in bytes.
    pub size: usize,
    /// Frames sent, received and verified.
    pub frames: u64,
    /// Seconds from the start until the receiver had verified the last frame.
    pub secs: f64,
    /// Doorbells the sender rang (the receiver had asked for them).
    pub sender_rings: u64,
    /// Doorbells the receiver rang (completion doorbells the sender had asked for).
    pub receiver_rings: u64,
    /// Times the sender found no room for a frame (ring or data area full).
    pub ring_full: u64,
    /// Times the sender slept until a completion doorbell.
    pub sender_waits: u64,
    /// Times the receiver slept until a doorbell.
    pub receiver_waits: u64,
}

impl FrameRun {
    /// Frames per second.
    pub fn frames_per_s(&self) -> f64 {
        self.frames as f64 / self.secs
    }

    /// Frame bytes (not counting any Ethernet preamble or gap) in Gbit/s.
    pub fn gbit_per_s(&self) -> f64 {
        self.frames as f64 * self.size as f64 * 8.0 / self.secs / 1e9
    }
}

/// The outcome of one memcpy measurement.
#[derive(Debug, Clone, Copy)]
pub struct MemcpyRun {
    /// Bytes per copy.
    pub size: usize,
    /// Bytes copied in all.
    pub bytes: u64,
    /// Seconds taken.
    pub secs: f64,
}

impl MemcpyRun {
    /// Bytes copied, in Gbit/s.
    pub fn gbit_per_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.secs / 1e9
    }
}

/// Runs `size`-byte frames from one peer to the other for `dur` over a fresh region of
/// `shm_size` bytes, and returns what arrived (all of it verified).
pub fn run_frames(
    shm_size: usize,
    size: usize,
    dur: Duration,
    wait: WaitMode,
    stop: &AtomicBool,
) -> Result<FrameRun, String> {
    v1::check_size(shm_size).map_err(|e| e.to_string())?;
    let fd = memfd("ivnet-bench", shm_size).map_err(|e| format!("memfd: {e}"))?;
    // One mapping per peer, as two processes (or a VM and the host) would have.
    let map_tx = Mapping::new(&fd, shm_size).map_err(|e| format!("mmap: {e}"))?;
    let map_rx = Mapping::new(&fd, shm_size).map_err(|e| format!("mmap: {e}"))?;
    // The server's part: slot owners (ids 0 and 1), which zeroes the state words.
    let ctl = V1Region::new(map_tx.region()).map_err(|e| e.to_string())?;
    for slot in 0..v1::SLOTS {
        ctl.set_owner(slot, Some(slot as u32))
            .map_err(|e| format!("owner table: {e:?}"))?;
    }
    let doorbell = |what| Doorbell::new(wait).map_err(|e| format!("{what} eventfd: {e}"));
    let sh = Shared {
        to_receiver: doorbell("receiver")?,
        to_sender: doorbell("sender")?,
        abort: AtomicBool::new(false),
        stop,
        ready: AtomicU32::new(0),
        done: AtomicBool::new(false),
        total: AtomicU64::new(0),
    };
    let pattern = pattern(size);
    let (tx, rx) = std::thread::scope(|s| {
        let tx = s.spawn(|| sh.guard(sender(&map_tx, &sh, &pattern, size, dur)));
        let rx = s.spawn(|| sh.guard(receiver(&map_rx, &sh, &pattern, size)));
        (join(tx, "sender"), join(rx, "receiver"))
    });
    let (tx, rx) = match (tx, rx) {
        (Ok(t), Ok(r)) => (t, r),
        // Report the peer that failed first, not the one it stopped.
        (Err(e), Err(f)) if e == ABORTED => return Err(f),
        (Err(e), _) | (_, Err(e)) => return Err(e),
    };
    if tx.sent != rx.received {
        return Err(format!("sent {} frames, received {}", tx.sent, rx.received));
    }
    if rx.received == 0 {
        return Err("no frame arrived".into());
    }
    Ok(FrameRun {
        size,
        frames: rx.received,
        secs: rx.secs,
        sender_rings: tx.rings,
        receiver_rings: rx.rings,
        ring_full: tx.full,
        sender_waits: tx.waits,
        receiver_waits: rx.waits,
    })
}

/// Copies a `size`-byte buffer into another over and over for about `dur`.
pub fn memcpy_bandwidth(size: usize, dur: Duration) -> MemcpyRun {
    let src: Vec<u8> = (0..size).map(|i| (i * 7 + 1) as u8).collect();
    let mut dst = vec![0u8; size];
    // Touch the destination first (page faults are not copying).
    std::hint::black_box(&mut dst[..]).copy_from_slice(std::hint::black_box(&src[..]));
    let inner = ((1usize << 20) / size).max(1) as u64;
    let mut copies = 0u64;
    let t = Instant::now();
    loop {
        for _ in 0..inner {
            std::hint::black_box(&mut dst[..]).copy_from_slice(std::hint::black_box(&src[..]));
        }
        copies += inner;
        if t.elapsed() >= dur {
            break;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    std::hint::black_box(&dst);
    assert!(dst == src, "memcpy produced a different buffer");
    MemcpyRun {
        size,
        bytes: copies * size as u64,
        secs,
    }
}

fn result(
    out: &mut dyn Write,
    metric: &str,
    size: usize,
    value: f64,
    unit: &str,
) -> io::Result<()> {
    let v = if value >= 1000.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.3}")
    };
    writeln!(
        out,
        "RESULT metric={metric} size={size} value={v} unit={unit}"
    )
}

/// Runs the whole benchmark and prints human-readable lines and `RESULT metric=... size=...
/// value=... unit=...` lines to `out`. Stops early (with an error) when `stop` becomes true.
pub fn run(cfg: &Config, stop: &AtomicBool, out: &mut dyn Write) -> Result<(), String> {
    cfg.validate()?;
    let g = v1::check_size(cfg.shm_size).map_err(|e| e.to_string())?;
    let sec = v1::section_size(cfg.shm_size);
    let io = |e: io::Error| format!("output: {e}");
    writeln!(
        out,
        "ivnet bench-core: ivnet-core TX queue -> RX queue, two threads, one shared region"
    )
    .map_err(io)?;
    writeln!(
        out,
        "region: memfd of {} bytes mapped once per peer; v1 layout, sections of {sec:#x} at {:#x} \
         and {:#x}; queue of {} entries; data area {} bytes",
        cfg.shm_size,
        v1::section_offset(cfg.shm_size, 0),
        v1::section_offset(cfg.shm_size, 1),
        g.qlen,
        g.data_size()
    )
    .map_err(io)?;
    let how = match cfg.wait {
        WaitMode::Eventfd => "eventfd (the waiter blocks in poll(2); rung with write(2))",
        WaitMode::Spin => "spin (the waiter spins on a shared counter, yielding now and then)",
    };
    writeln!(
        out,
        "doorbell: {how}; event-index notification (rung only when the other side asked)"
    )
    .map_err(io)?;
    writeln!(
        out,
        "per frame: one copy in (sender), one copy out (receiver), length + sequence number + \
         every byte checked; {} s per size",
        cfg.seconds
    )
    .map_err(io)?;
    out.flush().map_err(io)?;
    let dur = Duration::from_secs_f64(cfg.seconds);
    for &size in &cfg.sizes {
        let r = run_frames(cfg.shm_size, size, dur, cfg.wait, stop)
            .map_err(|e| format!("{size}-byte frames: {e}"))?;
        let per = |n: u64| n as f64 / r.frames as f64;
        writeln!(
            out,
            "frames {size:>5} B: {:>12.0} frames/s  {:>8.3} Gbit/s  ({} frames in {:.3} s, all \
             verified; doorbells/frame: to receiver {:.4}, to sender {:.4}; sender found the \
             ring full {} times, slept {} times; receiver slept {} times)",
            r.frames_per_s(),
            r.gbit_per_s(),
            r.frames,
            r.secs,
            per(r.sender_rings),
            per(r.receiver_rings),
            r.ring_full,
            r.sender_waits,
            r.receiver_waits
        )
        .map_err(io)?;
        result(out, "frames_per_s", size, r.frames_per_s(), "frames/s").map_err(io)?;
        result(out, "gbit_per_s", size, r.gbit_per_s(), "Gbit/s").map_err(io)?;
        out.flush().map_err(io)?;
    }
    let mut copies: Vec<usize> = cfg.sizes.clone();
    copies.push(LARGE_COPY);
    for size in copies {
        if stop.load(Ordering::Relaxed) {
            return Err("interrupted".into());
        }
        let m = memcpy_bandwidth(size, MEMCPY_TIME);
        let what = if size == LARGE_COPY {
            "large, from memory"
        } else {
            "hot in cache"
        };
        writeln!(
            out,
            "memcpy {size:>8} B: {:>8.3} Gbit/s  ({:.2} GB/s, {what})",
            m.gbit_per_s(),
            m.gbit_per_s() / 8.0
        )
        .map_err(io)?;
        result(out, "memcpy_gbit_per_s", size, m.gbit_per_s(), "Gbit/s").map_err(io)?;
        out.flush().map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
