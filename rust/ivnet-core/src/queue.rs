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
mod tests;
