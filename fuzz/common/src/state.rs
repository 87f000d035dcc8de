//! Target `state`: the link state machine against arbitrary peer state words.
//!
//! Our end runs `settle` (and single `step`s) against a peer whose state word the fuzzer
//! writes (valid states, just-invalid values, anything), with the interface going up and down,
//! and a second honest end that takes turns at chosen moments.
//!
//! Invariants: no panic; `from_raw` accepts exactly 0..=3 and reports anything else as
//! `InvalidPeerState` with the raw value; every transition is one the module documents
//! (checked against a table written here from the documentation: next state, queue reset,
//! carrier); `settle` applies at most four transitions, each of them `step` of the state it
//! was in and the peer word it read, stops at the first invalid word with that error, and
//! ends where its transitions led; two honest ends that are up reach RUN/RUN within a few
//! turns from wherever the fuzzer left them.

use arbitrary::Arbitrary;
use ivnet_core::state::{settle, step, LinkState, Transition};
use ivnet_core::ProtocolError;

use crate::tally::record;

/// A state word the peer publishes.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Word {
    /// A valid state (x % 4).
    Valid(u8),
    /// Just past the valid ones: 4 + (x % 4).
    JustPast(u8),
    /// Any value.
    Raw(u32),
}

impl Word {
    fn raw(self) -> u32 {
        match self {
            Word::Valid(x) => u32::from(x % 4),
            Word::JustPast(x) => 4 + u32::from(x % 4),
            Word::Raw(v) => v,
        }
    }
}

/// One step.
#[derive(Arbitrary, Debug, Clone)]
pub enum Op {
    /// The peer writes its state word.
    PeerWrites(Word),
    /// The peer's word changes on each read `settle` makes (a peer racing with us).
    PeerRaces(Vec<Word>),
    /// Our interface goes up or down.
    Up(bool),
    /// One `step` with the current peer word (if valid).
    Step,
    /// `settle` from our current state.
    Settle,
    /// The honest second end (whose word the peer's is while it acts) settles against us.
    HonestPeerSettles,
}

/// Our start state and the steps.
#[derive(Arbitrary, Debug, Clone)]
pub struct Input {
    /// Our start state (x % 4).
    pub start: u8,
    /// The steps.
    pub ops: Vec<Op>,
}

const ALL: [LinkState; 4] = [
    LinkState::Reset,
    LinkState::Init,
    LinkState::Ready,
    LinkState::Run,
];

/// The documented transition of (own, peer, up), written out case by case from the module's
/// description, independently of `step`'s code.
fn documented(own: LinkState, peer: LinkState, up: bool) -> Transition {
    use LinkState::*;
    let t = |next, reset_queues, carrier| Transition {
        next,
        reset_queues,
        carrier,
    };
    match (own, peer) {
        // RESET -> INIT once the peer is below READY.
        (Reset, Reset | Init) => t(Init, false, None),
        (Reset, Ready | Run) => t(Reset, false, None),
        // INIT -> READY once the peer is above RESET, after resetting our queue.
        (Init, Reset) => t(Init, false, None),
        (Init, Init | Ready | Run) => t(Ready, true, None),
        // READY/RUN -> RESET, carrier off, as soon as the peer is in RESET.
        (Ready | Run, Reset) => t(Reset, false, Some(false)),
        // READY: carrier on once the peer is READY or RUN; RUN when the interface is up too.
        (Ready, Ready | Run) => t(if up { Run } else { Ready }, false, Some(true)),
        (Ready, Init) => t(Ready, false, None),
        // RUN with the interface down: leave the link.
        (Run, Init | Ready | Run) if !up => t(Reset, false, Some(false)),
        (Run, Init | Ready | Run) => t(Run, false, None),
    }
}

fn parse(raw: u32) -> Result<LinkState, ProtocolError> {
    let r = LinkState::from_raw(raw);
    match r {
        Ok(s) => {
            assert!(raw < 4);
            assert_eq!(s.raw(), raw, "round trip");
        }
        Err(e) => {
            record(&e);
            assert!(raw >= 4, "valid word {raw} refused");
            assert_eq!(e, ProtocolError::InvalidPeerState { raw });
        }
    }
    r
}

/// Checks one `settle` run against `step` and the table, with the words it reads.
fn checked_settle(own: LinkState, up: bool, words: &[u32]) -> Result<LinkState, ProtocolError> {
    let mut reads = 0usize;
    let mut applied: Vec<(LinkState, Transition)> = Vec::new();
    let word = |i: usize| words[i.min(words.len() - 1)];
    let r = settle(
        own,
        up,
        || {
            let w = word(reads);
            reads += 1;
            parse(w)
        },
        |from, t| {
            applied.push((from, *t));
            Ok(())
        },
    );
    assert!(
        applied.len() <= 4,
        "settle applied {} transitions",
        applied.len()
    );
    assert!((1..=4).contains(&reads));
    let mut s = own;
    for (i, (from, t)) in applied.iter().enumerate() {
        assert_eq!(*from, s, "transition applied from the wrong state");
        let peer = LinkState::from_raw(word(i)).expect("an applied step read a valid word");
        assert_eq!(*t, documented(s, peer, up));
        assert!(!t.is_noop(s), "a no-op was applied");
        s = t.next;
    }
    match r {
        Ok(end) => assert_eq!(end, s),
        Err(e) => {
            assert_eq!(
                e,
                ProtocolError::InvalidPeerState {
                    raw: word(reads - 1)
                }
            );
            assert_eq!(
                reads,
                applied.len() + 1,
                "settle went on after an invalid word"
            );
        }
    }
    r
}

/// Runs one input.
pub fn run(input: &Input) {
    // The table agrees with `step` everywhere (cheap: 32 cases).
    for own in ALL {
        for peer in ALL {
            for up in [false, true] {
                assert_eq!(step(own, peer, up), documented(own, peer, up));
            }
        }
    }
    let mut own = ALL[usize::from(input.start % 4)];
    let mut peer_word = 0u32;
    // The honest end's state; its word is the peer word while it is the one acting.
    let mut honest = LinkState::Reset;
    let mut up = true;
    for op in &input.ops {
        match op {
            Op::PeerWrites(w) => peer_word = w.raw(),
            Op::PeerRaces(ws) => {
                let words: Vec<u32> = ws.iter().map(|w| w.raw()).take(8).collect();
                if words.is_empty() {
                    continue;
                }
                if let Ok(s) = checked_settle(own, up, &words) {
                    own = s;
                }
                peer_word = *words.last().unwrap();
            }
            Op::Up(u) => up = *u,
            Op::Step => {
                if let Ok(p) = parse(peer_word) {
                    let t = step(own, p, up);
                    assert_eq!(t, documented(own, p, up));
                    own = t.next;
                }
            }
            Op::Settle => {
                if let Ok(s) = checked_settle(own, up, &[peer_word]) {
                    own = s;
                }
            }
            Op::HonestPeerSettles => {
                honest = checked_settle(honest, true, &[own.raw()]).expect("our word is valid");
                peer_word = honest.raw();
            }
        }
    }
    // From here both ends are honest and up: they link within a few turns each.
    let mut peer = LinkState::from_raw(peer_word).unwrap_or(LinkState::Reset);
    let mut me = own;
    for _ in 0..4 {
        me = checked_settle(me, true, &[peer.raw()]).unwrap();
        peer = checked_settle(peer, true, &[me.raw()]).unwrap();
    }
    assert_eq!((me, peer), (LinkState::Run, LinkState::Run), "no link");
}
