//! The host peer: one link bridged to a TAP device, frames moved directly between the TAP and
//! the shared memory (the kernel reads from and writes into the ring slots; no bounce buffer).

use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use ivnet_core::v1::{VECTOR_DATA, VECTOR_STATE};
use log::{info, warn};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::client::drain_eventfd;
use crate::link::Link;
use crate::tap::Tap;

/// Largest frame moved (1500-byte MTU, Ethernet header, one VLAN tag).
pub const MAX_FRAME: usize = 1518;
/// Frames moved per direction before looking at the other direction.
const BUDGET: usize = 64;

/// Runs the bridge until `stop` is set, the server goes away, or an I/O error occurs.
pub fn run(link: &mut Link, tap: &Tap, stop: &AtomicBool) -> io::Result<()> {
    run_with(link, tap, stop, |_| {})
}

/// As [`run`], calling `tick` with the link about every 100 ms (to publish its counters).
pub fn run_with(
    link: &mut Link,
    tap: &Tap,
    stop: &AtomicBool,
    mut tick: impl FnMut(&Link),
) -> io::Result<()> {
    link.update_state();
    let mut last_tick = Instant::now();
    let mut tx_blocked = false;
    let mut last_report = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if last_tick.elapsed().as_millis() >= 100 {
            last_tick = Instant::now();
            tick(link);
        }
        let running = link.running();
        let (sock_ev, st_ev, data_ev, tap_ev) = {
            let c = link.client();
            let st = c.vector(VECTOR_STATE).expect("state vector");
            let data = c.vector(VECTOR_DATA).expect("data vector");
            let tap_flags = if running && !tx_blocked {
                PollFlags::POLLIN
            } else {
                PollFlags::empty()
            };
            let mut fds = [
                PollFd::new(c.socket(), PollFlags::POLLIN),
                PollFd::new(st, PollFlags::POLLIN),
                PollFd::new(data, PollFlags::POLLIN),
                PollFd::new(tap.as_fd(), tap_flags),
            ];
            match poll(&mut fds, PollTimeout::from(200u16)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            let r = |i: usize| fds[i].revents().is_some_and(|r| !r.is_empty());
            (r(0), r(1), r(2), r(3))
        };
        if sock_ev {
            link.handle_server_message()?;
        }
        if st_ev || !link.running() {
            // Also re-check while the link is not running: a doorbell rung at a peer whose
            // eventfds the ringer did not know yet is lost (in QEMU as here), and only a look
            // at the state words notices what it was meant to announce.
            drain_eventfd(link.client().vector(VECTOR_STATE).expect("state vector"));
            link.update_state();
        }
        if data_ev {
            drain_eventfd(link.client().vector(VECTOR_DATA).expect("data vector"));
        }
        if !link.running() {
            tx_blocked = false;
            continue;
        }
        // Shared memory -> TAP.
        let mut dropped = 0;
        loop {
            let (_, more) = link.receive(BUDGET, |r, f| {
                match r.ptr_range(f.offset, f.len) {
                    // SAFETY: ptr_range checked the frame lies inside the peer's section.
                    Ok(p) => {
                        if let Err(e) = unsafe { tap.write_raw(p, f.len) } {
                            dropped += 1;
                            warn!("TAP {} write: {e}", tap.name());
                        }
                    }
                    Err(e) => {
                        dropped += 1;
                        warn!("frame outside section: {e:?}");
                    }
                }
            });
            if !more {
                break;
            }
        }
        link.stats.rx_dropped += dropped;
        // TAP -> shared memory.
        let _ = link.reclaim();
        if tx_blocked && link.tx_room(MAX_FRAME) {
            tx_blocked = false;
        }
        if !tx_blocked && (tap_ev || data_ev) {
            let mut sent = 0;
            loop {
                let r = link.send_with(MAX_FRAME, |region, off| {
                    let p = region.ptr_range(off, MAX_FRAME).ok()?;
                    // SAFETY: reserve() gave a slot of MAX_FRAME bytes at `off`, inside our
                    // own section, which only we write.
                    match unsafe { tap.read_raw(p, MAX_FRAME) } {
                        Ok(Some(n)) if n > 0 => Some(n),
                        Ok(_) => None,
                        Err(e) => {
                            warn!("TAP {} read: {e}", tap.name());
                            None
                        }
                    }
                });
                match r {
                    Ok(Some(_)) => {
                        sent += 1;
                        if sent % BUDGET == 0 {
                            link.flush_tx();
                        }
                    }
                    Ok(None) => {
                        if !link.tx_room(MAX_FRAME) && !link.wait_tx_room(MAX_FRAME) {
                            tx_blocked = true;
                        }
                        break;
                    }
                    Err(_) => break,
                }
            }
            link.flush_tx();
        }
        if last_report.elapsed().as_secs() >= 60 {
            last_report = Instant::now();
            info!("stats: {:?}", link.stats);
        }
    }
    Ok(())
}
