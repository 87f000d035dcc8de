//! Rate limiting of log messages a peer can trigger.
//!
//! A hostile peer can break the protocol, reset and break it again as fast as the handshake
//! allows; logging each time would flood the log (and, in Zephyr, the deferred log buffer,
//! pushing out everything else). A [`RateLimit`] lets one message through per interval and
//! counts the ones it held back, so that the next message can say how many were suppressed.
//!
//! ```
//! use ivnet_core::ratelimit::RateLimit;
//! let mut r = RateLimit::new(1000);
//! assert_eq!(r.check(0), Some(0)); // the first one goes through
//! assert_eq!(r.check(10), None); // held back
//! assert_eq!(r.check(20), None);
//! assert_eq!(r.check(1000), Some(2)); // goes through, saying 2 were suppressed
//! ```

/// Lets one event through per interval; counts the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    interval_ms: u32,
    last: Option<u64>,
    suppressed: u32,
}

impl RateLimit {
    /// At most one event per `interval_ms` milliseconds.
    pub const fn new(interval_ms: u32) -> RateLimit {
        RateLimit {
            interval_ms,
            last: None,
            suppressed: 0,
        }
    }

    /// An event at time `now` (ms): `Some(n)` when it may be logged, `n` being how many were
    /// held back since the last one logged; `None` when it is held back.
    pub fn check(&mut self, now: u64) -> Option<u32> {
        let due = match self.last {
            None => true,
            Some(t) => now < t || now - t >= u64::from(self.interval_ms),
        };
        if due {
            self.last = Some(now);
            Some(core::mem::take(&mut self.suppressed))
        } else {
            self.suppressed = self.suppressed.saturating_add(1);
            None
        }
    }

    /// Events held back since the last one let through.
    pub fn suppressed(&self) -> u32 {
        self.suppressed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_per_interval_and_the_count_of_the_rest() {
        let mut r = RateLimit::new(100);
        let mut logged = 0;
        let mut reported = 0;
        for t in 0..1000u64 {
            if let Some(n) = r.check(t) {
                logged += 1;
                reported += n;
            }
        }
        assert_eq!(logged, 10);
        assert_eq!(reported + r.suppressed(), 990);
    }

    #[test]
    fn a_clock_that_goes_back_lets_the_event_through() {
        let mut r = RateLimit::new(100);
        assert_eq!(r.check(500), Some(0));
        assert_eq!(r.check(10), Some(0));
        assert_eq!(r.check(20), None);
    }

    #[test]
    fn the_count_saturates() {
        let mut r = RateLimit::new(u32::MAX);
        r.check(0);
        for _ in 0..10 {
            r.suppressed = u32::MAX - 1;
            assert_eq!(r.check(1), None);
        }
        assert_eq!(r.suppressed(), u32::MAX);
    }
}
