//! Counting a cell<->cell link from the host, which is not on its data path but owns its
//! shared memory: a read-only look at each end's transmit queue (the avail ring's index and
//! the lengths of the descriptors it publishes) and at the control page's state words.
//!
//! Everything read was written by the cells, so it is treated as untrusted: indices are taken
//! modulo the queue length, descriptor indices and lengths are checked, and a region that does
//! not parse yields no counts rather than an error. Sampled often enough (the supervisor does
//! every 20 ms) the counts are exact as long as fewer than `qlen` frames pass between samples;
//! beyond that, frames are still counted but only the last `qlen` frames' bytes are.

use std::io;
use std::os::fd::AsFd;

use ivnet_core::geometry::Geometry;
use ivnet_core::v1::{self, V1Region};
use ivnet_core::v2::V2Region;

use crate::device::Frame;
use crate::mapping::Mapping;

/// What one end sent into the link, as seen from the host.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Direction {
    /// Frames the end published.
    pub frames: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// The counts of one link, by slot (the slot's owner sends, the other end receives).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Per slot.
    pub sent: [Direction; 2],
    /// State word changes seen (either slot).
    pub state_changes: u64,
    /// The last state words seen.
    pub states: [u32; 2],
    /// The slots' owners (ivshmem ids), if any.
    pub owners: [Option<u32>; 2],
    /// The source MAC of the first frame each slot's current owner sent: who that end is.
    pub src_macs: [Option<[u8; 6]>; 2],
}

/// A read-only observer of one link's memory (v1 region or ivshmem 2.0).
pub struct LinkObserver {
    map: Mapping,
    last_idx: [Option<u16>; 2],
    /// Counted so far.
    pub counts: Counts,
}

impl LinkObserver {
    /// Maps the region of `fd` (`size` bytes) a second time, for reading.
    pub fn new(fd: &impl AsFd, size: usize) -> io::Result<LinkObserver> {
        let map = Mapping::new(fd, size)?;
        Ok(LinkObserver {
            map,
            last_idx: [None; 2],
            counts: Counts::default(),
        })
    }

    /// Takes one sample: new frames and bytes per slot, state changes.
    pub fn sample(&mut self) {
        self.sample_with(|_, _| {});
    }

    /// As [`LinkObserver::sample`], handing each frame published since the last sample to
    /// `each` with the slot that sent it, in place (see [`Frame`]). A sampled view: a frame
    /// that was published, consumed and its buffer reused between two samples is seen with
    /// what its buffer holds now, and a slot that published more than its queue holds between
    /// two samples has its oldest frames skipped.
    pub fn sample_with(&mut self, mut each: impl FnMut(usize, &Frame<'_>)) {
        // A v1 region (a power of two with the owner table), or ivshmem 2.0 memory (the state
        // table and two sections: no owners; a restarted end shows as its queue reset).
        let region = self.map.region();
        let v1 = V1Region::new(region).ok();
        let v2 = match v1 {
            Some(_) => None,
            None => V2Region::new(region, 0, 2, v1::section_size(region.len())).ok(),
        };
        if v1.is_none() && v2.is_none() {
            return;
        }
        for slot in 0..2 {
            let owner = v1.and_then(|v| v.owner(slot).ok().flatten());
            if owner != self.counts.owners[slot] {
                // A new peer in the slot starts its queue from zero.
                self.counts.owners[slot] = owner;
                self.counts.src_macs[slot] = None;
                self.last_idx[slot] = None;
            }
            let st = match (&v1, &v2) {
                (Some(v), _) => v.state(slot),
                (None, Some(v)) => v.state(slot as u32),
                (None, None) => continue,
            };
            if let Ok(st) = st {
                if st != self.counts.states[slot] {
                    self.counts.states[slot] = st;
                    self.counts.state_changes += 1;
                }
            }
            let sec = match (&v1, &v2) {
                (Some(v), _) => v.section(slot),
                (None, Some(v)) => v.section(slot as u32),
                (None, None) => continue,
            };
            let Ok(sec) = sec else { continue };
            let Ok(g) = Geometry::for_section(sec.len()) else {
                continue;
            };
            let Ok(idx) = sec.load_u16(g.avail_idx()) else {
                continue;
            };
            let Some(last) = self.last_idx[slot] else {
                self.last_idx[slot] = Some(idx);
                continue;
            };
            let new = idx.wrapping_sub(last);
            if new == 0 {
                continue;
            }
            if new > 0x8000 {
                // Went backwards: the end reset its queue.
                self.last_idx[slot] = Some(idx);
                continue;
            }
            let d = &mut self.counts.sent[slot];
            d.frames += u64::from(new);
            let first = new.saturating_sub(g.qlen);
            for k in first..new {
                let ring_slot = last.wrapping_add(k) % g.qlen;
                let Ok(desc) = sec.load_u16(g.avail_ring(ring_slot)) else {
                    continue;
                };
                if desc >= g.qlen {
                    continue;
                }
                let (Ok(addr), Ok(len)) =
                    (sec.read_u64(g.desc(desc)), sec.read_u32(g.desc(desc) + 8))
                else {
                    continue;
                };
                if len as usize > g.data_size() {
                    continue;
                }
                d.bytes += u64::from(len);
                if let Ok(f) = usize::try_from(addr)
                    .map_err(|_| ())
                    .and_then(|a| Frame::in_region(&sec, a, len as usize).map_err(|_| ()))
                {
                    each(slot, &f);
                }
                if self.counts.src_macs[slot].is_none() && len >= 12 {
                    // The Ethernet source address, at 6..12 of the frame (bounds-checked read).
                    let mut mac = [0u8; 6];
                    if let Some(at) = usize::try_from(addr).ok().and_then(|a| a.checked_add(6)) {
                        if sec.read_bytes(at, &mut mac).is_ok() {
                            self.counts.src_macs[slot] = Some(mac);
                        }
                    }
                }
            }
            self.last_idx[slot] = Some(idx);
        }
    }
}
