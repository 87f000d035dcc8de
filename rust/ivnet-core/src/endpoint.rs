//! One end of an ivshmem-net link: the state machine of [`crate::state`] applied to a
//! transport's state words and to the link's queues, the same way on every transport and in
//! every program (the Zephyr driver, the host peer, the benchmark's peers).
//!
//! A transport says where the state words live through [`StateWords`]: the v1 control page of
//! an ivnet server ([`V1Words`]), the ivshmem 2.0 state table written by hand by a peer that
//! plays its own device ([`V2Region`]), or a device's STATE register (the Zephyr driver's
//! ivshmem 2.0 transport, in its own crate). [`Endpoint::update`] settles the state machine
//! and returns what the caller must do outside its locks ([`Effects`]): ring the peer, switch
//! the carrier, log a protocol error or a replaced peer. Nothing here logs, sleeps or rings.
//!
//! ```
//! use ivnet_core::endpoint::{Endpoint, V1Words};
//! use ivnet_core::{queue::Queues, testmem::TestMem, v1::V1Region};
//! let mem = TestMem::new(1 << 20);
//! let ctl = V1Region::new(mem.region()).unwrap();
//! ctl.set_owner(0, Some(7)).unwrap();
//! ctl.set_owner(1, Some(8)).unwrap();
//! let end = |slot: usize| {
//!     let (own, peer) = (ctl.section(slot).unwrap(), ctl.section(1 - slot).unwrap());
//!     let slots = vec![0u32; Queues::<Vec<u32>>::slots_needed(own.len())];
//!     Endpoint::new(V1Words { ctl, slot }, own, peer, slots).unwrap()
//! };
//! let (mut a, mut b) = (end(0), end(1));
//! for _ in 0..3 {
//!     a.update();
//!     b.update();
//! }
//! assert!(a.running() && b.running());
//! assert_eq!(a.peer_id(), Some(8));
//! ```

use crate::error::ProtocolError;
use crate::geometry::GeometryError;
use crate::queue::{Queues, SlotTable};
use crate::shm::Region;
use crate::state::{settle, LinkState};
use crate::v1::V1Region;
use crate::v2::V2Region;

/// Where one end of a link publishes its state and reads its peer's, and who the peer is.
pub trait StateWords {
    /// The peer's state, validated (RESET when there is no peer).
    fn peer_state(&self) -> Result<LinkState, ProtocolError>;
    /// Publishes our state.
    fn set_state(&self, s: LinkState) -> Result<(), ProtocolError>;
    /// The peer's ivshmem id, if there is a peer (where its doorbells go).
    fn peer_id(&self) -> Option<u32>;
    /// True when a state change must be announced by ringing the peer's state vector (no
    /// device does it for us: ivshmem v1, or a peer writing the v2 state table by hand).
    fn rings_on_state_change(&self) -> bool;
}

/// The state words of one slot of an ivnet server's v1 control page.
#[derive(Debug, Clone, Copy)]
pub struct V1Words<'a> {
    /// The control page.
    pub ctl: V1Region<'a>,
    /// Our slot (0 or 1).
    pub slot: usize,
}

impl StateWords for V1Words<'_> {
    fn peer_state(&self) -> Result<LinkState, ProtocolError> {
        self.ctl.peer_state(self.slot)
    }

    fn set_state(&self, s: LinkState) -> Result<(), ProtocolError> {
        Ok(self.ctl.set_state(self.slot, s.raw())?)
    }

    fn peer_id(&self) -> Option<u32> {
        // A slot number past the table reads as "no peer", like a free slot.
        self.ctl.owner(self.slot ^ 1).ok().flatten()
    }

    fn rings_on_state_change(&self) -> bool {
        true
    }
}

/// The ivshmem 2.0 state table written by hand (a peer without a device: the host peer): the
/// entry changes, and we ring the peer's vector 0 as the device would.
impl StateWords for V2Region<'_> {
    fn peer_state(&self) -> Result<LinkState, ProtocolError> {
        V2Region::peer_state(self)
    }

    fn set_state(&self, s: LinkState) -> Result<(), ProtocolError> {
        V2Region::set_state(self, s.raw())?;
        Ok(())
    }

    fn peer_id(&self) -> Option<u32> {
        Some(self.peer())
    }

    fn rings_on_state_change(&self) -> bool {
        true
    }
}

/// What the caller of [`Endpoint::update`] or [`Endpoint::reset`] must do, outside any lock,
/// in this order: log `replaced` and `error` (rate-limited: a peer can provoke both), switch
/// the carrier, ring the peer's state vector.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Effects {
    /// State transitions taken (each one published).
    pub transitions: u32,
    /// Ring the peer's state vector.
    pub ring_state: bool,
    /// `Some(on)`: switch the carrier.
    pub carrier: Option<bool>,
    /// The link entered RUN.
    pub entered_run: bool,
    /// The peer slot changed hands while the link ran (the ids before and after): a peer
    /// replaced faster than we looked, or an overwritten owner word. Counted as the peer's
    /// RESET, so no doorbell goes to an id nobody may hold.
    pub replaced: Option<(Option<u32>, Option<u32>)>,
    /// The peer broke the protocol: the link was reset to RESET.
    pub error: Option<ProtocolError>,
}

/// How a receive round ended ([`Endpoint::finish_rx`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RxDone {
    /// Ring the peer's data vector: it asked to hear of the completions just published.
    pub ring_data: bool,
    /// Poll again without waiting for a doorbell: the budget ran out, or a frame arrived
    /// while the doorbell was re-armed.
    pub more: bool,
}

/// One end of a link: its state words, its queues and where the state machine stands.
pub struct Endpoint<'a, W, S> {
    words: W,
    /// The link's queues. Reset only by the state machine (INIT -> READY).
    pub queues: Queues<'a, S>,
    state: LinkState,
    up: bool,
    generation: u32,
    run_peer: Option<u32>,
}

impl<'a, W: StateWords, S: SlotTable> Endpoint<'a, W, S> {
    /// An end in RESET with the interface up, its queues over our output section `own` and
    /// the peer's `peer`, with `slots` (at least [`Queues::slots_needed`] entries) for the
    /// transmit bookkeeping. Nothing is written until the first [`Endpoint::update`] or
    /// [`Endpoint::reset`].
    pub fn new(
        words: W,
        own: Region<'a>,
        peer: Region<'a>,
        slots: S,
    ) -> Result<Self, GeometryError> {
        Ok(Endpoint {
            words,
            queues: Queues::new(own, peer, slots)?,
            state: LinkState::Reset,
            up: true,
            generation: 0,
            run_peer: None,
        })
    }

    /// The state words.
    pub fn words(&self) -> &W {
        &self.words
    }

    /// Our state.
    pub fn state(&self) -> LinkState {
        self.state
    }

    /// True in RUN: frames may flow.
    pub fn running(&self) -> bool {
        self.state == LinkState::Run
    }

    /// Whether the interface is administratively up.
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Brings the interface up or down; the next [`Endpoint::update`] acts on it (down leaves
    /// the link: the peer sees RESET).
    pub fn set_up(&mut self, up: bool) {
        self.up = up;
    }

    /// Bumped at every queue reset: a frame polled before a reset must not be completed after
    /// it.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// The peer's ivshmem id, if there is one.
    pub fn peer_id(&self) -> Option<u32> {
        self.words.peer_id()
    }

    /// Re-reads the peer's state and runs the state machine until it settles. A protocol
    /// error (an invalid state word, a section that cannot be reset) resets the link and is
    /// reported in [`Effects::error`].
    pub fn update(&mut self) -> Effects {
        let mut fx = Effects::default();
        let before = self.state;
        let holder = self.words.peer_id();
        let mut replaced = before == LinkState::Run && holder != self.run_peer;
        if replaced {
            fx.replaced = Some((self.run_peer, holder));
        }
        let words = &self.words;
        let queues = &mut self.queues;
        let generation = &mut self.generation;
        let r = settle(
            self.state,
            self.up,
            || {
                if core::mem::take(&mut replaced) {
                    Ok(LinkState::Reset)
                } else {
                    words.peer_state()
                }
            },
            |_, t| {
                if t.reset_queues {
                    queues.reset()?;
                    *generation = generation.wrapping_add(1);
                }
                words.set_state(t.next)?;
                fx.transitions += 1;
                fx.ring_state = words.rings_on_state_change();
                if t.carrier.is_some() {
                    fx.carrier = t.carrier;
                }
                Ok::<(), ProtocolError>(())
            },
        );
        match r {
            Ok(s) => self.state = s,
            Err(e) => {
                let mut reset = self.reset();
                reset.transitions += fx.transitions;
                reset.replaced = fx.replaced;
                reset.error = Some(e);
                return reset;
            }
        }
        if self.state == LinkState::Run && before != LinkState::Run {
            fx.entered_run = true;
            self.run_peer = self.words.peer_id();
            // Ask for a doorbell on the peer's next frame; an error shows at the next poll.
            let _ = self.queues.rx.enable_notify();
        }
        fx
    }

    /// Ends a receive round (the frames polled from `queues.rx` completed): publishes the
    /// completions and, unless the round used its whole budget, re-arms the doorbell for
    /// the peer's next frame. Nothing to do when not running. An error breaks the protocol:
    /// the caller resets the link.
    pub fn finish_rx(&mut self, budget_used: bool) -> Result<RxDone, ProtocolError> {
        if !self.running() {
            return Ok(RxDone::default());
        }
        let ring_data = self.queues.rx.publish()?;
        let more = budget_used || self.queues.rx.enable_notify()?;
        Ok(RxDone { ring_data, more })
    }

    /// Leaves the link: RESET published (best effort), carrier off. For a peer that broke
    /// the protocol on the data path, one that stopped completing frames, and for leaving
    /// for good. The queues are reset at the next handshake.
    pub fn reset(&mut self) -> Effects {
        self.state = LinkState::Reset;
        let _ = self.words.set_state(LinkState::Reset);
        Effects {
            ring_state: self.words.rings_on_state_change(),
            carrier: Some(false),
            ..Effects::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testmem::TestMem;
    use crate::v2::{memory_size, PEERS};
    use std::vec;
    use std::vec::Vec;

    const MEM: usize = 1 << 20;
    const OUT: usize = 0x7f000;

    fn end<'a, W: StateWords>(
        words: W,
        own: Region<'a>,
        peer: Region<'a>,
    ) -> Endpoint<'a, W, Vec<u32>> {
        let slots = vec![0u32; Queues::<Vec<u32>>::slots_needed(own.len())];
        Endpoint::new(words, own, peer, slots).unwrap()
    }

    fn v1_pair(mem: &TestMem) -> [Endpoint<'_, V1Words<'_>, Vec<u32>>; 2] {
        let ctl = V1Region::new(mem.region()).unwrap();
        ctl.set_owner(0, Some(10)).unwrap();
        ctl.set_owner(1, Some(11)).unwrap();
        [0, 1].map(|slot| {
            let (own, peer) = (ctl.section(slot).unwrap(), ctl.section(1 - slot).unwrap());
            end(V1Words { ctl, slot }, own, peer)
        })
    }

    fn v2_pair(mem: &TestMem) -> [Endpoint<'_, V2Region<'_>, Vec<u32>>; 2] {
        [0, 1].map(|id| {
            let v2 = V2Region::new(mem.region(), id, PEERS, OUT).unwrap();
            end(v2, v2.section(id).unwrap(), v2.section(1 - id).unwrap())
        })
    }

    /// Runs both ends in turn until both are in RUN; returns the rounds it took.
    fn link_up<W: StateWords>(ends: &mut [Endpoint<'_, W, Vec<u32>>; 2]) -> usize {
        for round in 1..=8 {
            for e in ends.iter_mut() {
                let fx = e.update();
                assert_eq!(fx.error, None);
            }
            if ends.iter().all(|e| e.running()) {
                return round;
            }
        }
        panic!(
            "no RUN after 8 rounds: {:?} {:?}",
            ends[0].state(),
            ends[1].state()
        );
    }

    fn exchange<W: StateWords>(ends: &mut [Endpoint<'_, W, Vec<u32>>; 2], tag: u8) {
        let [a, b] = ends;
        assert!(a.queues.tx.send(&[tag; 60]).unwrap());
        a.queues.tx.publish().unwrap();
        let mut buf = [0u8; 1514];
        assert_eq!(b.queues.rx.recv(&mut buf).unwrap(), Some(60));
        assert_eq!(buf[..60], [tag; 60]);
        // The ring is empty now; the queues are fresh, and a fresh used_event (0) asks for
        // a doorbell at the first completion.
        let done = b.finish_rx(false).unwrap();
        assert_eq!(
            done,
            RxDone {
                ring_data: true,
                more: false
            }
        );
        assert_eq!(a.queues.tx.reclaim().unwrap(), 1);
    }

    /// The same life of a link on both transports: up, frames, one end leaves and comes
    /// back, frames again.
    fn life<W: StateWords>(mut ends: [Endpoint<'_, W, Vec<u32>>; 2], peer_ids: [u32; 2]) {
        assert!(link_up(&mut ends) <= 3);
        assert_eq!(ends[0].peer_id(), Some(peer_ids[0]));
        assert_eq!(ends[1].peer_id(), Some(peer_ids[1]));
        exchange(&mut ends, 0xa5);
        let generation = ends[1].generation();

        // End 0 goes down: the other drops its carrier and waits; both come back.
        ends[0].set_up(false);
        let fx = ends[0].update();
        assert_eq!(fx.carrier, Some(false));
        assert!(fx.ring_state && fx.transitions >= 1);
        let fx = ends[1].update();
        assert_eq!(fx.carrier, Some(false));
        assert!(!ends[1].running());
        ends[0].set_up(true);
        link_up(&mut ends);
        assert_ne!(ends[1].generation(), generation, "queues were reset");
        exchange(&mut ends, 0x5a);
    }

    #[test]
    fn v1_link_lives() {
        let mem = TestMem::new(MEM);
        life(v1_pair(&mem), [11, 10]);
    }

    #[test]
    fn v2_link_lives() {
        let mem = TestMem::new(memory_size(OUT));
        life(v2_pair(&mem), [1, 0]);
    }

    #[test]
    fn entering_run_is_reported_once_with_the_carrier() {
        let mem = TestMem::new(MEM);
        let mut ends = v1_pair(&mem);
        let mut carrier_on = [0, 0];
        let mut entered = [0, 0];
        for _ in 0..4 {
            for (i, e) in ends.iter_mut().enumerate() {
                let fx = e.update();
                carrier_on[i] += usize::from(fx.carrier == Some(true));
                entered[i] += usize::from(fx.entered_run);
            }
        }
        assert_eq!((carrier_on, entered), ([1, 1], [1, 1]));
    }

    #[test]
    fn an_invalid_peer_state_resets_the_link() {
        let mem = TestMem::new(memory_size(OUT));
        let mut ends = v2_pair(&mem);
        link_up(&mut ends);
        let v2 = *ends[0].words();
        // The peer's entry as a hostile peer could write it.
        v2.region().store_u32(4, 77).unwrap();
        let fx = ends[0].update();
        assert_eq!(fx.error, Some(ProtocolError::InvalidPeerState { raw: 77 }));
        assert_eq!((fx.carrier, fx.ring_state), (Some(false), true));
        assert_eq!(ends[0].state(), LinkState::Reset);
        assert_eq!(v2.state(0), Ok(LinkState::Reset.raw()), "RESET published");
        // The peer behaves again: the link comes back.
        ends[1].update();
        link_up(&mut ends);
    }

    #[test]
    fn a_replaced_peer_counts_as_its_reset() {
        let mem = TestMem::new(MEM);
        let mut ends = v1_pair(&mem);
        link_up(&mut ends);
        let ctl = ends[0].words().ctl;
        // Slot 1 changes hands without its state word passing through RESET.
        ctl.set_owner_word(1, Some(12)).unwrap();
        let fx = ends[0].update();
        assert_eq!(fx.replaced, Some((Some(11), Some(12))));
        assert_eq!(fx.carrier, Some(false));
        assert!(!ends[0].running());
        assert_eq!(
            ends[0].peer_id(),
            Some(12),
            "doorbells go to the new holder"
        );
        // The new holder (here the same end, now id 12) goes through the handshake.
        let fx = ends[0].update();
        assert_eq!(fx.replaced, None, "reported once");
        ends[1].reset();
        link_up(&mut ends);
        assert_eq!(ends[0].update().replaced, None);
    }

    #[test]
    fn finish_rx_asks_for_more_when_the_budget_ran_out_or_a_frame_came() {
        let mem = TestMem::new(MEM);
        let mut ends = v1_pair(&mem);
        link_up(&mut ends);
        let [a, b] = &mut ends;
        for tag in 0..3u8 {
            assert!(a.queues.tx.send(&[tag; 60]).unwrap());
        }
        a.queues.tx.publish().unwrap();
        // The sender wants a doorbell once half of its 3 frames are done (used index past 1).
        a.queues.tx.request_completion_notify().unwrap();
        let mut round = |budget_used| {
            let f = b.queues.rx.poll().unwrap().unwrap();
            b.queues.rx.complete(f).unwrap();
            b.finish_rx(budget_used).unwrap()
        };
        let r1 = round(true);
        let r2 = round(false);
        let r3 = round(false);
        assert!(r1.more, "budget used: poll again");
        assert!(r2.more, "a frame is still in the ring");
        assert!(!r3.more, "ring empty, doorbell armed");
        assert_eq!([r1, r2, r3].map(|r| r.ring_data), [false, true, false]);
        assert_eq!(a.queues.tx.reclaim().unwrap(), 3);
        b.reset();
        assert_eq!(b.finish_rx(false), Ok(RxDone::default()), "not running");
    }

    #[test]
    fn reset_leaves_the_link_until_the_next_update() {
        let mem = TestMem::new(memory_size(OUT));
        let mut ends = v2_pair(&mem);
        link_up(&mut ends);
        let fx = ends[1].reset();
        assert_eq!((fx.carrier, fx.transitions), (Some(false), 0));
        assert_eq!(ends[0].words().peer_state(), Ok(LinkState::Reset));
        assert!(!ends[0].update().entered_run);
        link_up(&mut ends);
    }
}
