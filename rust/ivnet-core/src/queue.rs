//! The two split virtqueues of one ivshmem-net link.
//!
//! Each peer lays a virtqueue at the start of its own output section for what it transmits and
//! reads the peer's section for what it receives. The two `used` rings are swapped so that each
//! side writes only its own section:
//!
//! | part                     | lives in      | written by | meaning                               |
//! |--------------------------|---------------|------------|---------------------------------------|
//! | desc, avail              | own section   | us         | frames we transmit                    |
//! | `used_event` (after avail)| own section  | us         | when we want TX-completion doorbells  |
//! | used                     | own section   | us         | completions of frames we received     |
//! | `avail_event` (after used)| own section  | us         | when we want RX doorbells             |
//! | desc, avail, used_event  | peer section  | peer       | frames the peer transmits             |
//! | used, avail_event        | peer section  | peer       | completions of our frames             |
//!
//! Descriptors hold `addr` = offset from the start of the sender's section, `len` = frame
//! length, `flags` = 0. Completions come strictly in order. Notification follows virtio's
//! event-index rule ([`need_event`]); a doorbell means "look again", never "one event".

use core::num::Wrapping;
use core::sync::atomic::{fence, Ordering};

use crate::error::ProtocolError;
use crate::geometry::{frame_slot_size, Geometry};
use crate::shm::Region;

/// Shortest frame accepted from a peer: an Ethernet header.
pub const MIN_FRAME: u32 = 14;

/// virtio's event-index test: should the side that moved an index from `old` to `new` notify a
/// peer that asked to be woken once the index passes `event`?
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// A frame the peer has made available to us, validated: `offset..offset + len` lies inside
/// the peer's data area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxFrame {
    /// Descriptor index (what the completion names).
    pub id: u16,
    /// Offset of the frame from the start of the peer's section.
    pub offset: usize,
    /// Frame length in bytes.
    pub len: usize,
}

/// A place in our data area reserved for one outgoing frame, not yet made available. Only
/// [`TxQueue::reserve`] makes one, and its fields can be read but not changed, so a slot handed
/// to [`TxQueue::push`] always names what was reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxSlot {
    id: u16,
    offset: usize,
    len: usize,
    size: usize,
}

impl TxSlot {
    /// Descriptor index it will use.
    pub fn id(&self) -> u16 {
        self.id
    }

    /// Offset of the frame from the start of our section.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Frame length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a slot of no bytes (never, from `reserve`).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The same slot holding only `len <= self.len` bytes (after filling it in place with a
    /// frame whose length was not known when it was reserved).
    pub fn shrink(self, len: usize) -> TxSlot {
        let len = len.min(self.len);
        TxSlot {
            len,
            size: frame_slot_size(len),
            ..self
        }
    }
}

/// Storage for the transmit queue's per-descriptor bookkeeping (one `u32` per queue entry):
/// any mutable slice of at least `qlen` entries, e.g. a `Vec<u32>` or a `&'static mut [u32]`.
/// Kept outside the queue so that the queue itself is small (no large stack temporaries in a
/// driver's init path).
pub trait SlotTable: AsRef<[u32]> + AsMut<[u32]> {}
impl<T: AsRef<[u32]> + AsMut<[u32]>> SlotTable for T {}

/// Our transmit queue: descriptors and avail ring in our section, the peer's used ring.
pub struct TxQueue<'a, S> {
    own: Region<'a>,
    peer: Region<'a>,
    g: Geometry,
    /// Frames added (next avail index to publish).
    added: Wrapping<u16>,
    /// Avail index last written to shared memory.
    published: Wrapping<u16>,
    /// Completions consumed.
    last_used: Wrapping<u16>,
    in_flight: u16,
    /// Data-area offsets (relative to the data area): next free byte, oldest used byte.
    head: usize,
    tail: usize,
    /// Start (relative to the data area) of the slot each in-flight descriptor uses.
    slot_start: S,
}

impl<'a, S: SlotTable> TxQueue<'a, S> {
    fn new(own: Region<'a>, peer: Region<'a>, g: Geometry, slot_start: S) -> Self {
        TxQueue {
            own,
            peer,
            g,
            added: Wrapping(0),
            published: Wrapping(0),
            last_used: Wrapping(0),
            in_flight: 0,
            head: 0,
            tail: 0,
            slot_start,
        }
    }

    fn reset_state(&mut self) {
        self.added = Wrapping(0);
        self.published = Wrapping(0);
        self.last_used = Wrapping(0);
        self.in_flight = 0;
        self.head = 0;
        self.tail = 0;
    }

    /// Frames handed to the peer and not yet completed.
    pub fn in_flight(&self) -> u16 {
        self.in_flight
    }

    /// Consumes the peer's completions, freeing descriptors and data-area space. Returns how
    /// many frames completed.
    pub fn reclaim(&mut self) -> Result<u16, ProtocolError> {
        let published = Wrapping(self.peer.load_u16(self.g.used_idx())?);
        let n = (published - self.last_used).0;
        if n > self.in_flight {
            return Err(ProtocolError::UsedIndexOutOfRange {
                last: self.last_used.0,
                published: published.0,
                in_flight: self.in_flight,
            });
        }
        let mask = self.g.qlen - 1;
        for _ in 0..n {
            let at = self.g.used_ring(self.last_used.0 & mask);
            let got = self.peer.read_u32(at)?;
            let expected = (self.added - Wrapping(self.in_flight)).0 & mask;
            if got != expected as u32 {
                return Err(ProtocolError::OutOfOrderCompletion { expected, got });
            }
            self.last_used += 1;
            self.in_flight -= 1;
            self.tail = if self.in_flight == 0 {
                self.head
            } else {
                self.slot_start.as_ref()[((expected + 1) & mask) as usize] as usize
            };
        }
        Ok(n)
    }

    /// Reserves room for a frame of `len` bytes, or `None` when the ring or the data area is
    /// full (reclaim, or wait for a completion doorbell, then try again). A frame shorter than
    /// [`MIN_FRAME`] never gets room: callers reject it first.
    pub fn reserve(&self, len: usize) -> Option<TxSlot> {
        // A frame shorter than an Ethernet header is a protocol error at the receiver (which
        // resets the link): never send one.
        if self.in_flight >= self.g.qlen || len < MIN_FRAME as usize {
            return None;
        }
        let size = frame_slot_size(len);
        let data = self.g.data_size();
        let start = if self.in_flight == 0 {
            // Empty: start over at the beginning of the data area.
            if size > data {
                return None;
            }
            0
        } else if self.head > self.tail {
            if size <= data - self.head {
                self.head
            } else if size <= self.tail {
                0
            } else {
                return None;
            }
        } else if self.head < self.tail && size <= self.tail - self.head {
            self.head
        } else {
            // head == tail with frames in flight: full.
            return None;
        };
        Some(TxSlot {
            id: self.added.0 & (self.g.qlen - 1),
            offset: self.g.data_off() + start,
            len,
            size,
        })
    }

    /// The shared memory of our section, to copy a reserved frame into
    /// (`slot.offset() .. slot.offset() + slot.len()`).
    pub fn region(&self) -> &Region<'a> {
        &self.own
    }

    /// Writes the descriptor and avail entry for a reserved slot whose bytes are in place. The
    /// peer sees it after [`TxQueue::publish`].
    pub fn push(&mut self, slot: TxSlot) -> Result<(), ProtocolError> {
        let d = self.g.desc(slot.id);
        self.own.write_u64(d, slot.offset as u64)?;
        self.own.write_u32(d + 8, slot.len as u32)?;
        self.own.write_u16(d + 12, 0)?;
        self.own.write_u16(d + 14, 0)?;
        let mask = self.g.qlen - 1;
        self.own
            .write_u16(self.g.avail_ring(self.added.0 & mask), slot.id)?;
        let rel = slot.offset - self.g.data_off();
        if self.in_flight == 0 {
            self.tail = rel;
        }
        self.slot_start.as_mut()[slot.id as usize] = rel as u32;
        self.head = rel + slot.size;
        self.added += 1;
        self.in_flight += 1;
        Ok(())
    }

    /// Copies `frame` into a fresh slot and pushes it; `Ok(false)` when there is no room.
    pub fn send(&mut self, frame: &[u8]) -> Result<bool, ProtocolError> {
        match self.reserve(frame.len()) {
            Some(slot) => {
                self.own.write_bytes(slot.offset, frame)?;
                self.push(slot)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Makes pushed frames visible to the peer. Returns true when the peer asked to be
    /// notified (ring its data vector).
    pub fn publish(&mut self) -> Result<bool, ProtocolError> {
        if self.published == self.added {
            return Ok(false);
        }
        let old = self.published.0;
        self.own.store_u16(self.g.avail_idx(), self.added.0)?;
        self.published = self.added;
        fence(Ordering::SeqCst);
        let event = self.peer.read_u16(self.g.avail_event())?;
        Ok(need_event(event, self.added.0, old))
    }

    /// Asks the peer for a doorbell once about half of what is in flight has completed (used
    /// when transmission stalls for lack of room). Re-check [`TxQueue::reclaim`] afterwards:
    /// completions may have landed before the request was visible.
    pub fn request_completion_notify(&self) -> Result<(), ProtocolError> {
        let at = self.last_used + Wrapping(self.in_flight / 2);
        self.own.write_u16(self.g.used_event(), at.0)?;
        fence(Ordering::SeqCst);
        Ok(())
    }
}

/// Our receive queue: the peer's descriptors and avail ring, our used ring.
pub struct RxQueue<'a> {
    own: Region<'a>,
    peer: Region<'a>,
    g: Geometry,
    last_avail: Wrapping<u16>,
    used: Wrapping<u16>,
    published: Wrapping<u16>,
}

impl<'a> RxQueue<'a> {
    fn new(own: Region<'a>, peer: Region<'a>, g: Geometry) -> Self {
        RxQueue {
            own,
            peer,
            g,
            last_avail: Wrapping(0),
            used: Wrapping(0),
            published: Wrapping(0),
        }
    }

    fn reset_state(&mut self) {
        self.last_avail = Wrapping(0);
        self.used = Wrapping(0);
        self.published = Wrapping(0);
    }

    /// The next frame the peer made available, validated, or `None`. The frame stays the
    /// peer's until [`RxQueue::complete`].
    pub fn poll(&self) -> Result<Option<RxFrame>, ProtocolError> {
        let published = Wrapping(self.peer.load_u16(self.g.avail_idx())?);
        let pending = (published - self.last_avail).0;
        if pending == 0 {
            return Ok(None);
        }
        if pending > self.g.qlen {
            return Err(ProtocolError::AvailIndexOutOfRange {
                last: self.last_avail.0,
                published: published.0,
            });
        }
        let mask = self.g.qlen - 1;
        let raw = self
            .peer
            .read_u16(self.g.avail_ring(self.last_avail.0 & mask))?;
        if raw >= self.g.qlen {
            return Err(ProtocolError::DescriptorIndexOutOfRange { index: raw as u32 });
        }
        let d = self.g.desc(raw);
        let addr = self.peer.read_u64(d)?;
        let len = self.peer.read_u32(d + 8)?;
        let flags = self.peer.read_u16(d + 12)?;
        if flags != 0 {
            return Err(ProtocolError::DescriptorFlags { index: raw, flags });
        }
        let start = self.g.data_off() as u64;
        let end = addr.checked_add(len as u64);
        if addr < start || end.map_or(true, |e| e > self.g.section_size as u64) {
            return Err(ProtocolError::FrameOutOfBounds {
                index: raw,
                addr,
                len,
            });
        }
        if len < MIN_FRAME {
            return Err(ProtocolError::RuntFrame { index: raw, len });
        }
        Ok(Some(RxFrame {
            id: raw,
            offset: addr as usize,
            len: len as usize,
        }))
    }

    /// The peer's section, to copy a polled frame out of
    /// (`frame.offset .. frame.offset + frame.len`).
    pub fn region(&self) -> &Region<'a> {
        &self.peer
    }

    /// Hands a polled frame back to the peer (visible after [`RxQueue::publish`]).
    pub fn complete(&mut self, frame: RxFrame) -> Result<(), ProtocolError> {
        let at = self.g.used_ring(self.used.0 & (self.g.qlen - 1));
        self.own.write_u32(at, frame.id as u32)?;
        self.own.write_u32(at + 4, 1)?;
        self.used += 1;
        self.last_avail += 1;
        Ok(())
    }

    /// Polls one frame, copies it into `buf` and completes it. Returns the frame length, or
    /// `None` when nothing is pending. A frame longer than `buf` is completed and reported as
    /// `Some(len)` with nothing copied, so the caller can count it as dropped.
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, ProtocolError> {
        let Some(f) = self.poll()? else {
            return Ok(None);
        };
        if f.len <= buf.len() {
            self.peer.read_bytes(f.offset, &mut buf[..f.len])?;
        }
        self.complete(f)?;
        Ok(Some(f.len))
    }

    /// Makes completions visible to the peer. Returns true when the peer asked to be notified.
    pub fn publish(&mut self) -> Result<bool, ProtocolError> {
        if self.published == self.used {
            return Ok(false);
        }
        let old = self.published.0;
        self.own.store_u16(self.g.used_idx(), self.used.0)?;
        self.published = self.used;
        fence(Ordering::SeqCst);
        let event = self.peer.read_u16(self.g.used_event())?;
        Ok(need_event(event, self.used.0, old))
    }

    /// Asks the peer for a doorbell on its next frame. Returns true when a frame is already
    /// pending (poll again instead of waiting).
    pub fn enable_notify(&self) -> Result<bool, ProtocolError> {
        self.own
            .store_u16(self.g.avail_event(), self.last_avail.0)?;
        fence(Ordering::SeqCst);
        let published = self.peer.load_u16(self.g.avail_idx())?;
        Ok(published != self.last_avail.0)
    }
}

/// Both queues of one link, over our output section and the peer's.
pub struct Queues<'a, S> {
    /// Frames we send.
    pub tx: TxQueue<'a, S>,
    /// Frames we receive.
    pub rx: RxQueue<'a>,
    own: Region<'a>,
    g: Geometry,
}

impl<'a, S: SlotTable> Queues<'a, S> {
    /// Builds the queues over two sections of equal size, with `slots` (at least
    /// [`Queues::slots_needed`] entries) for the transmit bookkeeping. Fails when the sections
    /// differ in size, cannot carry the protocol, or `slots` is too short.
    pub fn new(
        own: Region<'a>,
        peer: Region<'a>,
        slots: S,
    ) -> Result<Self, crate::geometry::GeometryError> {
        let g = Geometry::for_section(own.len())?;
        if peer.len() != own.len() {
            return Err(crate::geometry::GeometryError::SectionSizeMismatch {
                own: own.len(),
                peer: peer.len(),
            });
        }
        if slots.as_ref().len() < g.qlen as usize {
            return Err(crate::geometry::GeometryError::SlotTableTooSmall {
                need: g.qlen as usize,
                have: slots.as_ref().len(),
            });
        }
        Ok(Queues {
            tx: TxQueue::new(own, peer, g, slots),
            rx: RxQueue::new(own, peer, g),
            own,
            g,
        })
    }

    /// Entries of transmit bookkeeping a section of `section_size` bytes needs (its queue
    /// length), or 0 when the section cannot carry the protocol.
    pub fn slots_needed(section_size: usize) -> usize {
        Geometry::for_section(section_size).map_or(0, |g| g.qlen as usize)
    }

    /// The layout both queues use.
    pub fn geometry(&self) -> &Geometry {
        &self.g
    }

    /// Zeroes our virtqueue header and forgets all in-flight state (the INIT -> READY step).
    pub fn reset(&mut self) -> Result<(), ProtocolError> {
        self.own.zero(0, self.g.header_size)?;
        self.tx.reset_state();
        self.rx.reset_state();
        fence(Ordering::SeqCst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
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
}
