//! Target `rx`: our receive queue against a hostile peer.
//!
//! The peer writes chosen values into the fields of its section that our receive path reads
//! (avail index, avail ring entries, descriptor addr/len/flags, `used_event`, or any header
//! word), or publishes a well-formed frame; in between, we poll, complete, receive, publish and
//! arm notifications, and go on after errors (as a driver would until its reset).
//!
//! Invariants: no panic; every polled frame lies inside the peer's data area, is at least
//! `MIN_FRAME` long and names a descriptor inside the queue; `poll` agrees with a reference
//! reading of the peer's memory written here from the protocol's rules (same frame, same error);
//! `publish` and `enable_notify` write what they should and answer by virtio's event rule.

use std::num::Wrapping;

use arbitrary::Arbitrary;
use ivnet_core::geometry::Geometry;
use ivnet_core::queue::{need_event, Queues, RxFrame, MIN_FRAME};
use ivnet_core::shm::Region;
use ivnet_core::testmem::TestMem;
use ivnet_core::ProtocolError;

use crate::peer::{header_word, Addr, DescRef, Flags, Index16, Len};
use crate::tally::seen;

/// One step: a peer write or a call on our receive queue.
#[derive(Arbitrary, Debug, Clone)]
pub enum Op {
    /// The peer publishes an avail index near what we consumed, or any value.
    AvailIdx(Index16),
    /// The peer writes avail ring entry `slot` (relative to what we consumed).
    AvailEntry {
        /// Ring position, relative to our next one.
        slot: Index16,
        /// Descriptor index written there.
        desc: DescRef,
    },
    /// The peer writes a whole descriptor.
    Desc {
        /// Which descriptor.
        desc: DescRef,
        /// Its addr.
        addr: Addr,
        /// Its len.
        len: Len,
        /// Its flags.
        flags: Flags,
    },
    /// The peer writes `used_event` (when it wants our completion doorbells).
    UsedEvent(Index16),
    /// The peer writes any aligned 8-byte word of its queue header.
    Word {
        /// Word number (reduced into the header).
        off: u16,
        /// Value.
        val: u64,
    },
    /// The peer makes one well-formed frame available (descriptor, ring entry, index).
    PeerSend {
        /// Frame length.
        len: Len,
        /// Where in the data area.
        at: u16,
    },
    /// `rx.poll()`.
    Poll,
    /// `rx.poll()` then `rx.complete()` of the frame.
    PollComplete,
    /// `rx.recv()` into a buffer of this many bytes.
    Recv(u16),
    /// `rx.publish()`.
    Publish,
    /// `rx.enable_notify()`.
    EnableNotify,
    /// `Queues::reset()` (the INIT -> READY step).
    Reset,
}

/// A section size and the steps.
#[derive(Arbitrary, Debug, Clone)]
pub struct Input {
    /// Use the larger section.
    pub larger: bool,
    /// The steps.
    pub ops: Vec<Op>,
}

/// What `poll` must return, read from the peer's memory by the protocol's rules.
pub fn reference_poll(
    peer: &Region<'_>,
    g: &Geometry,
    last_avail: u16,
) -> Result<Option<RxFrame>, ProtocolError> {
    let published = peer.load_u16(g.avail_idx())?;
    let pending = published.wrapping_sub(last_avail);
    if pending == 0 {
        return Ok(None);
    }
    if pending > g.qlen {
        return Err(ProtocolError::AvailIndexOutOfRange {
            last: last_avail,
            published,
        });
    }
    let id = peer.read_u16(g.avail_ring(last_avail % g.qlen))?;
    if id >= g.qlen {
        return Err(ProtocolError::DescriptorIndexOutOfRange {
            index: u32::from(id),
        });
    }
    let addr = peer.read_u64(g.desc(id))?;
    let len = peer.read_u32(g.desc(id) + 8)?;
    let flags = peer.read_u16(g.desc(id) + 12)?;
    if flags != 0 {
        return Err(ProtocolError::DescriptorFlags { index: id, flags });
    }
    let end = u128::from(addr) + u128::from(len);
    if addr < g.data_off() as u64 || end > g.section_size as u128 {
        return Err(ProtocolError::FrameOutOfBounds {
            index: id,
            addr,
            len,
        });
    }
    if len < MIN_FRAME {
        return Err(ProtocolError::RuntFrame { index: id, len });
    }
    Ok(Some(RxFrame {
        id,
        offset: addr as usize,
        len: len as usize,
    }))
}

fn check_frame(g: &Geometry, f: &RxFrame) {
    assert!(
        f.offset >= g.data_off(),
        "frame before the data area: {f:?}"
    );
    assert!(
        f.offset + f.len <= g.section_size,
        "frame past the section: {f:?}"
    );
    assert!(f.len >= MIN_FRAME as usize, "runt frame accepted: {f:?}");
    assert!(f.id < g.qlen, "descriptor outside the queue: {f:?}");
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
    // Our receive state, as the protocol defines it: frames consumed (= completed) and the
    // used index we published.
    let mut consumed = Wrapping(0u16);
    let mut published_used = Wrapping(0u16);
    let mut buf = vec![0u8; 2048];
    for op in &input.ops {
        match *op {
            Op::AvailIdx(i) => {
                let v = i.resolve(consumed.0);
                peer.store_u16(g.avail_idx(), v).unwrap();
            }
            Op::AvailEntry { slot, desc } => {
                let s = slot.resolve(consumed.0) % g.qlen;
                peer.write_u16(g.avail_ring(s), desc.resolve(&g)).unwrap();
            }
            Op::Desc {
                desc,
                addr,
                len,
                flags,
            } => {
                // Descriptors past the queue are not in the table; write the one it wraps to.
                let d = desc.resolve(&g) % g.qlen;
                peer.write_u64(g.desc(d), addr.resolve(&g)).unwrap();
                peer.write_u32(g.desc(d) + 8, len.resolve()).unwrap();
                peer.write_u16(g.desc(d) + 12, flags.resolve()).unwrap();
            }
            Op::UsedEvent(i) => {
                peer.write_u16(g.used_event(), i.resolve(published_used.0))
                    .unwrap();
            }
            Op::Word { off, val } => peer.write_u64(header_word(&g, off), val).unwrap(),
            Op::PeerSend { len, at } => {
                let idx = peer.load_u16(g.avail_idx()).unwrap();
                let id = idx % g.qlen;
                let len = (len.resolve().max(MIN_FRAME) as usize).min(g.data_size());
                let room = g.data_size() - len;
                let addr = g.data_off() + usize::from(at) % (room + 1);
                peer.write_u64(g.desc(id), addr as u64).unwrap();
                peer.write_u32(g.desc(id) + 8, len as u32).unwrap();
                peer.write_u16(g.desc(id) + 12, 0).unwrap();
                peer.write_u16(g.avail_ring(id), id).unwrap();
                peer.store_u16(g.avail_idx(), idx.wrapping_add(1)).unwrap();
            }
            Op::Poll | Op::PollComplete => {
                let want = reference_poll(&peer, &g, consumed.0);
                let got = seen(q.rx.poll());
                assert_eq!(got, want, "poll disagrees with the protocol's rules");
                if let Ok(Some(f)) = got {
                    check_frame(&g, &f);
                    if matches!(op, Op::PollComplete) {
                        q.rx.complete(f).expect("complete");
                        let slot = (consumed.0) % g.qlen;
                        assert_eq!(own.read_u32(g.used_ring(slot)).unwrap(), u32::from(f.id));
                        consumed += 1;
                    }
                }
            }
            Op::Recv(n) => {
                let want = reference_poll(&peer, &g, consumed.0);
                let n = usize::from(n).min(buf.len());
                let got = seen(q.rx.recv(&mut buf[..n]));
                match (want, got) {
                    (Ok(Some(f)), Ok(Some(len))) => {
                        check_frame(&g, &f);
                        assert_eq!(len, f.len);
                        if len <= n {
                            let mut direct = vec![0u8; len];
                            peer.read_bytes(f.offset, &mut direct).unwrap();
                            assert_eq!(&buf[..len], &direct[..], "frame bytes differ");
                        }
                        consumed += 1;
                    }
                    (Ok(None), Ok(None)) => {}
                    (Err(a), Err(b)) => assert_eq!(a, b),
                    (w, g) => panic!("recv {g:?} but the peer's memory says {w:?}"),
                }
            }
            Op::Publish => {
                let old = published_used.0;
                let event = peer.read_u16(g.used_event()).unwrap();
                let notify = seen(q.rx.publish()).expect("publish touches only our section");
                assert_eq!(own.load_u16(g.used_idx()).unwrap(), consumed.0);
                let moved = consumed.0 != old;
                assert_eq!(notify, moved && need_event(event, consumed.0, old));
                published_used = consumed;
            }
            Op::EnableNotify => {
                let pending = seen(q.rx.enable_notify()).expect("enable_notify");
                assert_eq!(own.read_u16(g.avail_event()).unwrap(), consumed.0);
                let published = peer.load_u16(g.avail_idx()).unwrap();
                assert_eq!(pending, published != consumed.0);
            }
            Op::Reset => {
                q.reset().expect("reset");
                consumed = Wrapping(0);
                published_used = Wrapping(0);
                assert_eq!(own.load_u16(g.used_idx()).unwrap(), 0);
            }
        }
    }
}
