//! Liveness of a link: noticing a peer that stays in RUN but stops completing our frames.
//!
//! The state words say whether a peer is there, not whether it still works. A hung guest whose
//! QEMU is alive, or a hostile peer, can stay in RUN forever while our transmit ring fills.
//! A sender that then waits for ring space holds up whatever thread it runs on; in Zephyr that
//! is the network stack's TX thread, which every interface shares, so one stuck link would
//! stall all the others.
//!
//! [`Progress`] remembers when the peer last completed a frame of ours (or when nothing was in
//! flight), and answers the two questions this raises:
//!
//! - may a sender that found the ring full wait for room? Only while the peer has completed
//!   something within the wait limit ([`Progress::wait_left`]). A healthy peer completes frames
//!   continuously, so back-pressure works as before; a stuck one costs at most one wait of the
//!   limit, after which its frames are dropped at once;
//! - is the peer stuck? Frames in flight and none completed for the timeout
//!   ([`Progress::stuck`]): the link is then reset (carrier off, our state RESET), which also
//!   frees the ring. A peer that comes back sees our RESET and the handshake starts over.
//!
//! A peer that completes a frame now and then, just often enough never to look stuck (a
//! "drip"), would still hold the sender up at every frame; [`WaitBudget`] caps how much of each
//! window of time a link's senders may spend waiting, whatever the peer does.
//!
//! Times are milliseconds of any monotonic clock the caller chooses.
//!
//! ```
//! use ivnet_core::liveness::Progress;
//! let mut p = Progress::new(50, 2000);
//! p.restart(1000);
//! p.note(1010, 0, 8); // 8 frames out, none back yet
//! assert_eq!(p.wait_left(1030), 20); // ring full now: wait at most 20 ms more
//! assert_eq!(p.wait_left(1070), 0); // no progress for 50 ms: drop instead of waiting
//! assert!(!p.stuck(2500, 8));
//! assert!(p.stuck(3000, 8)); // nothing completed for 2 s with frames out: reset the link
//! p.note(3001, 8, 0); // all came back
//! assert!(!p.stuck(9000, 0));
//! ```

/// When the peer last made progress on our transmit queue, with the limits that judge it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    wait_ms: u32,
    timeout_ms: u32,
    last: u64,
}

impl Progress {
    /// `wait_ms`: longest time a sender may wait for room after the peer's last completion.
    /// `timeout_ms`: how long frames may stay in flight with no completion before the peer is
    /// judged stuck (0: never).
    pub const fn new(wait_ms: u32, timeout_ms: u32) -> Progress {
        Progress {
            wait_ms,
            timeout_ms,
            last: 0,
        }
    }

    /// The link (re)entered RUN: the peer starts with a clean record.
    pub fn restart(&mut self, now: u64) {
        self.last = now;
    }

    /// After reclaiming completions: `completed` frames came back, `in_flight` are still out.
    /// Completing anything, or having nothing out, counts as progress.
    pub fn note(&mut self, now: u64, completed: u16, in_flight: u16) {
        if completed > 0 || in_flight == 0 {
            self.last = self.last.max(now);
        }
    }

    /// Milliseconds a sender that found the ring full may still wait for room: 0 when the peer
    /// has completed nothing within the wait limit (drop the frame instead).
    pub fn wait_left(&self, now: u64) -> u32 {
        let deadline = self.last.saturating_add(u64::from(self.wait_ms));
        u32::try_from(deadline.saturating_sub(now)).unwrap_or(u32::MAX)
    }

    /// True when the peer is stuck: `in_flight` frames are out and none came back for the
    /// timeout.
    pub fn stuck(&self, now: u64, in_flight: u16) -> bool {
        self.timeout_ms != 0
            && in_flight > 0
            && now.saturating_sub(self.last) >= u64::from(self.timeout_ms)
    }

    /// Milliseconds until [`Progress::stuck`] could become true, when frames are in flight and
    /// a timeout is set (for a thread that must wake up to check); `None` otherwise.
    pub fn next_check(&self, now: u64, in_flight: u16) -> Option<u32> {
        if self.timeout_ms == 0 || in_flight == 0 {
            return None;
        }
        let deadline = self.last.saturating_add(u64::from(self.timeout_ms));
        Some(u32::try_from(deadline.saturating_sub(now)).unwrap_or(u32::MAX))
    }

    /// When the peer last made progress.
    pub fn last_progress(&self) -> u64 {
        self.last
    }
}

/// How much of each window of time the senders of one link may spend waiting for its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitBudget {
    window_ms: u32,
    budget_ms: u32,
    start: u64,
    used: u32,
}

impl WaitBudget {
    /// At most `budget_ms` of waiting in every `window_ms`.
    pub const fn new(window_ms: u32, budget_ms: u32) -> WaitBudget {
        WaitBudget {
            window_ms,
            budget_ms,
            start: 0,
            used: 0,
        }
    }

    /// Milliseconds a sender may still wait in the window that holds `now` (a new window
    /// starts with the whole budget).
    pub fn left(&mut self, now: u64) -> u32 {
        if now < self.start || now - self.start >= u64::from(self.window_ms) {
            self.start = now;
            self.used = 0;
        }
        self.budget_ms.saturating_sub(self.used)
    }

    /// Records `ms` of waiting.
    pub fn charge(&mut self, ms: u32) {
        self.used = self.used.saturating_add(ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_budget_holds_per_window() {
        let mut b = WaitBudget::new(100, 10);
        assert_eq!(b.left(1000), 10);
        b.charge(7);
        assert_eq!(b.left(1050), 3);
        b.charge(7);
        assert_eq!(b.left(1099), 0);
        // A new window, a new budget.
        assert_eq!(b.left(1100), 10);
        b.charge(u32::MAX);
        assert_eq!(b.left(1101), 0);
        // A clock that goes back starts a window too.
        assert_eq!(b.left(5), 10);
    }

    #[test]
    fn a_dripping_peer_gets_at_most_the_budget() {
        // The peer completes one frame every 40 ms: never stuck, so a sender may wait for it,
        // but only 10 ms of every 100.
        let (mut p, mut b) = (Progress::new(50, 2000), WaitBudget::new(100, 10));
        p.restart(0);
        let mut waited = 0u64;
        for t in 0..10_000u64 {
            if t % 40 == 0 {
                p.note(t, 1, 100);
            }
            let may = p.wait_left(t).min(b.left(t));
            if may > 0 {
                b.charge(1);
                waited += 1;
            }
            assert!(!p.stuck(t, 100));
        }
        assert_eq!(waited, 10 * 100, "10 % of the time, exactly the budget");
    }

    #[test]
    fn a_peer_that_keeps_completing_is_never_stuck_and_senders_may_wait() {
        let mut p = Progress::new(50, 1000);
        p.restart(0);
        for t in (0..100_000).step_by(40) {
            assert!(!p.stuck(t, 100), "t={t}");
            assert!(p.wait_left(t) > 0, "t={t}");
            p.note(t, 1, 100);
        }
    }

    #[test]
    fn a_peer_that_stops_gets_one_wait_then_none_then_is_judged_stuck() {
        let mut p = Progress::new(50, 1000);
        p.restart(0);
        p.note(10, 3, 5);
        assert_eq!(p.wait_left(10), 50);
        assert_eq!(p.wait_left(59), 1);
        assert_eq!(p.wait_left(60), 0);
        // Reclaims that bring nothing back do not count as progress.
        p.note(500, 0, 5);
        assert_eq!(p.wait_left(500), 0);
        assert!(!p.stuck(1009, 5));
        assert!(p.stuck(1010, 5));
        assert_eq!(p.next_check(900, 5), Some(110));
        assert_eq!(p.next_check(2000, 5), Some(0));
    }

    #[test]
    fn nothing_in_flight_is_never_stuck() {
        let mut p = Progress::new(50, 1000);
        p.restart(0);
        assert!(!p.stuck(1_000_000, 0));
        assert_eq!(p.next_check(5, 0), None);
        // Idle for a long time, then one frame goes out: the clock starts at the idle note.
        p.note(5_000, 0, 0);
        assert!(!p.stuck(5_500, 1));
        assert!(p.stuck(6_000, 1));
    }

    #[test]
    fn zero_timeout_disables_the_verdict_but_not_the_wait_limit() {
        let mut p = Progress::new(20, 0);
        p.restart(0);
        assert!(!p.stuck(u64::MAX, 1));
        assert_eq!(p.next_check(0, 1), None);
        assert_eq!(p.wait_left(30), 0);
    }

    #[test]
    fn time_going_backwards_or_huge_values_do_not_panic() {
        let mut p = Progress::new(u32::MAX, u32::MAX);
        p.restart(u64::MAX - 1);
        p.note(3, 1, 1);
        assert_eq!(p.last_progress(), u64::MAX - 1);
        assert_eq!(p.wait_left(0), u32::MAX);
        assert!(!p.stuck(0, 1));
        assert_eq!(p.next_check(0, 1), Some(u32::MAX));
    }
}
