//! Property tests: whatever the peer writes into shared memory, the receive path, the
//! completion path, the state word and the v1 control page return valid results or a typed
//! [`ProtocolError`], and never panic.
//!
//! The strategies are structure-aware: rather than random bytes (which almost always stop at
//! the first index check), the peer writes meaningful fields with values that are right or
//! slightly off: an avail index a little ahead or far ahead, descriptor indices at the end of
//! the queue, descriptor addresses just before the data area or running past the section,
//! runt lengths, flags, completions out of order, a used index beyond what is in flight,
//! state words just past the valid ones. `every_variant_is_reached` checks that this reaches
//! every variant of `ProtocolError` that a peer can cause; `OutOfBounds` is not one of them
//! (see `out_of_bounds_is_not_peer_reachable_and_is_handled`).

use std::collections::BTreeSet;

use ivnet_core::geometry::Geometry;
use ivnet_core::queue::{Queues, MIN_FRAME};
use ivnet_core::shm::{OutOfBounds, Region};
use ivnet_core::state::LinkState;
use ivnet_core::testmem::TestMem;
use ivnet_core::v1::{min_region_size, V1Region, OWNER_OFF, STATE_OFF};
use ivnet_core::ProtocolError;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

const SEC: usize = 0x4000;

fn geometry() -> Geometry {
    Geometry::for_section(SEC).unwrap()
}

/// The name of `e`'s variant. The match names every variant: a new one must be added here
/// (and to `PEER_REACHABLE` or the `OutOfBounds` test) before this compiles.
fn variant(e: &ProtocolError) -> &'static str {
    match e {
        ProtocolError::AvailIndexOutOfRange { .. } => "AvailIndexOutOfRange",
        ProtocolError::DescriptorIndexOutOfRange { .. } => "DescriptorIndexOutOfRange",
        ProtocolError::DescriptorFlags { .. } => "DescriptorFlags",
        ProtocolError::FrameOutOfBounds { .. } => "FrameOutOfBounds",
        ProtocolError::RuntFrame { .. } => "RuntFrame",
        ProtocolError::UsedIndexOutOfRange { .. } => "UsedIndexOutOfRange",
        ProtocolError::OutOfOrderCompletion { .. } => "OutOfOrderCompletion",
        ProtocolError::InvalidPeerState { .. } => "InvalidPeerState",
        ProtocolError::OutOfBounds(_) => "OutOfBounds",
    }
}

/// The variants a peer can cause by what it writes.
const PEER_REACHABLE: [&str; 8] = [
    "AvailIndexOutOfRange",
    "DescriptorIndexOutOfRange",
    "DescriptorFlags",
    "FrameOutOfBounds",
    "RuntFrame",
    "UsedIndexOutOfRange",
    "OutOfOrderCompletion",
    "InvalidPeerState",
];

/// One frame the peer makes available, each field right or slightly off.
#[derive(Debug, Clone)]
struct PeerFrame {
    /// Descriptor index written into the avail ring.
    desc: u16,
    addr: u64,
    len: u32,
    flags: u16,
}

fn desc_index() -> impl Strategy<Value = u16> {
    let q = geometry().qlen;
    prop_oneof![
        8 => 0..q,
        1 => q..q + 3,
        1 => any::<u16>(),
    ]
}

fn frame_len() -> impl Strategy<Value = u32> {
    prop_oneof![
        8 => MIN_FRAME..1515,
        1 => 0..MIN_FRAME,
        1 => any::<u32>(),
    ]
}

fn frame_addr() -> impl Strategy<Value = u64> {
    let g = geometry();
    let (data, end) = (g.data_off() as u64, SEC as u64);
    prop_oneof![
        8 => data..end - 1514,
        // Just before the data area (inside the queue header).
        1 => data - 64..data,
        // Near the end: whether the frame fits depends on its length.
        1 => end - 1600..end + 16,
        1 => any::<u64>(),
    ]
}

fn flags() -> impl Strategy<Value = u16> {
    prop_oneof![
        12 => Just(0u16),
        1 => Just(1u16),
        1 => Just(2u16),
        1 => Just(4u16),
        1 => any::<u16>(),
    ]
}

fn peer_frame() -> impl Strategy<Value = PeerFrame> {
    (desc_index(), frame_addr(), frame_len(), flags()).prop_map(|(desc, addr, len, flags)| {
        PeerFrame {
            desc,
            addr,
            len,
            flags,
        }
    })
}

/// What the peer does to its section before we look.
#[derive(Debug, Clone)]
struct RxScenario {
    frames: Vec<PeerFrame>,
    /// Added to the avail index it publishes (0: honest count of frames).
    idx_skew: i32,
    /// Arbitrary 8-byte words written anywhere in its queue header afterwards.
    pokes: Vec<(usize, u64)>,
}

fn rx_scenario() -> impl Strategy<Value = RxScenario> {
    let q = i32::from(geometry().qlen);
    (
        prop::collection::vec(peer_frame(), 0..6),
        prop_oneof![
            8 => Just(0i32),
            2 => -2i32..=2,
            1 => q - 4..q + 4,
            1 => any::<i16>().prop_map(i32::from),
        ],
        prop_oneof![
            6 => Just(Vec::new()),
            1 => prop::collection::vec((0usize..0x800, any::<u64>()), 0..4),
        ],
    )
        .prop_map(|(frames, idx_skew, pokes)| RxScenario {
            frames,
            idx_skew,
            pokes,
        })
}

/// Writes the scenario into the peer's section.
fn write_rx(peer: &Region<'_>, g: &Geometry, s: &RxScenario) {
    for (i, f) in s.frames.iter().enumerate() {
        // The descriptor table entry the ring names (the ring names it even when out of range;
        // such a descriptor is then not in the table and we write the one it wraps to).
        let d = f.desc % g.qlen;
        peer.write_u64(g.desc(d), f.addr).unwrap();
        peer.write_u32(g.desc(d) + 8, f.len).unwrap();
        peer.write_u16(g.desc(d) + 12, f.flags).unwrap();
        peer.write_u16(g.avail_ring(i as u16), f.desc).unwrap();
    }
    let idx = (s.frames.len() as i32 + s.idx_skew) as u16;
    peer.store_u16(g.avail_idx(), idx).unwrap();
    for &(off, v) in &s.pokes {
        peer.write_u64((off * 8) % g.header_size, v).unwrap();
    }
}

/// Receives until nothing is pending or an error; checks every frame; returns the error.
fn drain_rx(q: &mut Queues<'_, Vec<u32>>, g: &Geometry) -> Option<ProtocolError> {
    let mut buf = [0u8; 2048];
    for _ in 0..=g.qlen {
        match q.rx.poll() {
            Ok(Some(f)) => {
                assert!(
                    f.offset >= g.data_off(),
                    "frame before the data area: {f:?}"
                );
                assert!(f.offset + f.len <= SEC, "frame past the section: {f:?}");
                assert!(f.len >= MIN_FRAME as usize, "runt frame accepted: {f:?}");
                assert!(f.id < g.qlen);
                let n = f.len.min(buf.len());
                q.rx.region().read_bytes(f.offset, &mut buf[..n]).unwrap();
                q.rx.complete(f).unwrap();
            }
            Ok(None) => return None,
            Err(e) => return Some(e),
        }
    }
    None
}

/// What the peer does with the frames we sent it.
#[derive(Debug, Clone)]
struct TxScenario {
    sends: usize,
    /// For each completion the peer writes: which of our frames in flight it names (0: the
    /// oldest one, as it must), or any id.
    completions: Vec<Result<usize, u32>>,
    /// Added to the used index it publishes (0: honest count of completions).
    idx_skew: i32,
}

fn tx_scenario() -> impl Strategy<Value = TxScenario> {
    (
        1usize..8,
        prop::collection::vec(
            prop_oneof![
                10 => Just(Ok(0usize)),
                2 => (1usize..4).prop_map(Ok),
                1 => any::<u32>().prop_map(Err),
            ],
            0..8,
        ),
        prop_oneof![
            8 => Just(0i32),
            2 => -1i32..=3,
            1 => any::<i16>().prop_map(i32::from),
        ],
    )
        .prop_map(|(sends, completions, idx_skew)| TxScenario {
            sends,
            completions,
            idx_skew,
        })
}

/// Sends, lets the peer complete as the scenario says, reclaims; checks the in-flight count.
fn run_tx(s: &TxScenario) -> Option<ProtocolError> {
    let (a, b) = (TestMem::new(SEC), TestMem::new(SEC));
    let mut me = Queues::new(a.region(), b.region(), vec![0u32; 64]).unwrap();
    me.reset().unwrap();
    let g = *me.geometry();
    let mut ids = Vec::new();
    for i in 0..s.sends {
        let slot = me.tx.reserve(100).unwrap();
        ids.push(slot.id());
        me.tx.send(&[i as u8; 100]).unwrap();
    }
    me.tx.publish().unwrap();
    let peer = b.region();
    // The peer's completions: the k-th element names our (k + offset)-th oldest frame.
    let n = s.completions.len().min(s.sends);
    for (k, c) in s.completions.iter().take(n).enumerate() {
        let id = match *c {
            Ok(off) => u32::from(ids[(k + off) % ids.len()]),
            Err(raw) => raw,
        };
        peer.write_u32(g.used_ring(k as u16), id).unwrap();
        peer.write_u32(g.used_ring(k as u16) + 4, 1).unwrap();
    }
    peer.store_u16(g.used_idx(), (n as i32 + s.idx_skew) as u16)
        .unwrap();
    let before = me.tx.in_flight();
    let r = me.tx.reclaim();
    let after = me.tx.in_flight();
    assert!(after <= before && usize::from(before) == s.sends);
    if let Ok(done) = r {
        assert_eq!(before - after, done);
        assert!(usize::from(done) <= n || s.idx_skew != 0);
    }
    // Whatever happened, a reset (ours, and the peer's, which follows it in the handshake)
    // starts over cleanly.
    me.reset().unwrap();
    peer.zero(0, g.header_size).unwrap();
    assert_eq!(me.tx.in_flight(), 0);
    assert_eq!(me.tx.reclaim(), Ok(0));
    r.err()
}

fn state_word() -> impl Strategy<Value = u32> {
    prop_oneof![
        4 => 0u32..4,
        2 => 4u32..8,
        1 => any::<u32>(),
    ]
}

/// The v1 control page as the server and the other peer left it.
#[derive(Debug, Clone)]
struct ControlPage {
    owners: [u32; 2],
    states: [u32; 2],
}

fn control_page() -> impl Strategy<Value = ControlPage> {
    let owner = prop_oneof![2 => Just(0u32), 3 => 1u32..4, 1 => any::<u32>()];
    (owner.clone(), owner, state_word(), state_word()).prop_map(|(o0, o1, s0, s1)| ControlPage {
        owners: [o0, o1],
        states: [s0, s1],
    })
}

/// Reads the peer's state through the v1 control page and checks it against the page.
fn run_state(c: &ControlPage) -> Option<ProtocolError> {
    let m = TestMem::new(min_region_size());
    let r = m.region();
    for s in 0..2 {
        r.store_u32(OWNER_OFF + 4 * s, c.owners[s]).unwrap();
        r.store_u32(STATE_OFF + 4 * s, c.states[s]).unwrap();
    }
    let v = V1Region::new(r).unwrap();
    let mut err = None;
    for slot in 0..2 {
        let other = 1 - slot;
        let got = v.peer_state(slot);
        if c.owners[other] == 0 {
            assert_eq!(got, Ok(LinkState::Reset), "a free slot reads as RESET");
        } else {
            assert_eq!(got, LinkState::from_raw(c.states[other]));
            assert_eq!(got.is_ok(), c.states[other] < 4);
        }
        err = err.or(got.err());
    }
    err
}

/// One structured scenario of each kind, as one test case.
fn scenario() -> impl Strategy<Value = (RxScenario, TxScenario, ControlPage)> {
    (rx_scenario(), tx_scenario(), control_page())
}

/// Runs one combined case; returns the errors seen.
fn run_case(rx: &RxScenario, tx: &TxScenario, page: &ControlPage) -> Vec<ProtocolError> {
    let (a, b) = (TestMem::new(SEC), TestMem::new(SEC));
    let mut me = Queues::new(a.region(), b.region(), vec![0u32; 64]).unwrap();
    me.reset().unwrap();
    let g = *me.geometry();
    write_rx(&b.region(), &g, rx);
    let mut errs = Vec::new();
    errs.extend(drain_rx(&mut me, &g));
    // After an error, publishing completions and arming notifications still work.
    me.rx.publish().unwrap();
    me.rx.enable_notify().unwrap();
    errs.extend(run_tx(tx));
    errs.extend(run_state(page));
    errs
}

#[test]
fn every_variant_is_reached() {
    // A fixed seed: the test is reproducible, and the count below is what it takes.
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases: 3000,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    let seen = std::cell::RefCell::new(BTreeSet::new());
    runner
        .run(&scenario(), |(rx, tx, page)| {
            for e in run_case(&rx, &tx, &page) {
                assert_ne!(variant(&e), "OutOfBounds", "a peer caused {e:?}");
                seen.borrow_mut().insert(variant(&e));
            }
            Ok(())
        })
        .unwrap();
    let seen = seen.into_inner();
    let missing: Vec<_> = PEER_REACHABLE
        .iter()
        .filter(|v| !seen.contains(*v))
        .collect();
    assert!(missing.is_empty(), "variants never reached: {missing:?}");
}

/// `OutOfBounds` is the one variant no peer write can cause: the queues check, when they are
/// built, that both sections have the size the geometry was computed for, and every access
/// they make is at an offset the geometry derives (indices are reduced modulo the queue
/// length; frame offsets are checked against the data area before any access), so a peer's
/// values never reach an offset outside the window. It exists for what is not the peer's
/// doing: an access outside the window is refused with it, and the queue API hands it on as
/// `ProtocolError::OutOfBounds` rather than touching memory or panicking.
#[test]
fn out_of_bounds_is_not_peer_reachable_and_is_handled() {
    let (a, b) = (TestMem::new(SEC), TestMem::new(SEC));
    let mut me = Queues::new(a.region(), b.region(), vec![0u32; 64]).unwrap();
    me.reset().unwrap();
    // The window refuses accesses outside it, and `?` turns that into the protocol error.
    let read = |r: &Region<'_>, off: usize| -> Result<u32, ProtocolError> { Ok(r.load_u32(off)?) };
    assert_eq!(
        read(&b.region(), SEC),
        Err(ProtocolError::OutOfBounds(OutOfBounds {
            offset: SEC,
            len: 4
        }))
    );
    // (A slot can no longer be altered between `reserve` and `push`: its fields are read-only,
    // so `push` only ever sees offsets the queue itself computed.)
    assert!(me.tx.send(&[1; 100]).unwrap());
    assert_eq!(me.tx.in_flight(), 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Structured peer writes: every frame the receive path hands out lies inside the peer's
    /// data area and is long enough; anything else is a typed error.
    #[test]
    fn structured_peer_writes_never_escape(s in rx_scenario()) {
        let (a, b) = (TestMem::new(SEC), TestMem::new(SEC));
        let mut me = Queues::new(a.region(), b.region(), vec![0u32; 64]).unwrap();
        me.reset().unwrap();
        let g = *me.geometry();
        write_rx(&b.region(), &g, &s);
        if let Some(e) = drain_rx(&mut me, &g) {
            prop_assert_ne!(variant(&e), "OutOfBounds");
        }
    }

    /// An honest peer (no off values) never causes an error, and every frame it published
    /// arrives.
    #[test]
    fn honest_peer_frames_all_arrive(
        frames in prop::collection::vec((0u16..64, 0u64..0x2000, MIN_FRAME..1515), 1..8),
    ) {
        let (a, b) = (TestMem::new(SEC), TestMem::new(SEC));
        let mut me = Queues::new(a.region(), b.region(), vec![0u32; 64]).unwrap();
        me.reset().unwrap();
        let g = *me.geometry();
        let frames: Vec<PeerFrame> = frames
            .into_iter()
            .map(|(desc, at, len)| PeerFrame { desc, addr: g.data_off() as u64 + at, len, flags: 0 })
            .collect();
        let n = frames.len();
        write_rx(&b.region(), &g, &RxScenario { frames, idx_skew: 0, pokes: vec![] });
        let mut got = 0;
        let mut buf = [0u8; 2048];
        while let Some(len) = me.rx.recv(&mut buf).unwrap() {
            prop_assert!(len >= MIN_FRAME as usize);
            got += 1;
        }
        prop_assert_eq!(got, n);
    }

    /// Any completion behaviour: in-flight never grows, and a reset recovers.
    #[test]
    fn structured_completions_keep_in_flight_consistent(s in tx_scenario()) {
        if let Some(e) = run_tx(&s) {
            let expected = matches!(
                e,
                ProtocolError::UsedIndexOutOfRange { .. } | ProtocolError::OutOfOrderCompletion { .. }
            );
            prop_assert!(expected, "reclaim failed with {:?}", e);
        }
    }

    /// The old unstructured test, kept: arbitrary 8-byte words anywhere in the peer's header.
    #[test]
    fn arbitrary_peer_header_never_escapes(
        pokes in proptest::collection::vec((0usize..0x800, any::<u64>()), 0..64),
        sends in 0usize..8,
    ) {
        let (a, b) = (TestMem::new(SEC), TestMem::new(SEC));
        let mut me = Queues::new(a.region(), b.region(), vec![0u32; 64]).unwrap();
        me.reset().unwrap();
        let g = geometry();
        for _ in 0..sends {
            me.tx.send(&[0x55; 100]).unwrap();
        }
        me.tx.publish().unwrap();
        let peer = b.region();
        for (off, v) in pokes {
            peer.write_u64((off * 8) % g.header_size, v).unwrap();
        }
        drain_rx(&mut me, &g);
        let _ = me.rx.publish();
        if let Ok(n) = me.tx.reclaim() {
            prop_assert!(n as usize <= sends);
        }
        prop_assert!(me.tx.in_flight() as usize <= sends);
    }

    /// State words: exactly 0..=3 are states; the rest are `InvalidPeerState` with the value.
    #[test]
    fn state_words(raw in state_word()) {
        match LinkState::from_raw(raw) {
            Ok(s) => prop_assert_eq!(s.raw(), raw),
            Err(e) => {
                prop_assert!(raw >= 4);
                prop_assert_eq!(e, ProtocolError::InvalidPeerState { raw });
            }
        }
    }
}
