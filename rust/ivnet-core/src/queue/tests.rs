//! Unit tests of [`super`].

use super::*;
use crate::testmem::TestMem;
use std::vec;
use std::vec::Vec;

const SEC: usize = 0x7f000;

/// The two sections of a link.
struct Mems(TestMem, TestMem);

impl Mems {
    fn new(size: usize) -> Mems {
        Mems(TestMem::new(size), TestMem::new(size))
    }

    /// Both ends' queues over the sections, reset.
    fn pair(&self) -> Pair<'_> {
        let (a, b) = (&self.0, &self.1);
        let mut left = Queues::new(a.region(), b.region(), vec![0; 4096]).unwrap();
        let mut right = Queues::new(b.region(), a.region(), vec![0; 4096]).unwrap();
        left.reset().unwrap();
        right.reset().unwrap();
        Pair { left, right }
    }
}

struct Pair<'a> {
    left: Queues<'a, Vec<u32>>,
    right: Queues<'a, Vec<u32>>,
}

fn frame(n: usize, tag: u8) -> std::vec::Vec<u8> {
    (0..n).map(|i| tag.wrapping_add(i as u8)).collect()
}

#[test]
fn need_event_matches_virtio() {
    assert!(need_event(0, 1, 0));
    assert!(!need_event(5, 3, 0));
    assert!(need_event(5, 6, 0));
    assert!(!need_event(5, 6, 6));
    // Across the u16 wrap.
    assert!(need_event(0xffff, 1, 0xfffe));
    assert!(!need_event(2, 1, 0xfffe));
}

#[test]
fn frames_arrive_intact_and_in_order() {
    let mems = Mems::new(SEC);
    let mut p = mems.pair();
    for i in 0..10u8 {
        assert!(p.left.tx.send(&frame(60 + i as usize * 100, i)).unwrap());
    }
    assert!(p.left.tx.publish().unwrap(), "fresh peer wants a doorbell");
    let mut buf = [0u8; 2048];
    for i in 0..10u8 {
        let n = p.right.rx.recv(&mut buf).unwrap().unwrap();
        assert_eq!(&buf[..n], &frame(60 + i as usize * 100, i)[..]);
    }
    assert_eq!(p.right.rx.recv(&mut buf).unwrap(), None);
    p.right.rx.publish().unwrap();
    assert_eq!(p.left.tx.reclaim().unwrap(), 10);
    assert_eq!(p.left.tx.in_flight(), 0);
}

#[test]
fn indices_and_data_area_wrap_around() {
    // Small section: 64-entry queue, a data area of a few frames; push 200k frames of
    // varying size through it so both the u16 indices and the data area wrap many times.
    let mems = Mems::new(0x4000);
    let mut p = mems.pair();
    let mut buf = [0u8; 2048];
    let mut sent = 0u32;
    let mut got = 0u32;
    let mut seed = 1u32;
    while got < 200_000 {
        // Fill as far as room allows.
        loop {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let len = 14 + (seed >> 8) as usize % 1500;
            let f = frame(len, sent as u8);
            if !p.left.tx.send(&f).unwrap() {
                break;
            }
            sent += 1;
            if sent % 7 == 0 {
                break;
            }
        }
        p.left.tx.publish().unwrap();
        while let Some(n) = p.right.rx.recv(&mut buf).unwrap() {
            assert_eq!(buf[0], got as u8, "frame {got} out of order");
            assert_eq!(buf[n - 1], (got as u8).wrapping_add((n - 1) as u8));
            got += 1;
        }
        p.right.rx.publish().unwrap();
        p.left.tx.reclaim().unwrap();
    }
    assert_eq!(sent, got);
}

#[test]
fn ring_full_then_space_after_completion() {
    let mems = Mems::new(SEC);
    let mut p = mems.pair();
    let qlen = p.left.geometry().qlen as u32;
    let mut n = 0;
    while p.left.tx.send(&[1u8; 60]).unwrap() {
        n += 1;
    }
    assert_eq!(n, qlen, "a ring of small frames fills at qlen");
    assert!(p.left.tx.reserve(60).is_none());
    p.left.tx.publish().unwrap();
    let mut buf = [0u8; 64];
    p.right.rx.recv(&mut buf).unwrap().unwrap();
    p.right.rx.publish().unwrap();
    assert_eq!(p.left.tx.reclaim().unwrap(), 1);
    assert!(p.left.tx.send(&[2u8; 60]).unwrap());
}

#[test]
fn runt_frames_get_no_room() {
    let mems = Mems::new(SEC);
    let p = mems.pair();
    // The receiver resets the link on a frame shorter than an Ethernet header.
    assert!(p.left.tx.reserve(0).is_none());
    assert!(p.left.tx.reserve(MIN_FRAME as usize - 1).is_none());
    assert!(p.left.tx.reserve(MIN_FRAME as usize).is_some());
}

#[test]
fn data_area_full_with_large_frames() {
    let mems = Mems::new(SEC);
    let mut p = mems.pair();
    let data = p.left.geometry().data_size();
    let mut n = 0;
    while p.left.tx.send(&[1u8; 1514]).unwrap() {
        n += 1;
    }
    assert_eq!(n, data / frame_slot_size(1514));
}

#[test]
fn notification_suppression() {
    let mems = Mems::new(SEC);
    let mut p = mems.pair();
    // The receiver asks for a doorbell on the next frame only.
    assert!(!p.right.rx.enable_notify().unwrap());
    p.left.tx.send(&[0; 60]).unwrap();
    assert!(p.left.tx.publish().unwrap());
    p.left.tx.send(&[0; 60]).unwrap();
    assert!(
        !p.left.tx.publish().unwrap(),
        "the receiver has not re-armed: no second doorbell"
    );
    let mut buf = [0u8; 64];
    while p.right.rx.recv(&mut buf).unwrap().is_some() {}
    // used_event is still 0 from the reset: the first completions cross it.
    assert!(p.right.rx.publish().unwrap());
    assert!(!p.right.rx.enable_notify().unwrap());
    p.left.tx.send(&[0; 60]).unwrap();
    assert!(p.left.tx.publish().unwrap());
    // Completion doorbells only when requested.
    p.right.rx.recv(&mut buf).unwrap();
    let wanted = p.right.rx.publish().unwrap();
    assert!(!wanted, "the sender did not ask for completion doorbells");
    p.left.tx.reclaim().unwrap();
    for _ in 0..4 {
        p.left.tx.send(&[0; 60]).unwrap();
    }
    p.left.tx.publish().unwrap();
    p.left.tx.request_completion_notify().unwrap();
    for _ in 0..4 {
        p.right.rx.recv(&mut buf).unwrap().unwrap();
    }
    assert!(p.right.rx.publish().unwrap());
}

#[test]
fn reset_forgets_everything() {
    let mems = Mems::new(SEC);
    let mut p = mems.pair();
    p.left.tx.send(&[0; 60]).unwrap();
    p.left.tx.publish().unwrap();
    p.left.reset().unwrap();
    p.right.reset().unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(p.right.rx.recv(&mut buf).unwrap(), None);
    assert_eq!(p.left.tx.in_flight(), 0);
    assert_eq!(p.left.tx.reclaim().unwrap(), 0);
}

/// Raw pokes into the sending side's section, as a misbehaving peer would make them.
fn poke16(q: &Queues<Vec<u32>>, off: usize, v: u16) {
    q.own.write_u16(off, v).unwrap();
}

#[test]
fn invalid_avail_index() {
    let mems = Mems::new(SEC);
    let p = mems.pair();
    let g = *p.left.geometry();
    poke16(&p.left, g.avail_idx(), g.qlen + 1);
    assert_eq!(
        p.right.rx.poll(),
        Err(ProtocolError::AvailIndexOutOfRange {
            last: 0,
            published: g.qlen + 1
        })
    );
}

#[test]
fn invalid_descriptor_index() {
    let mems = Mems::new(SEC);
    let p = mems.pair();
    let g = *p.left.geometry();
    poke16(&p.left, g.avail_ring(0), g.qlen);
    poke16(&p.left, g.avail_idx(), 1);
    assert_eq!(
        p.right.rx.poll(),
        Err(ProtocolError::DescriptorIndexOutOfRange {
            index: g.qlen as u32
        })
    );
}

fn bad_desc(addr: u64, len: u32, flags: u16) -> Result<Option<RxFrame>, ProtocolError> {
    let mems = Mems::new(SEC);
    let p = mems.pair();
    let g = *p.left.geometry();
    let r = p.left.own;
    r.write_u64(g.desc(5), addr).unwrap();
    r.write_u32(g.desc(5) + 8, len).unwrap();
    r.write_u16(g.desc(5) + 12, flags).unwrap();
    r.write_u16(g.avail_ring(0), 5).unwrap();
    r.store_u16(g.avail_idx(), 1).unwrap();
    p.right.rx.poll()
}

#[test]
fn invalid_descriptors() {
    let g = Geometry::for_section(SEC).unwrap();
    let d = g.data_off() as u64;
    assert!(matches!(bad_desc(d, 60, 0), Ok(Some(_))));
    assert_eq!(
        bad_desc(d, 60, 1),
        Err(ProtocolError::DescriptorFlags { index: 5, flags: 1 })
    );
    // Inside the header.
    assert!(matches!(
        bad_desc(0, 60, 0),
        Err(ProtocolError::FrameOutOfBounds { .. })
    ));
    // Past the end, and overflowing arithmetic.
    assert!(matches!(
        bad_desc(SEC as u64 - 10, 60, 0),
        Err(ProtocolError::FrameOutOfBounds { .. })
    ));
    assert!(matches!(
        bad_desc(u64::MAX - 4, 60, 0),
        Err(ProtocolError::FrameOutOfBounds { .. })
    ));
    assert!(matches!(
        bad_desc(d, u32::MAX, 0),
        Err(ProtocolError::FrameOutOfBounds { .. })
    ));
    assert_eq!(
        bad_desc(d, 3, 0),
        Err(ProtocolError::RuntFrame { index: 5, len: 3 })
    );
    // A frame ending exactly at the end of the section is fine.
    assert!(matches!(bad_desc(SEC as u64 - 60, 60, 0), Ok(Some(_))));
}

#[test]
fn invalid_used_index_and_out_of_order_completion() {
    let mems = Mems::new(SEC);
    let mut p = mems.pair();
    let g = *p.left.geometry();
    p.left.tx.send(&[0; 60]).unwrap();
    p.left.tx.send(&[0; 60]).unwrap();
    p.left.tx.publish().unwrap();
    // The peer claims three completions with two in flight.
    p.right.own.store_u16(g.used_idx(), 3).unwrap();
    assert_eq!(
        p.left.tx.reclaim(),
        Err(ProtocolError::UsedIndexOutOfRange {
            last: 0,
            published: 3,
            in_flight: 2
        })
    );
    // The peer completes descriptor 1 before descriptor 0.
    p.right.own.write_u32(g.used_ring(0), 1).unwrap();
    p.right.own.store_u16(g.used_idx(), 1).unwrap();
    assert_eq!(
        p.left.tx.reclaim(),
        Err(ProtocolError::OutOfOrderCompletion {
            expected: 0,
            got: 1
        })
    );
}

#[test]
fn oversized_frame_is_completed_not_copied() {
    let mems = Mems::new(SEC);
    let mut p = mems.pair();
    p.left.tx.send(&[7; 1000]).unwrap();
    p.left.tx.publish().unwrap();
    let mut small = [0u8; 100];
    assert_eq!(p.right.rx.recv(&mut small).unwrap(), Some(1000));
    assert_eq!(small, [0u8; 100]);
    p.right.rx.publish().unwrap();
    assert_eq!(p.left.tx.reclaim().unwrap(), 1);
}

#[test]
fn mismatched_sections_are_refused() {
    let (a, b) = (TestMem::new(SEC), TestMem::new(0x3f000));
    assert!(Queues::new(a.region(), b.region(), vec![0; 4096]).is_err());
    let b = TestMem::new(SEC);
    assert_eq!(
        Queues::new(a.region(), b.region(), vec![0; 100]).err(),
        Some(crate::geometry::GeometryError::SlotTableTooSmall {
            need: 2048,
            have: 100
        })
    );
}
