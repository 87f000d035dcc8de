//! The driver's data path: the link thread (state machine, liveness, receive rounds) and
//! `send()` from the network stack's TX thread, with the back-pressure and liveness rules of
//! `ivnet_core::liveness`.

use super::*;

impl Driver {
    pub(super) fn raise(&self) {
        self.signal.raise();
    }

    pub(super) fn ring(&self, peer: Option<u32>, vector: u16) {
        if let Some(p) = peer {
            self.doorbells.fetch_add(1, Ordering::Relaxed);
            self.ivshmem.ring(p, vector);
        }
    }

    pub(super) fn set_carrier(&self, iface: Iface, on: bool) {
        if self.carrier.swap(on as u32, Ordering::Relaxed) == on as u32 {
            return;
        }
        iface.set_carrier(on);
        inf!(
            "ivnet{}: carrier {}",
            self.cfg.instance,
            if on { "on" } else { "off" }
        );
    }

    pub(super) fn apply(&self, iface: Iface, fx: Effects, peer: Option<u32>) {
        if fx.ring_state {
            self.ring(peer, VECTOR_STATE);
        }
        if let Some(c) = fx.carrier {
            self.set_carrier(iface, c);
        }
    }

    /// Publishes the counters (with CONFIG_ETH_IVNET_STATS); inside the critical section.
    pub(super) fn publish(&self, l: &mut Link) {
        l.stats.doorbells = self.doorbells.load(Ordering::Relaxed);
        #[cfg(ivnet_stats)]
        self.stats.publish(&l.stats);
        #[cfg(ivnet_eth_stats)]
        // SAFETY: `eth` is this device's statistics (static, aligned). The L2 increments other
        // fields of it from the RX and TX paths; these four are the driver's alone. Each is
        // stored as a relaxed atomic, since `net stats` may read it meanwhile.
        unsafe {
            let e = self.eth;
            let set = |p: *mut sys::net_stats_t, v: u32| {
                AtomicU32::from_ptr(p).store(v, Ordering::Relaxed)
            };
            set(ptr::addr_of_mut!((*e).tx_dropped), l.stats.tx_dropped);
            set(
                ptr::addr_of_mut!((*e).tx_timeout_count),
                l.stats.peer_stalls,
            );
            set(
                ptr::addr_of_mut!((*e).tx_restart_queue),
                l.stats.protocol_resets.wrapping_add(l.stats.peer_stalls),
            );
            set(
                ptr::addr_of_mut!((*e).error_details.rx_no_buffer_count),
                l.stats.rx_dropped,
            );
        }
    }

    /// One round of the link thread: follow the state, receive, wake a waiting sender. Also
    /// says whether the round achieved anything (see `Link::work`).
    pub(super) fn round(&self, iface: Iface) -> (RoundResult, bool) {
        let mut work_before = 0;
        let (fx, peer, running) = critical_section::with(|cs| {
            let mut l = self.link.borrow_ref_mut(cs);
            work_before = l.work;
            self.publish(&mut l);
            let pending = core::mem::take(&mut l.reset_pending);
            let mut fx = l.update();
            if pending && fx.carrier.is_none() {
                // A reset in send(): its effects are applied here.
                fx.carrier = Some(false);
                fx.ring_state |= l.ep.words().rings_on_state_change();
            }
            if l.ep.running() && l.ep.queues.tx.in_flight() > 0 {
                // Liveness: is the peer still completing what we sent?
                match l.reclaim() {
                    Ok(()) if l.progress.stuck(now(), l.ep.queues.tx.in_flight()) => {
                        fx = l.stall_reset();
                    }
                    Ok(()) => {}
                    Err(reset) => fx = reset,
                }
            }
            (fx, l.ep.peer_id(), l.ep.running())
        });
        let entered = fx.entered_run;
        self.apply(iface, fx, peer);
        if !running {
            self.wake_sender();
            return (RoundResult::Idle, false);
        }
        let r = self.receive(iface);
        self.wake_sender();
        // The counters as they stand after this round: the thread may now sleep for long, and
        // what it just received must not stay unpublished meanwhile.
        let worked = critical_section::with(|cs| {
            let mut l = self.link.borrow_ref_mut(cs);
            self.publish(&mut l);
            l.work != work_before
        });
        if entered && r == RoundResult::Idle {
            return (RoundResult::More, true);
        }
        (r, worked)
    }

    /// How long the link thread may sleep before it must look at the peer's progress: set
    /// while frames are in flight on a running link.
    pub(super) fn liveness_timeout(&self) -> Option<u32> {
        critical_section::with(|cs| {
            let l = self.link.borrow_ref(cs);
            if !l.ep.running() {
                return None;
            }
            l.progress.next_check(now(), l.ep.queues.tx.in_flight())
        })
    }

    pub(super) fn wake_sender(&self) {
        let wake = critical_section::with(|cs| {
            let mut l = self.link.borrow_ref_mut(cs);
            if !l.tx_waiting {
                return None;
            }
            if l.ep.running() && l.reclaim().is_err() {
                // The link was reset: the woken sender sees it down, and the next round (the
                // signal is raised below) turns the carrier off and rings the peer.
                return Some(true);
            }
            Some(false)
        });
        let (wake, reset) = match wake {
            Some(r) => (true, r),
            None => (false, false),
        };
        if reset {
            self.raise();
        }
        if wake {
            self.tx_room.give();
        }
    }

    /// Receives up to the budget; says whether more frames are waiting.
    pub(super) fn receive(&self, iface: Iface) -> RoundResult {
        let budget = sys::IVNET_RX_BUDGET;
        for _ in 0..budget {
            let polled = critical_section::with(|cs| {
                let mut l = self.link.borrow_ref_mut(cs);
                if !l.ep.running() {
                    return Ok(None);
                }
                match l.ep.queues.rx.poll() {
                    Ok(Some(f)) => Ok(Some((f, *l.ep.queues.rx.region(), l.ep.generation()))),
                    Ok(None) => Ok(None),
                    Err(e) => Err((l.protocol_reset(e), l.ep.peer_id())),
                }
            });
            let (frame, region, generation) = match polled {
                Ok(Some(x)) => x,
                Ok(None) => return self.finish_rx(iface, false).into(),
                Err((fx, peer)) => {
                    self.apply(iface, fx, peer);
                    return RoundResult::Idle;
                }
            };
            let pkt = match self.to_pkt(iface, frame, &region) {
                Rx::Pkt(p) => Some(p),
                Rx::Drop => None,
                Rx::NoBuffer => {
                    // Leave the frame in the peer's ring (back-pressure: the peer stops
                    // when its ring is full) and come back when the stack freed buffers.
                    self.finish_rx(iface, false);
                    return RoundResult::NoBuffer;
                }
            };
            let completed = critical_section::with(|cs| {
                let mut l = self.link.borrow_ref_mut(cs);
                if l.ep.generation() != generation || !l.ep.running() {
                    return false;
                }
                if l.ep.queues.rx.complete(frame).is_err() {
                    return false;
                }
                l.work = l.work.wrapping_add(1);
                if pkt.is_some() {
                    l.stats.rx_frames += 1;
                    l.stats.rx_bytes = l.stats.rx_bytes.wrapping_add(frame.len as u32);
                } else {
                    l.stats.rx_dropped += 1;
                }
                true
            });
            if let Some(pkt) = pkt {
                if !completed {
                    // The link was reset under the packet: it is released here.
                    return RoundResult::Idle;
                }
                // A packet the stack refuses is released by recv.
                iface.recv(pkt);
            }
        }
        self.finish_rx(iface, true).into()
    }

    /// Publishes completions (ringing the peer if it asked); re-arms the doorbell when the
    /// ring is empty. Returns whether frames are waiting.
    pub(super) fn finish_rx(&self, iface: Iface, budget_used: bool) -> bool {
        let (ring, more, fx, peer) = critical_section::with(|cs| {
            let mut l = self.link.borrow_ref_mut(cs);
            let peer = l.ep.peer_id();
            match l.ep.finish_rx(budget_used) {
                Ok(done) => (done.ring_data, done.more, None, peer),
                Err(e) => (false, false, Some(l.protocol_reset(e)), peer),
            }
        });
        if ring {
            self.ring(peer, self.data_vector);
        }
        if let Some(fx) = fx {
            self.apply(iface, fx, peer);
        }
        more
    }

    /// Copies one frame out of shared memory into a fresh net_pkt, or says why not.
    pub(super) fn to_pkt(&self, iface: Iface, f: RxFrame, src: &Region<'static>) -> Rx {
        if f.len > max_frame() {
            let log = critical_section::with(|cs| self.link.borrow_ref_mut(cs).errors.check(now()));
            if let Some(n) = log {
                wrn!(
                    "ivnet{}: dropping a {}-byte frame (MTU 1500){}",
                    self.cfg.instance,
                    f.len,
                    Suppressed(n)
                );
            }
            return Rx::Drop;
        }
        if src.ptr_range(f.offset, f.len).is_err() {
            return Rx::Drop;
        }
        // First without waiting (no clock read per packet). When the pools are empty, wait in
        // the allocator, which wakes us as soon as the stack frees a buffer; if that takes
        // too long the frame stays in the ring (back-pressure to the peer).
        // Buffers for the frame plus its alignment padding (see Pkt::fill).
        let alloc = |t| Pkt::rx_alloc(iface, f.len + RX_PAD_MAX, t);
        let Some(mut pkt) = alloc(sys::no_wait()).or_else(|| alloc(sys::msec(20))) else {
            return Rx::NoBuffer;
        };
        // The frame's range in the peer's section, which the peer may not reuse before we
        // complete the frame (a peer that does only garbles the frame).
        if pkt.fill(src, f.offset, f.len) {
            Rx::Pkt(pkt)
        } else {
            Rx::Drop
        }
    }

    /// send(): copies the frame into a ring slot.
    ///
    /// When the ring is full it waits for room (back-pressure) only while the peer keeps
    /// completing frames: at most CONFIG_ETH_IVNET_TX_WAIT_MS after the peer's last
    /// completion. This runs on the stack's TX thread, which every interface shares: a peer
    /// that stopped costs it one such wait, later frames for that peer are dropped at once,
    /// and the link thread resets the link after CONFIG_ETH_IVNET_PEER_TIMEOUT_MS.
    pub(super) fn send(&self, pkt: PktRef<'_>) -> c_int {
        let len = pkt.len();
        if len < ivnet_core::queue::MIN_FRAME as usize || len > max_frame() {
            return -(sys::EMSGSIZE as c_int);
        }
        loop {
            let r = critical_section::with(|cs| {
                let mut l = self.link.borrow_ref_mut(cs);
                let peer = l.ep.peer_id();
                if !l.ep.running() {
                    return Tx::Fail(-(sys::ENETDOWN as c_int));
                }
                if l.reclaim().is_err() {
                    return Tx::Fail(-(sys::EIO as c_int));
                }
                let Some(slot) = l.ep.queues.tx.reserve(len) else {
                    let t = now();
                    let left = l.progress.wait_left(t).min(l.wait_budget.left(t));
                    if left == 0 {
                        // The peer completed nothing lately, or this link has had its share
                        // of the TX thread: drop rather than hold up every other interface.
                        l.tx_waiting = false;
                        l.stats.tx_dropped += 1;
                        return Tx::Fail(-(sys::ENOBUFS as c_int));
                    }
                    l.tx_waiting = true;
                    l.stats.tx_waits += 1;
                    let _ = l.ep.queues.tx.request_completion_notify();
                    return Tx::Wait(left);
                };
                // The slot's range in our own section, reserved for this frame.
                if !pkt.copy_to(l.ep.queues.tx.region(), slot.offset(), len) {
                    return Tx::Fail(-(sys::EIO as c_int));
                }
                if let Err(e) = l.ep.queues.tx.push(slot) {
                    let _ = l.protocol_reset(e);
                    return Tx::Fail(-(sys::EIO as c_int));
                }
                l.tx_waiting = false;
                l.stats.tx_frames += 1;
                l.stats.tx_bytes = l.stats.tx_bytes.wrapping_add(len as u32);
                self.publish(&mut l);
                match l.ep.queues.tx.publish() {
                    Ok(ring) => Tx::Sent(if ring { peer } else { None }),
                    Err(e) => {
                        let _ = l.protocol_reset(e);
                        Tx::Fail(-(sys::EIO as c_int))
                    }
                }
            });
            match r {
                Tx::Sent(peer) => {
                    self.ring(peer, self.data_vector);
                    return 0;
                }
                Tx::Wait(left) => {
                    // The link thread gives the semaphore after the peer's completion
                    // doorbell; look again at least every 10 ms.
                    let t = now();
                    let _ = self.tx_room.take(sys::msec(left.min(10)));
                    let waited = now().saturating_sub(t).max(1);
                    critical_section::with(|cs| {
                        let mut l = self.link.borrow_ref_mut(cs);
                        l.wait_budget
                            .charge(u32::try_from(waited).unwrap_or(u32::MAX));
                    });
                }
                Tx::Fail(e) => {
                    if e == -(sys::EIO as c_int) {
                        // The link was reset: the link thread turns the carrier off.
                        self.raise();
                    }
                    return e;
                }
            }
        }
    }
}

/// What one attempt of send() came to.
enum Tx {
    /// Queued; ring this peer (if any).
    Sent(Option<u32>),
    /// The ring is full and the peer is making progress: wait up to this many ms.
    Wait(u32),
    /// Give up with this error.
    Fail(c_int),
}

/// " (N more suppressed)" after a rate-limited message, when N > 0.
pub(super) struct Suppressed(pub(super) u32);

impl core::fmt::Display for Suppressed {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if self.0 > 0 {
            write!(f, " ({} more suppressed)", self.0)
        } else {
            Ok(())
        }
    }
}

/// The window of send()'s wait budget (CONFIG_ETH_IVNET_TX_WAIT_BUDGET_PCT of it per link).
pub(super) const WAIT_WINDOW_MS: u32 = 100;

/// Milliseconds since boot (the liveness clock).
pub(super) fn now() -> u64 {
    kernel::uptime_ms()
}

pub(super) unsafe extern "C" fn thread_main(p1: *mut c_void, _: *mut c_void, _: *mut c_void) {
    // SAFETY: p1 is the Driver allocated in init, which lives forever.
    let d: &'static Driver = unsafe { &*(p1 as *const Driver) };
    let mut more = false;
    let mut no_buffer_logged = false;
    let mut idle_wakeups = 0u32;
    // Since when the thread has received full budgets back to back (None: it went idle).
    let mut busy_since: Option<u64> = None;
    loop {
        let iface = d.iface.get();
        if !more {
            // While the link is down, look again every 100 ms (a doorbell rung before the
            // ringer knew our vectors is lost). While it runs, doorbells are reliable and any
            // change of the peer's state rings us: wait without a timeout (no timer armed and
            // cancelled on every wake-up), unless frames are in flight.
            // Frames in flight: wake up in time to judge the peer's progress.
            let running = d.carrier.load(Ordering::Relaxed) != 0;
            let t = if !running {
                sys::msec(100)
            } else {
                match d.liveness_timeout() {
                    Some(ms) => sys::msec(ms.max(1)),
                    None => sys::forever(),
                }
            };
            d.signal.wait(t);
        }
        // Clear before processing: a doorbell during the round raises the signal again.
        d.signal.reset();
        let Some(iface) = iface else {
            more = false;
            continue;
        };
        let (result, worked) = d.round(iface);
        // Woken twice in a row for nothing: a peer is ringing without a reason (a doorbell
        // flood). Let the doorbells pile up for a millisecond: they are level-like (the
        // signal stays raised), so nothing is lost, and the thread no longer runs once per
        // doorbell.
        idle_wakeups = if worked { 0 } else { idle_wakeups + 1 };
        if idle_wakeups >= 2 {
            idle_wakeups = 0;
            kernel::sleep(sys::msec(1));
        }
        if !matches!(result, RoundResult::More) {
            busy_since = None;
        }
        more = match result {
            RoundResult::Idle => false,
            RoundResult::More => {
                // A full budget and more waiting: let threads of our priority (the
                // application's, when it shares it) take what we delivered before the next
                // batch. A streak longer than ETH_IVNET_RX_BUSY_MS (a peer flooding the link
                // with frames the stack drops) also lets lower priorities run: one tick off
                // (frames wait in the ring).
                let t = now();
                let since = *busy_since.get_or_insert(t);
                if t.saturating_sub(since) >= u64::from(sys::IVNET_RX_BUSY_MS) {
                    busy_since = None;
                    kernel::sleep(sys::msec(1));
                } else {
                    kernel::yield_now();
                }
                true
            }
            RoundResult::NoBuffer => {
                if !no_buffer_logged {
                    dbg!(
                        "ivnet{}: network buffers exhausted, holding frames in the ring",
                        d.cfg.instance
                    );
                    no_buffer_logged = true;
                }
                // The stack frees buffers meanwhile.
                kernel::sleep(sys::msec(1));
                true
            }
        };
    }
}
