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

use ivnet_core::geometry::Geometry;
use ivnet_core::v1::{V1Region, VECTOR_DATA, VECTOR_STATE};
use log::info;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use ivnet_dataplane::bridge::{self, Warnings};
use ivnet_dataplane::client::drain_eventfd;
use ivnet_dataplane::device::Space;
use ivnet_dataplane::link::Link;
use ivnet_dataplane::tap::Tap;

/// What the hostile peer does during its attack phase. The attacks that break the protocol
/// stop completing the other end's frames; those that need the other end to have frames in
/// flight (`stall`, `used-index`, `used-id`, the state and owner attacks) keep forwarding
/// TAP -> link meanwhile, so that it keeps answering. The attacks that stay within the
/// protocol (`oversize`, `republish`, `doorbell-flood`) keep receiving and completing. Every
/// 10 ms each attack but `stall` and `doorbell-flood` writes its corruption into the shared
/// memory and rings the other end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Attack {
    /// A hung peer whose host side still sends: stays in RUN, never completes (nor even
    /// looks at) the other end's frames, ignores its state changes, and keeps forwarding
    /// TAP -> link, so the other end keeps being asked for replies that fill its ring.
    Stall,
    /// Our avail index jumps more than a queue length ahead.
    AvailIndex,
    /// An avail entry names a descriptor beyond the queue.
    DescIndex,
    /// A descriptor with flags (a chain).
    DescFlags,
    /// A descriptor whose frame lies outside our data area.
    DescBounds,
    /// A descriptor shorter than an Ethernet header.
    Runt,
    /// A descriptor longer than the MTU allows, inside the data area (dropped, not an error).
    Oversize,
    /// Our used index completes more frames than the other end has in flight.
    UsedIndex,
    /// A completion names a descriptor other than the oldest in flight.
    UsedId,
    /// Our state word holds no known state.
    StateWord,
    /// Our state word jumps between states (RUN -> RESET -> RUN ...) without the handshake.
    StateFlap,
    /// The v1 owner table is overwritten (both slots' owners).
    OwnerTable,
    /// Random bytes over our whole queue header (descriptors, avail and used rings).
    HeaderGarbage,
    /// Both of the other end's vectors rung as fast as possible.
    DoorbellFlood,
    /// One valid frame (an ARP request) published again and again, as many as the queue holds.
    Republish,
    /// A slow peer: completes one of the other end's frames every 40 ms, never none for long
    /// enough to look stuck, and keeps forwarding TAP -> link so that the other end keeps
    /// answering into a ring that drains at a trickle.
    Drip,
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
    tap: &mut Tap,
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
            Attack::Stall => stall(link, tap, true, false, over, |_, _| {})?,
            Attack::DoorbellFlood => flood(link, tap, over),
            Attack::Drip => {
                let mut tick = 0u64;
                stall(link, tap, true, false, over, |link, t| {
                    if t.elapsed() >= Duration::from_millis(40 * tick) {
                        tick += 1;
                        link.receive(1, |_, _| {});
                    }
                })?
            }
            a => {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(a as u8));
                let mut tick = 0u64;
                let (forward, complete) = (forwards(a), completes(a));
                stall(link, tap, forward, complete, over, |link, t| {
                    if t.elapsed() >= Duration::from_millis(10 * tick) {
                        tick += 1;
                        corrupt(link, a, &mut rng);
                    }
                })?
            }
        }
        flags.end.store(false, Ordering::Relaxed);
        if matches!(attack, Attack::StateWord | Attack::StateFlap) {
            // Honest again means a state word that says what our state machine is in: the
            // attack's last write may have left RUN there while we went back to RESET.
            link.republish_state();
        }
        info!("attack {attack:?}: end ({:?})", link.stats);
        println!("ATTACK end {attack:?}");
        // Honest again (the loop): the state machine first notices whatever the other end
        // did meanwhile.
    }
    Ok(())
}

/// Whether attack `a` keeps forwarding TAP -> link (it does not write our queue itself).
fn forwards(a: Attack) -> bool {
    matches!(
        a,
        Attack::Stall
            | Attack::UsedIndex
            | Attack::UsedId
            | Attack::StateWord
            | Attack::StateFlap
            | Attack::OwnerTable
    )
}

/// Whether attack `a` keeps receiving and completing the other end's frames: the attacks that
/// stay within the protocol (too-long frames, republished frames, doorbells), whose other end
/// must then neither reset the link nor judge it stuck.
fn completes(a: Attack) -> bool {
    matches!(
        a,
        Attack::Oversize | Attack::Republish | Attack::DoorbellFlood
    )
}

/// The stall: keeps RUN and ignores the other end's state; receives and completes its frames
/// only when `complete`; sends what the TAP gives when `forward`. Calls `each(link, start)`
/// every round (at least every 10 ms).
fn stall(
    link: &mut Link,
    tap: &mut Tap,
    forward: bool,
    complete: bool,
    over: impl Fn() -> bool,
    mut each: impl FnMut(&mut Link, Instant),
) -> io::Result<()> {
    let mut warnings = Warnings::default();
    let start = Instant::now();
    while !over() {
        each(link, start);
        {
            let data = link.client().vector(VECTOR_DATA).expect("data vector");
            let mut fds = [
                PollFd::new(tap.as_fd(), PollFlags::POLLIN),
                PollFd::new(data, PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::from(10u16)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        drain_eventfd(link.client().vector(VECTOR_DATA).expect("data vector"));
        if complete {
            bridge::link_to_tap(link, tap, &mut warnings);
        }
        if !forward {
            // Drain the TAP so that it does not keep poll() awake.
            let mut buf = [0u8; 2048];
            while let Ok(Some(n)) = Space::local(&mut buf).read_from(tap.as_fd()) {
                if n == 0 {
                    break;
                }
            }
            continue;
        }
        let _ = link.reclaim();
        let (_, blocked) = bridge::tap_to_link(link, tap, &mut warnings);
        if blocked {
            // The other end stopped taking frames (it reset the link): wait, do not spin.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

/// Rings both of the other end's vectors as fast as possible until `over`, and otherwise
/// behaves: receives, completes, forwards.
fn flood(link: &mut Link, tap: &mut Tap, over: impl Fn() -> bool) {
    let mut warnings = Warnings::default();
    let mut n = 0u64;
    while !over() {
        for _ in 0..256 {
            link.ring(VECTOR_STATE);
            link.ring(VECTOR_DATA);
        }
        n += 512;
        bridge::link_to_tap(link, tap, &mut warnings);
        let _ = link.reclaim();
        bridge::tap_to_link(link, tap, &mut warnings);
    }
    info!("doorbell flood: {n} doorbells rung");
}

/// A small xorshift generator: attacks are reproducible run to run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// A valid frame nobody answers: an ARP request "who has 0.0.0.0" from one made-up MAC to
/// another (unicast, so the other end's stack drops it at once: the flood tests the link, not
/// the stack above it).
fn arp_frame() -> [u8; 60] {
    let mut f = [0u8; 60];
    f[..6].copy_from_slice(&[0x02, 0xba, 0xd0, 0, 0, 2]);
    f[6..12].copy_from_slice(&[0x02, 0xba, 0xd0, 0, 0, 1]);
    f[12..14].copy_from_slice(&[0x08, 0x06]);
    // htype 1, ptype IPv4, hlen 6, plen 4, op 1 (request), sender MAC.
    f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&[0x02, 0xba, 0xd0, 0, 0, 1]);
    f
}

/// One tick of attack `a`: writes its corruption into the shared memory, rings the other end.
fn corrupt(link: &mut Link, a: Attack, rng: &mut Rng) {
    let slot = link.slot();
    // The link's own view is private; the attacker reads and writes the mapping directly, as
    // any process that maps the memory can.
    let map = link.client().mapping();
    let Ok(v1) = V1Region::new(map.region()) else {
        return;
    };
    let (Ok(own), Ok(theirs)) = (v1.section(slot), v1.section(1 - slot)) else {
        return;
    };
    let Ok(g) = Geometry::for_section(own.len()) else {
        return;
    };
    let mask = g.qlen - 1;
    let avail = own.load_u16(g.avail_idx()).unwrap_or(0);
    // Publishes descriptor 0 = (addr, len, flags) once more.
    let publish = |addr: u64, len: u32, flags: u16| {
        let _ = own.write_u64(g.desc(0), addr);
        let _ = own.write_u32(g.desc(0) + 8, len);
        let _ = own.write_u16(g.desc(0) + 12, flags);
        let _ = own.write_u16(g.avail_ring(avail & mask), 0);
        let _ = own.store_u16(g.avail_idx(), avail.wrapping_add(1));
    };
    let data = g.data_off() as u64;
    let mut vector = VECTOR_DATA;
    match a {
        Attack::Stall | Attack::DoorbellFlood | Attack::Drip => {}
        Attack::AvailIndex => {
            let _ = own.store_u16(
                g.avail_idx(),
                avail.wrapping_add(g.qlen + 1 + (rng.next() % 1000) as u16),
            );
        }
        Attack::DescIndex => {
            let _ = own.write_u16(
                g.avail_ring(avail & mask),
                g.qlen + (rng.next() % 1000) as u16,
            );
            let _ = own.store_u16(g.avail_idx(), avail.wrapping_add(1));
        }
        Attack::DescFlags => publish(data, 60, 1 + (rng.next() % 7) as u16),
        Attack::DescBounds => {
            let end = g.section_size as u64;
            let (addr, len) = match rng.next() % 3 {
                0 => (end - 20, 60),
                1 => (data - 64, 60),
                _ => (u64::MAX - 10, 60),
            };
            publish(addr, len, 0)
        }
        Attack::Runt => publish(data, (rng.next() % 14) as u32, 0),
        Attack::Oversize => {
            let _ = own.write_bytes(g.data_off(), &arp_frame());
            publish(data, 1519 + (rng.next() % 4000) as u32, 0)
        }
        Attack::UsedIndex => {
            let used = own.load_u16(g.used_idx()).unwrap_or(0);
            let _ = own.store_u16(
                g.used_idx(),
                used.wrapping_add(50 + (rng.next() % 1000) as u16),
            );
        }
        Attack::UsedId => {
            let used = own.load_u16(g.used_idx()).unwrap_or(0);
            let _ = own.write_u32(
                g.used_ring(used & mask),
                (rng.next() % u64::from(g.qlen)) as u32 | 0x8000,
            );
            let _ = own.write_u32(g.used_ring(used & mask) + 4, 60);
            let _ = own.store_u16(g.used_idx(), used.wrapping_add(1));
        }
        Attack::StateWord => {
            let _ = v1.set_state(slot, 4 + (rng.next() % 1000) as u32);
            vector = VECTOR_STATE;
        }
        Attack::StateFlap => {
            let _ = v1.set_state(slot, (rng.next() % 4) as u32);
            vector = VECTOR_STATE;
        }
        Attack::OwnerTable => {
            // The owner words hold id + 1 (0: free); any value goes.
            let r = v1.region();
            let _ = r.store_u32(ivnet_core::v1::OWNER_OFF, rng.next() as u32);
            let _ = r.store_u32(ivnet_core::v1::OWNER_OFF + 4, rng.next() as u32);
            vector = VECTOR_STATE;
        }
        Attack::HeaderGarbage => {
            for _ in 0..64 {
                let at = (rng.next() as usize % (g.header_size / 8)) * 8;
                let _ = own.write_u64(at, rng.next());
            }
        }
        Attack::Republish => {
            // As many copies of one valid frame as the other end has room for: never more
            // than a queue length ahead of what it completed.
            let _ = own.write_bytes(g.data_off(), &arp_frame());
            let _ = own.write_u64(g.desc(0), data);
            let _ = own.write_u32(g.desc(0) + 8, 60);
            let _ = own.write_u16(g.desc(0) + 12, 0);
            for i in 0..g.qlen {
                let _ = own.write_u16(g.avail_ring(i), 0);
            }
            let done = theirs.load_u16(g.used_idx()).unwrap_or(0);
            let _ = own.store_u16(g.avail_idx(), done.wrapping_add(g.qlen));
        }
    }
    link.ring(vector);
}
