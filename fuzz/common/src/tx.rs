//! Target `tx`: our transmit queue against a hostile peer.
//!
//! We reserve (with arbitrary sizes, then fill, maybe shrink, and push), send, publish,
//! reclaim and ask for completion doorbells; the peer writes its used index, used ring
//! entries (the right id, a neighbour's, or any value), `avail_event` or any header word, or
//! honestly completes some frames.
//!
//! Invariants: no panic; in-flight never exceeds the queue length and always equals the frames
//! pushed minus those reclaimed; a reserved slot lies inside our data area, names the next
//! descriptor, and overlaps no frame in flight; frames in flight stay byte-exact in our section
//! until reclaimed (nothing we do overwrites them); a reservation that must fit (nothing in
//! flight, a frame that fits the data area) is granted; `publish`, `reclaim` and
//! `request_completion_notify` follow the protocol's rules.

use std::collections::VecDeque;
use std::num::Wrapping;

use arbitrary::Arbitrary;
use ivnet_core::geometry::{frame_slot_size, Geometry};
use ivnet_core::queue::{need_event, Queues, TxSlot, MIN_FRAME};
use ivnet_core::testmem::TestMem;
use ivnet_core::ProtocolError;

use crate::peer::{frame_bytes, header_word, Index16};
use crate::tally::seen;

/// A frame length our side asks room for.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Size {
    /// A usual Ethernet frame: 14 + (x % 1501).
    Frame(u16),
    /// Anything up to 64 KiB (runts and frames larger than the data area included).
    Raw(u16),
}

impl Size {
    fn resolve(self) -> usize {
        match self {
            Size::Frame(x) => 14 + usize::from(x) % 1501,
            Size::Raw(x) => usize::from(x),
        }
    }
}

/// The id the peer writes into a used element.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum UsedId {
    /// The descriptor of the k-th frame in flight (k = 0 is the right one).
    InFlight(u8),
    /// Any value.
    Raw(u32),
}

/// One step: a call on our transmit queue or a peer write.
#[derive(Arbitrary, Debug, Clone)]
pub enum Op {
    /// `tx.reserve(len)`; the slot is kept for a later `Push`.
    Reserve(Size),
    /// Fills the reserved slot (shrinking it first to `shrink` bytes if given) and pushes it.
    Push {
        /// Shrink to this length first.
        shrink: Option<u16>,
    },
    /// `tx.send()` of a frame of this size.
    Send(Size),
    /// `tx.publish()`.
    Publish,
    /// `tx.reclaim()`.
    Reclaim,
    /// `tx.request_completion_notify()`.
    RequestNotify,
    /// `Queues::reset()`.
    Reset,
    /// The peer publishes a used index near our last reclaimed one, or any value.
    PeerUsedIdx(Index16),
    /// The peer writes used element `slot` (relative to our last reclaimed one).
    PeerUsedEntry {
        /// Ring position.
        slot: Index16,
        /// Id written.
        id: UsedId,
    },
    /// The peer writes `avail_event` (when it wants our doorbells).
    PeerAvailEvent(Index16),
    /// The peer writes any aligned 8-byte word of its queue header.
    PeerWord {
        /// Word number (reduced into the header).
        off: u16,
        /// Value.
        val: u64,
    },
    /// The peer honestly completes the next `n` frames it has not completed yet.
    PeerComplete(u8),
}

/// A section size and the steps.
#[derive(Arbitrary, Debug, Clone)]
pub struct Input {
    /// Use the larger section.
    pub larger: bool,
    /// The steps.
    pub ops: Vec<Op>,
}

/// A frame in flight, as we pushed it.
#[derive(Debug, Clone, Copy)]
struct Sent {
    id: u16,
    offset: usize,
    len: usize,
    tag: u32,
}

struct Model {
    g: Geometry,
    in_flight: VecDeque<Sent>,
    /// Frames pushed (the next descriptor is `added % qlen`).
    added: Wrapping<u16>,
    published: Wrapping<u16>,
    reclaimed: Wrapping<u16>,
    next_tag: u32,
}

impl Model {
    /// Checks a granted reservation against everything in flight.
    fn check_slot(&self, s: &TxSlot, len: usize) {
        let g = &self.g;
        assert_eq!(s.len(), len);
        assert_eq!(
            s.id(),
            self.added.0 % g.qlen,
            "slot names the wrong descriptor"
        );
        let size = frame_slot_size(len);
        assert!(
            s.offset() >= g.data_off(),
            "slot before the data area: {s:?}"
        );
        assert!(
            s.offset() + size <= g.section_size,
            "slot past the data area: {s:?}"
        );
        assert!(
            self.in_flight.len() < usize::from(g.qlen),
            "room granted with a full ring"
        );
        for f in &self.in_flight {
            assert_ne!(f.id, s.id(), "descriptor {} still in flight", f.id);
            let fsize = frame_slot_size(f.len);
            let disjoint = s.offset() + size <= f.offset || f.offset + fsize <= s.offset();
            assert!(disjoint, "slot {s:?} overlaps frame in flight {f:?}");
        }
    }
}

/// Runs one input.
pub fn run(input: &Input) {
    let size = if input.larger {
        crate::LARGER_SECTION
    } else {
        crate::SMALL_SECTION
    };
    let (own_mem, peer_mem) = (TestMem::new(size), TestMem::new(size));
    let (own, peer) = (own_mem.region(), peer_mem.region());
    let mut q = Queues::new(
        own,
        peer,
        vec![0u32; Queues::<Vec<u32>>::slots_needed(size)],
    )
    .expect("valid section");
    q.reset().expect("reset");
    let g = *q.geometry();
    let mut m = Model {
        g,
        in_flight: VecDeque::new(),
        added: Wrapping(0),
        published: Wrapping(0),
        reclaimed: Wrapping(0),
        next_tag: 0,
    };
    let mut pending: Option<TxSlot> = None;
    for op in &input.ops {
        match *op {
            Op::Reserve(sz) => {
                let len = sz.resolve();
                pending = q.tx.reserve(len);
                match &pending {
                    Some(s) => m.check_slot(s, len),
                    None => {
                        let must_fit = m.in_flight.is_empty()
                            && len >= MIN_FRAME as usize
                            && frame_slot_size(len) <= g.data_size();
                        assert!(!must_fit, "no room for {len} bytes in an empty queue");
                    }
                }
            }
            Op::Push { shrink } => {
                let Some(mut slot) = pending.take() else {
                    continue;
                };
                if let Some(n) = shrink {
                    let n = usize::from(n).clamp(MIN_FRAME as usize, slot.len());
                    slot = slot.shrink(n);
                    assert_eq!(slot.len(), n);
                }
                let tag = m.next_tag;
                m.next_tag += 1;
                own.write_bytes(slot.offset(), &frame_bytes(tag, slot.len()))
                    .unwrap();
                seen(q.tx.push(slot)).expect("push of a reserved slot");
                m.in_flight.push_back(Sent {
                    id: slot.id(),
                    offset: slot.offset(),
                    len: slot.len(),
                    tag,
                });
                m.added += 1;
            }
            Op::Send(sz) => {
                let len = sz.resolve();
                // `reserve` is what `send` does first; it tells where the frame goes.
                let slot = q.tx.reserve(len);
                let tag = m.next_tag;
                let sent = seen(q.tx.send(&frame_bytes(tag, len))).expect("send");
                assert_eq!(sent, slot.is_some());
                if let Some(s) = slot {
                    m.check_slot(&s, len);
                    m.next_tag += 1;
                    m.in_flight.push_back(Sent {
                        id: s.id(),
                        offset: s.offset(),
                        len,
                        tag,
                    });
                    m.added += 1;
                    // A reservation made before the send is stale now.
                    pending = None;
                }
            }
            Op::Publish => {
                let event = peer.read_u16(g.avail_event()).unwrap();
                let old = m.published.0;
                let notify = seen(q.tx.publish()).expect("publish");
                assert_eq!(own.load_u16(g.avail_idx()).unwrap(), m.added.0);
                assert_eq!(
                    notify,
                    m.added.0 != old && need_event(event, m.added.0, old)
                );
                m.published = m.added;
            }
            Op::Reclaim => {
                let before = m.in_flight.len();
                let r = seen(q.tx.reclaim());
                let now = usize::from(q.tx.in_flight());
                assert!(now <= before, "reclaim added frames in flight");
                let done = before - now;
                if let Ok(n) = r {
                    assert_eq!(usize::from(n), done);
                }
                match r {
                    Err(ProtocolError::UsedIndexOutOfRange { .. }) => assert_eq!(done, 0),
                    Ok(_) | Err(ProtocolError::OutOfOrderCompletion { .. }) => {}
                    Err(e) => panic!("reclaim: unexpected {e:?}"),
                }
                for _ in 0..done {
                    let f = m.in_flight.pop_front().unwrap();
                    let mut back = vec![0u8; f.len];
                    own.read_bytes(f.offset, &mut back).unwrap();
                    assert!(
                        back == frame_bytes(f.tag, f.len),
                        "frame {f:?} was overwritten while in flight"
                    );
                    m.reclaimed += 1;
                }
            }
            Op::RequestNotify => {
                seen(q.tx.request_completion_notify()).expect("request_completion_notify");
                let at = m.reclaimed + Wrapping(m.in_flight.len() as u16 / 2);
                assert_eq!(own.read_u16(g.used_event()).unwrap(), at.0);
            }
            Op::Reset => {
                q.reset().expect("reset");
                m.in_flight.clear();
                m.added = Wrapping(0);
                m.published = Wrapping(0);
                m.reclaimed = Wrapping(0);
                pending = None;
            }
            Op::PeerUsedIdx(i) => {
                peer.store_u16(g.used_idx(), i.resolve(m.reclaimed.0))
                    .unwrap();
            }
            Op::PeerUsedEntry { slot, id } => {
                let s = slot.resolve(m.reclaimed.0) % g.qlen;
                let id = match id {
                    UsedId::InFlight(k) => m
                        .in_flight
                        .get(usize::from(k))
                        .map_or(u32::from(k), |f| u32::from(f.id)),
                    UsedId::Raw(v) => v,
                };
                peer.write_u32(g.used_ring(s), id).unwrap();
            }
            Op::PeerAvailEvent(i) => {
                peer.write_u16(g.avail_event(), i.resolve(m.published.0))
                    .unwrap();
            }
            Op::PeerWord { off, val } => peer.write_u64(header_word(&g, off), val).unwrap(),
            Op::PeerComplete(n) => {
                let used = peer.load_u16(g.used_idx()).unwrap();
                let mut done = usize::from(used.wrapping_sub(m.reclaimed.0));
                let mut used = Wrapping(used);
                if done > m.in_flight.len() {
                    done = 0;
                    used = m.reclaimed;
                }
                for f in m.in_flight.iter().skip(done).take(usize::from(n)) {
                    let at = g.used_ring(used.0 % g.qlen);
                    peer.write_u32(at, u32::from(f.id)).unwrap();
                    peer.write_u32(at + 4, 1).unwrap();
                    used += 1;
                }
                peer.store_u16(g.used_idx(), used.0).unwrap();
            }
        }
        let n = q.tx.in_flight();
        assert!(n <= g.qlen, "{n} frames in flight in a queue of {}", g.qlen);
        assert_eq!(usize::from(n), m.in_flight.len());
    }
}
