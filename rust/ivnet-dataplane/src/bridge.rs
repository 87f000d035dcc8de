//! The host peer: one link bridged to a TAP device, frames moved directly between the TAP and
//! the shared memory (the kernel reads from and writes into the ring slots; no bounce buffer).
//!
//! The peer is untrusted, so every round is bounded: at most [`ROUND`] frames each way before
//! the loop looks at the server socket, the state doorbell and `stop` again. A peer that keeps
//! frames published cannot starve TAP -> link traffic or shutdown; frames longer than the MTU
//! allows are dropped and counted; warnings a peer can provoke are rate-limited.

use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ivnet_core::ratelimit::RateLimit;
use ivnet_core::v1::{VECTOR_DATA, VECTOR_STATE};
use log::{info, warn};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::client::drain_eventfd;
use crate::device::{Device, Frame, Space};
use crate::link::{millis, Link};

/// Largest frame moved (1500-byte MTU, Ethernet header, one VLAN tag).
pub const MAX_FRAME: usize = 1518;
/// Frames moved per batch before publishing and ringing.
const BUDGET: usize = 64;
/// Frames moved per direction in one round of the loop.
pub const ROUND: usize = 4 * BUDGET;

/// Warnings about what the peer sent, at most one a second.
#[derive(Debug)]
pub struct Warnings {
    rx: RateLimit,
    tap: RateLimit,
}

impl Default for Warnings {
    fn default() -> Self {
        Warnings {
            rx: RateLimit::new(1000),
            tap: RateLimit::new(1000),
        }
    }
}

/// Runs the bridge until `stop` is set, the server goes away, or an I/O error occurs.
pub fn run<P: Device + AsFd>(link: &mut Link, port: &mut P, stop: &AtomicBool) -> io::Result<()> {
    run_with(link, port, stop, |_| {})
}

/// Moves up to [`ROUND`] frames from the link to `port` (the TAP, or a device wrapping it).
/// Frames longer than [`MAX_FRAME`], or that the port refuses, are dropped and counted.
/// Returns whether more are waiting.
pub fn link_to_tap<P: Device>(link: &mut Link, port: &mut P, warn_: &mut Warnings) -> bool {
    let (mut dropped, mut oversize) = (0u64, 0u64);
    let mut more = false;
    let mut moved = 0;
    // Bounded in calls too: a peer that moves its index without publishing a frame makes a
    // call return nothing and "more".
    for _ in 0..ROUND / BUDGET {
        if moved >= ROUND {
            break;
        }
        let (n, m) = link.receive(BUDGET, |r, f| {
            if f.len > MAX_FRAME {
                oversize += 1;
                if let Some(s) = warn_.rx.check(millis()) {
                    warn!(
                        "{}: dropping a {}-byte frame from the peer (MTU {MAX_FRAME}){}",
                        port.name(),
                        f.len,
                        suppressed(s)
                    );
                }
                return;
            }
            match Frame::in_region(r, f.offset, f.len) {
                Ok(frame) => match port.send(&frame) {
                    Ok(true) => {}
                    // No room at the port (a TAP always takes a frame or fails): dropped.
                    Ok(false) => dropped += 1,
                    Err(e) => {
                        dropped += 1;
                        if let Some(s) = warn_.tap.check(millis()) {
                            warn!("{} write: {e}{}", port.name(), suppressed(s));
                        }
                    }
                },
                Err(e) => {
                    dropped += 1;
                    if let Some(s) = warn_.rx.check(millis()) {
                        warn!("frame outside the section: {e:?}{}", suppressed(s));
                    }
                }
            }
        });
        moved += n;
        more = m;
        if !m {
            break;
        }
    }
    link.stats.rx_dropped += dropped;
    link.stats.rx_oversize += oversize;
    more
}

/// Moves up to [`ROUND`] frames from `port` to the link, each read straight into a slot of
/// the ring. Returns `(more, blocked)`: the port may have more, the ring is full (wait for a
/// completion doorbell).
pub fn tap_to_link<P: Device>(link: &mut Link, port: &mut P, warn_: &mut Warnings) -> (bool, bool) {
    let mut sent = 0;
    let mut blocked = false;
    let mut more = false;
    while sent < ROUND {
        let r = link.send_with(MAX_FRAME, |region, off| {
            let mut space = Space::in_region(region, off, MAX_FRAME).ok()?;
            match port.receive_into(&mut space) {
                Ok(n) => n,
                Err(e) => {
                    if let Some(s) = warn_.tap.check(millis()) {
                        warn!("{} read: {e}{}", port.name(), suppressed(s));
                    }
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
                more = sent == ROUND;
            }
            Ok(None) => {
                if !link.tx_room(MAX_FRAME) && !link.wait_tx_room(MAX_FRAME) {
                    blocked = true;
                }
                more = false;
                break;
            }
            Err(_) => break,
        }
    }
    link.flush_tx();
    (more, blocked)
}

fn suppressed(n: u32) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} more like it suppressed)")
    }
}

/// As [`run`], calling `tick` with the link about every 100 ms (to publish its counters).
pub fn run_with<P: Device + AsFd>(
    link: &mut Link,
    port: &mut P,
    stop: &AtomicBool,
    tick: impl FnMut(&Link),
) -> io::Result<()> {
    run_full(link, port, stop, false, tick)
}

/// How long the TAP's carrier stays off after the link went down, at least: the kernel
/// handles a carrier change up to a second later (linkwatch), and must see it off to forget
/// the neighbours behind it.
pub const CARRIER_OFF_MIN: Duration = Duration::from_millis(1100);

/// Makes a TAP's carrier follow the link's, as a NIC's follows its cable: when the link goes
/// down (the cell left, restarted or broke the protocol) the TAP's carrier goes off for at
/// least [`CARRIER_OFF_MIN`], so that the kernel drops the neighbour entries of the old cell.
/// A cell that comes back with another MAC (a random one per boot) is then found at once,
/// instead of after the old entry's reachable time and probes (8 to 40 s measured).
struct CarrierFollower {
    on: bool,
    /// What the TAP was last set to (None: nothing yet).
    tap: Option<bool>,
    /// When the TAP's carrier went off after being on.
    off_at: Option<Instant>,
    /// The link's carrier_ups when last looked at: a link that went down and up within one
    /// state update still counts as down.
    ups: u64,
}

impl CarrierFollower {
    fn new(on: bool, ups: u64) -> Self {
        CarrierFollower {
            on,
            tap: None,
            off_at: None,
            ups,
        }
    }

    fn set(&mut self, tap: &mut impl Device, on: bool) {
        if let Err(e) = tap.set_carrier(on) {
            warn!("{e}: the TAP's carrier stays as it is whatever the link does");
            self.on = false;
        }
        if self.tap == Some(true) && !on {
            self.off_at = Some(Instant::now());
        }
        self.tap = Some(on);
    }

    fn update(&mut self, link: &Link, tap: &mut impl Device) {
        if !self.on {
            return;
        }
        let want = link.carrier();
        let bounced = link.stats.carrier_ups != self.ups;
        self.ups = link.stats.carrier_ups;
        if (bounced || !want) && self.tap != Some(false) {
            self.set(tap, false);
        }
        if want && self.tap != Some(true) && !self.holding() {
            self.set(tap, true);
        }
    }

    /// The TAP's carrier is held off for a while.
    fn holding(&self) -> bool {
        self.off_at.is_some_and(|t| t.elapsed() < CARRIER_OFF_MIN)
    }

    /// The link is up and the TAP's carrier is waiting to follow.
    fn pending(&self) -> bool {
        self.on && self.tap == Some(false) && self.holding()
    }
}

/// As [`run_with`]; `follow_carrier`: the TAP's carrier follows the link's (see
/// [`CarrierFollower`]; for a TAP of its own, not a bridge port, whose neighbours live on the
/// bridge and whose carrier would take the port down). `port` is the TAP, or a device
/// wrapping it (a [`Captured`](crate::device::Captured) one records every frame moved).
pub fn run_full<P: Device + AsFd>(
    link: &mut Link,
    port: &mut P,
    stop: &AtomicBool,
    follow_carrier: bool,
    mut tick: impl FnMut(&Link),
) -> io::Result<()> {
    link.update_state();
    let mut last_tick = Instant::now();
    let mut tx_blocked = false;
    let mut last_report = Instant::now();
    let mut warnings = Warnings::default();
    // Work left over from the last round (a full round each way): poll without waiting.
    let mut busy = false;
    let mut carrier = CarrierFollower::new(follow_carrier, link.stats.carrier_ups);
    while !stop.load(Ordering::Relaxed) {
        carrier.update(link, port);
        if last_tick.elapsed().as_millis() >= 100 {
            last_tick = Instant::now();
            tick(link);
            port.flush();
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
                PollFd::new(port.as_fd(), tap_flags),
            ];
            let timeout = if busy {
                0u16
            } else if carrier.pending() {
                50
            } else {
                200
            };
            match poll(&mut fds, PollTimeout::from(timeout)) {
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
            busy = false;
            continue;
        }
        // Shared memory -> TAP, one bounded round.
        let rx_more = link_to_tap(link, port, &mut warnings);
        // TAP -> shared memory, one bounded round.
        let _ = link.reclaim();
        if tx_blocked && link.tx_room(MAX_FRAME) {
            tx_blocked = false;
        }
        let mut tx_more = false;
        if !tx_blocked && (tap_ev || data_ev || busy) {
            let (more, blocked) = tap_to_link(link, port, &mut warnings);
            tx_more = more;
            tx_blocked = blocked;
        }
        busy = rx_more || tx_more;
        if last_report.elapsed().as_secs() >= 60 {
            last_report = Instant::now();
            info!("stats: {:?}", link.stats);
        }
    }
    Ok(())
}
