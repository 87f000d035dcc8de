//! A hostile peer, for testing: joins a link like the host peer, behaves honestly (bridged to
//! a TAP) until told to attack, attacks for a while, then behaves honestly again, so that a
//! test can check that the other end survived, reset the link and recovered.
//!
//! Used by `ivnet-hostile` (the binary the QEMU tests run against the real driver) and by the
//! host tests against the host bridge. Phases are switched by time or by a flag the caller
//! sets (the binary sets them from SIGUSR1 and SIGUSR2).

use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ivnet_core::v1::VECTOR_DATA;
use log::info;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::bridge::{self, Warnings};
use crate::client::drain_eventfd;
use crate::link::Link;
use crate::tap::Tap;

/// What the hostile peer does during its attack phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Attack {
    /// A hung peer whose host side still sends: stays in RUN, never completes (nor even
    /// looks at) the other end's frames, ignores its state changes, and keeps forwarding
    /// TAP -> link, so the other end keeps being asked for replies that fill its ring.
    Stall,
}

/// When the phases change.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Honest for this long before attacking (`None`: until `start` is set).
    pub after: Option<Duration>,
    /// Attack for this long (`None`: until `end` is set).
    pub duration: Option<Duration>,
}

/// Flags that end phases (set from signals by the binary).
pub struct Flags<'a> {
    /// Start the attack now.
    pub start: &'a AtomicBool,
    /// End the attack now.
    pub end: &'a AtomicBool,
    /// Stop altogether.
    pub stop: &'a AtomicBool,
}

/// Runs honest -> attack -> honest on `link`, bridged to `tap`, until `flags.stop`. With a
/// time schedule there is one attack; with flags, one attack per `start` (each ended by `end`),
/// as often as the caller likes.
pub fn run(
    link: &mut Link,
    tap: &Tap,
    attack: Attack,
    when: Schedule,
    flags: &Flags<'_>,
) -> io::Result<()> {
    let t0 = Instant::now();
    let mut timed_attack_done = false;
    while !flags.stop.load(Ordering::Relaxed) {
        // Honest until the attack starts.
        let honest_over = AtomicBool::new(false);
        bridge::run_with(link, tap, &honest_over, |_| {
            let due = !timed_attack_done && when.after.is_some_and(|a| t0.elapsed() >= a);
            if due || flags.start.load(Ordering::Relaxed) || flags.stop.load(Ordering::Relaxed) {
                honest_over.store(true, Ordering::Relaxed);
            }
        })?;
        if flags.stop.load(Ordering::Relaxed) {
            break;
        }
        flags.start.store(false, Ordering::Relaxed);
        flags.end.store(false, Ordering::Relaxed);
        timed_attack_done = when.after.is_some();
        info!("attack {attack:?}: start ({:?})", link.stats);
        println!("ATTACK start {attack:?}");
        let t1 = Instant::now();
        let over = || {
            flags.stop.load(Ordering::Relaxed)
                || flags.end.load(Ordering::Relaxed)
                || when.duration.is_some_and(|d| t1.elapsed() >= d)
        };
        match attack {
            Attack::Stall => stall(link, tap, over)?,
        }
        flags.end.store(false, Ordering::Relaxed);
        info!("attack {attack:?}: end ({:?})", link.stats);
        println!("ATTACK end {attack:?}");
        // Honest again (the loop): the state machine first notices whatever the other end
        // did meanwhile.
    }
    Ok(())
}

/// The stall: keeps RUN, never receives or completes, keeps sending what the TAP gives.
fn stall(link: &mut Link, tap: &Tap, over: impl Fn() -> bool) -> io::Result<()> {
    let mut warnings = Warnings::default();
    while !over() {
        {
            let data = link.client().vector(VECTOR_DATA).expect("data vector");
            let mut fds = [
                PollFd::new(tap.as_fd(), PollFlags::POLLIN),
                PollFd::new(data, PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::from(50u16)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        drain_eventfd(link.client().vector(VECTOR_DATA).expect("data vector"));
        let _ = link.reclaim();
        let (_, blocked) = bridge::tap_to_link(link, tap, &mut warnings);
        if blocked {
            // The other end stopped taking frames (it reset the link): wait, do not spin.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}
