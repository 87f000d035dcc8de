//! The link state machine, as a pure transition function.
//!
//! Each peer publishes one state word; a change rings the other peer's vector 0. Both known
//! drivers (Linux ivshmem-net, Zephyr eth_ivshmem) follow these rules, and so do we:
//!
//! - RESET -> INIT once the peer is below READY (it has noticed our reset);
//! - INIT -> READY once the peer is above RESET, after resetting our own queue;
//! - READY: carrier on once the peer is READY or RUN; -> RUN when the interface is up too;
//! - READY/RUN -> RESET, carrier off, as soon as the peer is in RESET.
//!
//! ```
//! use ivnet_core::state::{LinkState, step};
//! let t = step(LinkState::Reset, LinkState::Reset, true);
//! assert_eq!(t.next, LinkState::Init);
//! ```

use crate::error::ProtocolError;

/// A peer's link state, as published in its state word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u32)]
pub enum LinkState {
    /// Not initialised, or left the link; the state a vanished peer reads as.
    Reset = 0,
    /// Waiting for the peer to leave RESET.
    Init = 1,
    /// Own queue initialised; waiting for the peer (and for the interface to come up).
    Ready = 2,
    /// Exchanging frames.
    Run = 3,
}

impl LinkState {
    /// Parses a state word written by the peer.
    pub fn from_raw(raw: u32) -> Result<LinkState, ProtocolError> {
        match raw {
            0 => Ok(LinkState::Reset),
            1 => Ok(LinkState::Init),
            2 => Ok(LinkState::Ready),
            3 => Ok(LinkState::Run),
            _ => Err(ProtocolError::InvalidPeerState { raw }),
        }
    }

    /// The value to publish in our state word.
    pub fn raw(self) -> u32 {
        self as u32
    }
}

/// What a transition asks the driver to do, in this order: reset the own queue, publish the
/// new state (and ring the peer's vector 0), switch the carrier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The state to be in afterwards.
    pub next: LinkState,
    /// Zero our queue header and forget in-flight frames before publishing `next`.
    pub reset_queues: bool,
    /// `Some(true)`: carrier on; `Some(false)`: carrier off; `None`: leave it.
    pub carrier: Option<bool>,
}

impl Transition {
    fn stay(s: LinkState) -> Self {
        Transition {
            next: s,
            reset_queues: false,
            carrier: None,
        }
    }

    /// True when the transition changes nothing.
    pub fn is_noop(&self, own: LinkState) -> bool {
        self.next == own && !self.reset_queues && self.carrier.is_none()
    }
}

/// One step of the state machine: our state, the peer's, and whether our interface is up.
pub fn step(own: LinkState, peer: LinkState, up: bool) -> Transition {
    use LinkState::*;
    match own {
        Reset if peer < Ready => Transition::stay(Init),
        Reset => Transition::stay(Reset),
        Init if peer > Reset => Transition {
            next: Ready,
            reset_queues: true,
            carrier: None,
        },
        Init => Transition::stay(Init),
        Ready if peer >= Ready => Transition {
            next: if up { Run } else { Ready },
            reset_queues: false,
            carrier: Some(true),
        },
        Ready | Run if peer == Reset => Transition {
            next: Reset,
            reset_queues: false,
            carrier: Some(false),
        },
        Run if !up => Transition {
            // The interface went down: leave the link so the peer sees us go.
            next: Reset,
            reset_queues: false,
            carrier: Some(false),
        },
        Ready | Run => Transition::stay(own),
    }
}

/// Runs [`step`] until it settles (at most four transitions: RESET, INIT, READY, RUN), calling
/// `apply` for each effective transition; `peer` is re-read before every step. Returns the
/// final state.
pub fn settle<E>(
    mut own: LinkState,
    up: bool,
    mut peer: impl FnMut() -> Result<LinkState, E>,
    mut apply: impl FnMut(LinkState, &Transition) -> Result<(), E>,
) -> Result<LinkState, E> {
    for _ in 0..4 {
        let t = step(own, peer()?, up);
        if t.is_noop(own) {
            break;
        }
        apply(own, &t)?;
        own = t.next;
    }
    Ok(own)
}

#[cfg(test)]
mod tests {
    use super::LinkState::*;
    use super::*;

    const ALL: [LinkState; 4] = [Reset, Init, Ready, Run];

    #[test]
    fn raw_values_round_trip_and_reject_unknown() {
        for s in ALL {
            assert_eq!(LinkState::from_raw(s.raw()), Ok(s));
        }
        assert_eq!(
            LinkState::from_raw(4),
            Err(ProtocolError::InvalidPeerState { raw: 4 })
        );
        assert!(LinkState::from_raw(u32::MAX).is_err());
    }

    #[test]
    fn documented_transitions() {
        assert_eq!(step(Reset, Reset, true).next, Init);
        assert_eq!(step(Reset, Init, true).next, Init);
        assert_eq!(step(Reset, Ready, true).next, Reset);
        assert_eq!(step(Reset, Run, true).next, Reset);
        assert_eq!(step(Init, Reset, true).next, Init);
        let t = step(Init, Init, true);
        assert_eq!((t.next, t.reset_queues), (Ready, true));
        assert_eq!(step(Ready, Init, true), Transition::stay(Ready));
        let t = step(Ready, Ready, true);
        assert_eq!((t.next, t.carrier), (Run, Some(true)));
        let t = step(Ready, Run, false);
        assert_eq!((t.next, t.carrier), (Ready, Some(true)));
        let t = step(Run, Reset, true);
        assert_eq!((t.next, t.carrier), (Reset, Some(false)));
        let t = step(Ready, Reset, true);
        assert_eq!((t.next, t.carrier), (Reset, Some(false)));
        assert_eq!(step(Run, Run, true), Transition::stay(Run));
        assert_eq!(step(Run, Init, true), Transition::stay(Run));
        let t = step(Run, Run, false);
        assert_eq!((t.next, t.carrier), (Reset, Some(false)));
    }

    /// Two peers that both follow `settle`, taking turns, always reach RUN from any pair of
    /// start states, whatever order they wake in.
    #[test]
    fn two_peers_always_reach_run() {
        for a0 in ALL {
            for b0 in ALL {
                for first_a in [true, false] {
                    let (mut a, mut b) = (a0, b0);
                    let mut turn_a = first_a;
                    for _ in 0..16 {
                        if turn_a {
                            a = settle::<()>(a, true, || Ok(b), |_, _| Ok(())).unwrap();
                        } else {
                            b = settle::<()>(b, true, || Ok(a), |_, _| Ok(())).unwrap();
                        }
                        turn_a = !turn_a;
                    }
                    assert_eq!((a, b), (Run, Run), "from {a0:?}/{b0:?}");
                }
            }
        }
    }

    #[test]
    fn peer_vanishing_drops_carrier_then_relinks() {
        let mut carrier = true;
        let s = settle::<()>(
            Run,
            true,
            || Ok(Reset),
            |_, t| {
                if let Some(c) = t.carrier {
                    carrier = c;
                }
                Ok(())
            },
        )
        .unwrap();
        assert!(!carrier);
        assert_eq!(
            s, Init,
            "after falling to RESET we wait in INIT for the new peer"
        );
    }
}
