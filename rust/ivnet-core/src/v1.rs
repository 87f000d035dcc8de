//! The flat shared region of an ivshmem v1 (upstream QEMU ivshmem-doorbell) link.
//!
//! ivshmem v1 has no state table and no per-peer output sections, so the server (which plays
//! the hypervisor's part) and the two peers agree on this layout of the one region:
//!
//! | offset                    | size            | contents                                   |
//! |---------------------------|-----------------|--------------------------------------------|
//! | `0x000 + 4 * slot`        | u32             | the slot's state word, written by its owner|
//! | `0x800 + 4 * slot`        | u32             | the slot's owner: ivshmem id + 1 (0 free), written by the server only |
//! | `0x1000`                  | `section`       | output section of slot 0                   |
//! | `0x1000 + section`        | `section`       | output section of slot 1                   |
//!
//! with `section = ((size - 4 KiB) / 2)` rounded down to a multiple of 4 KiB. A 1 MiB region
//! gives exactly Jailhouse's ivshmem-net layout (0x7f000 at 0x1000 and at 0x80000).
//!
//! Peer ids only grow (QEMU crashes when an id comes back), so a peer's slot is not its id: a
//! peer finds its slot by looking its id up in the owner table.

use crate::error::ProtocolError;
use crate::geometry::{Geometry, GeometryError};
use crate::shm::{OutOfBounds, Region};
use crate::state::LinkState;

/// Size of the control page at the start of the region.
pub const CONTROL_SIZE: usize = 0x1000;
/// Offset of the state words.
pub const STATE_OFF: usize = 0x000;
/// Offset of the owner table.
pub const OWNER_OFF: usize = 0x800;
/// Number of slots (ivshmem-net links are point to point).
pub const SLOTS: usize = 2;
/// Doorbell vector for state changes.
pub const VECTOR_STATE: u16 = 0;
/// Doorbell vector for data (frames available or completed).
pub const VECTOR_DATA: u16 = 1;

/// Why a region cannot be used as a v1 ivshmem-net link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutError {
    /// QEMU's ivshmem BAR must be a power of two.
    NotPowerOfTwo {
        /// The size offered.
        size: usize,
    },
    /// The sections the region yields cannot carry the protocol.
    Geometry(GeometryError),
}

impl core::fmt::Display for LayoutError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LayoutError::NotPowerOfTwo { size } => {
                write!(f, "shared memory size {size} is not a power of two")
            }
            LayoutError::Geometry(GeometryError::SectionTooSmall { .. }) => write!(
                f,
                "shared memory is too small for ivshmem-net (need at least {} bytes)",
                min_region_size()
            ),
            LayoutError::Geometry(g) => g.fmt(f),
        }
    }
}

/// Size of each slot's output section in a region of `size` bytes.
pub const fn section_size(size: usize) -> usize {
    (size.saturating_sub(CONTROL_SIZE) / 2) & !0xfff
}

/// Offset of slot `slot`'s output section.
pub const fn section_offset(size: usize, slot: usize) -> usize {
    CONTROL_SIZE + slot * section_size(size)
}

/// The owner word for `id` in `slot` (id + 1; 0 for none), refusing the one id that would wrap.
fn owner_word(slot: usize, id: Option<u32>) -> Result<u32, OutOfBounds> {
    match id {
        None => Ok(0),
        Some(i) => i.checked_add(1).ok_or(OutOfBounds {
            offset: OWNER_OFF + 4 * slot,
            len: 4,
        }),
    }
}

/// Smallest power-of-two region that carries the protocol.
pub fn min_region_size() -> usize {
    let mut s = CONTROL_SIZE * 2;
    while Geometry::for_section(section_size(s)).is_err() {
        s *= 2;
    }
    s
}

/// Checks that a region of `size` bytes can be a v1 link and returns its section geometry.
pub fn check_size(size: usize) -> Result<Geometry, LayoutError> {
    if !size.is_power_of_two() {
        return Err(LayoutError::NotPowerOfTwo { size });
    }
    Geometry::for_section(section_size(size)).map_err(LayoutError::Geometry)
}

/// The control page and the two sections of one v1 region.
#[derive(Debug, Clone, Copy)]
pub struct V1Region<'a> {
    region: Region<'a>,
}

impl<'a> V1Region<'a> {
    /// Wraps a whole ivshmem v1 region, checking its size.
    pub fn new(region: Region<'a>) -> Result<Self, LayoutError> {
        check_size(region.len())?;
        Ok(V1Region { region })
    }

    /// The whole region.
    pub fn region(&self) -> &Region<'a> {
        &self.region
    }

    /// Output section of `slot` (0 or 1).
    pub fn section(&self, slot: usize) -> Result<Region<'a>, OutOfBounds> {
        let s = section_size(self.region.len());
        self.region.sub(section_offset(self.region.len(), slot), s)
    }

    /// The raw state word of `slot`.
    pub fn state(&self, slot: usize) -> Result<u32, OutOfBounds> {
        self.region.load_u32(STATE_OFF + 4 * slot)
    }

    /// Publishes the state word of `slot` (only the slot's owner does this).
    pub fn set_state(&self, slot: usize, v: u32) -> Result<(), OutOfBounds> {
        self.region.store_u32(STATE_OFF + 4 * slot, v)
    }

    /// The owner word of `slot`: `Some(id)` for ivshmem id `id`, `None` when free.
    pub fn owner(&self, slot: usize) -> Result<Option<u32>, OutOfBounds> {
        let raw = self.region.load_u32(OWNER_OFF + 4 * slot)?;
        Ok(raw.checked_sub(1))
    }

    /// Records the owner of `slot` (server only): zeroes its state word first. Ids go up to
    /// `u32::MAX - 1` (the word holds id + 1; 0 is "free"): `u32::MAX` is refused.
    pub fn set_owner(&self, slot: usize, id: Option<u32>) -> Result<(), OutOfBounds> {
        let raw = owner_word(slot, id)?;
        self.set_state(slot, 0)?;
        self.region.store_u32(OWNER_OFF + 4 * slot, raw)
    }

    /// Rewrites the owner word of `slot` alone, leaving its state word (server only: repairs
    /// an owner table that a peer overwrote).
    pub fn set_owner_word(&self, slot: usize, id: Option<u32>) -> Result<(), OutOfBounds> {
        let raw = owner_word(slot, id)?;
        self.region.store_u32(OWNER_OFF + 4 * slot, raw)
    }

    /// The link state of the peer of `slot` (the other slot): RESET when that slot has no
    /// owner (the peer left, and the server zeroed it), else its state word, validated.
    pub fn peer_state(&self, slot: usize) -> Result<LinkState, ProtocolError> {
        if slot >= SLOTS {
            return Err(OutOfBounds {
                offset: STATE_OFF + 4 * slot,
                len: 4,
            }
            .into());
        }
        let other = slot ^ 1;
        if self.owner(other)?.is_none() {
            return Ok(LinkState::Reset);
        }
        LinkState::from_raw(self.state(other)?)
    }

    /// The slot whose owner is ivshmem id `id`, if exactly one is.
    pub fn slot_of(&self, id: u32) -> Result<Option<usize>, OutOfBounds> {
        let mut found = None;
        for s in 0..SLOTS {
            if self.owner(s)? == Some(id) {
                if found.is_some() {
                    return Ok(None);
                }
                found = Some(s);
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testmem::TestMem;

    #[test]
    fn one_mib_is_the_jailhouse_layout() {
        assert_eq!(section_size(1 << 20), 0x7f000);
        assert_eq!(section_offset(1 << 20, 0), 0x1000);
        assert_eq!(section_offset(1 << 20, 1), 0x80000);
        assert_eq!(check_size(1 << 20).unwrap().qlen, 2048);
    }

    #[test]
    fn sizes_are_checked() {
        assert_eq!(
            check_size(3 << 20),
            Err(LayoutError::NotPowerOfTwo { size: 3 << 20 })
        );
        assert!(matches!(check_size(0x2000), Err(LayoutError::Geometry(_))));
        let min = min_region_size();
        assert!(check_size(min).is_ok());
        assert!(check_size(min / 2).is_err());
        assert_eq!(min, 0x10000);
    }

    #[test]
    fn owner_table_and_state_words() {
        let m = TestMem::new(1 << 20);
        let v = V1Region::new(m.region()).unwrap();
        assert_eq!(v.owner(0).unwrap(), None);
        v.set_state(1, 3).unwrap();
        v.set_owner(1, Some(0)).unwrap();
        assert_eq!(v.owner(1).unwrap(), Some(0));
        assert_eq!(v.state(1).unwrap(), 0, "set_owner zeroes the state word");
        assert_eq!(v.slot_of(0).unwrap(), Some(1));
        assert_eq!(v.slot_of(7).unwrap(), None);
        v.set_owner(0, Some(0)).unwrap();
        assert_eq!(
            v.slot_of(0).unwrap(),
            None,
            "an id owning two slots is no answer"
        );
        assert_eq!(v.section(1).unwrap().len(), 0x7f000);
    }

    #[test]
    fn peer_state_follows_owner_and_state_word() {
        let m = TestMem::new(1 << 20);
        let v = V1Region::new(m.region()).unwrap();
        v.set_state(1, 3).unwrap();
        assert_eq!(v.peer_state(0), Ok(LinkState::Reset), "no owner: RESET");
        v.set_owner(1, Some(4)).unwrap();
        v.set_state(1, 2).unwrap();
        assert_eq!(v.peer_state(0), Ok(LinkState::Ready));
        v.set_state(1, 9).unwrap();
        assert_eq!(
            v.peer_state(0),
            Err(ProtocolError::InvalidPeerState { raw: 9 })
        );
    }
}
