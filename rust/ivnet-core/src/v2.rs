//! The shared memory of an ivshmem 2.0 link (Jailhouse, and the project's QEMU `ivshmem2`
//! device), as a peer that plays its own device sees it (the host peer; the server).
//!
//! | offset                         | size        | contents                                  |
//! |--------------------------------|-------------|-------------------------------------------|
//! | `4 * id`                       | u32         | peer `id`'s state (the state table)        |
//! | `state_size`                   | `rw_size`   | the R/W section (empty for ivshmem-net)    |
//! | `state_size + rw_size + i * out` | `out`     | output section of peer `i`                 |
//!
//! A guest reaches the memory through its device, which maps the state table and the other
//! peers' sections read-only and writes its state entry on a write of its STATE register; a
//! host peer maps the memory itself and does the same by hand. For ivshmem-net (two peers, a
//! 4 KiB state table, no R/W section) the sections sit where the v1 layout puts them
//! ([`crate::v1`]): 0x7f000 bytes at 0x1000 and 0x80000 for a 1 MiB window.

use crate::error::ProtocolError;
use crate::shm::{OutOfBounds, Region};
use crate::state::LinkState;

/// ivshmem 2.0 protocol number of ivshmem-net (class code sub-class:prog-if).
pub const PROTOCOL_NET: u32 = 0x0001;
/// Peers of an ivshmem-net link.
pub const PEERS: u32 = 2;
/// Doorbell vector for state changes (the device raises it on a peer's STATE change).
pub const VECTOR_STATE: u16 = 0;
/// Doorbell vector for data (frames available or completed).
pub const VECTOR_DATA: u16 = 1;

/// Size of the state table for `max_peers` peers: one u32 each, in whole 4 KiB pages.
pub const fn state_table_size(max_peers: u32) -> usize {
    let bytes = max_peers as usize * 4;
    (bytes + 0xfff) & !0xfff
}

/// Size of the memory a server hands out for an ivshmem-net link of output sections of
/// `out_size` bytes: the state table and the two sections (no R/W section).
pub const fn memory_size(out_size: usize) -> usize {
    state_table_size(PEERS) + PEERS as usize * out_size
}

/// Why memory cannot be an ivshmem 2.0 ivshmem-net link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutError {
    /// Own id not below the number of peers, or a link that is not point to point.
    Peers {
        /// Own id.
        id: u32,
        /// Peers of the link.
        max_peers: u32,
    },
    /// The memory cannot hold the state table and the output sections.
    TooSmall {
        /// Bytes of memory.
        size: usize,
        /// Output section size.
        out_size: usize,
    },
}

impl core::fmt::Display for LayoutError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LayoutError::Peers { id, max_peers } => write!(
                f,
                "ivshmem-net needs exactly {PEERS} peers and an id below that (id {id}, \
                 {max_peers} peers)"
            ),
            LayoutError::TooSmall { size, out_size } => write!(
                f,
                "{size:#x} bytes of memory cannot hold the state table and {PEERS} output \
                 sections of {out_size:#x}"
            ),
        }
    }
}

/// One peer's view of an ivshmem-net link's memory on ivshmem 2.0.
#[derive(Debug, Clone, Copy)]
pub struct V2Region<'a> {
    region: Region<'a>,
    id: u32,
    state_size: usize,
    rw_size: usize,
    out_size: usize,
}

impl<'a> V2Region<'a> {
    /// Peer `id`'s view of `region` (the whole memory) with `max_peers` peers and output
    /// sections of `out_size` bytes, as the server's INIT said.
    pub fn new(
        region: Region<'a>,
        id: u32,
        max_peers: u32,
        out_size: usize,
    ) -> Result<Self, LayoutError> {
        if max_peers != PEERS || id >= max_peers {
            return Err(LayoutError::Peers { id, max_peers });
        }
        let state_size = state_table_size(max_peers);
        let used = out_size
            .checked_mul(max_peers as usize)
            .and_then(|o| o.checked_add(state_size));
        let size = region.len();
        let rw_size = match used {
            Some(u) if u <= size && out_size > 0 => size - u,
            _ => return Err(LayoutError::TooSmall { size, out_size }),
        };
        Ok(V2Region {
            region,
            id,
            state_size,
            rw_size,
            out_size,
        })
    }

    /// Own id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The other peer's id.
    pub fn peer(&self) -> u32 {
        1 - self.id
    }

    /// The whole memory.
    pub fn region(&self) -> &Region<'a> {
        &self.region
    }

    /// Output section of peer `id`.
    pub fn section(&self, id: u32) -> Result<Region<'a>, OutOfBounds> {
        let at = self.state_size + self.rw_size + id as usize * self.out_size;
        self.region.sub(at, self.out_size)
    }

    /// The state-table entry of peer `id`.
    pub fn state(&self, id: u32) -> Result<u32, OutOfBounds> {
        if id >= PEERS {
            return Err(OutOfBounds {
                offset: 4 * id as usize,
                len: 4,
            });
        }
        self.region.load_u32(4 * id as usize)
    }

    /// Writes the own state-table entry (what the device does on a STATE write); says whether
    /// it changed (the device then raises vector 0 at the other peer: ring it).
    pub fn set_state(&self, v: u32) -> Result<bool, OutOfBounds> {
        let at = 4 * self.id as usize;
        let old = self.region.load_u32(at)?;
        self.region.store_u32(at, v)?;
        Ok(old != v)
    }

    /// The other peer's link state (RESET when it is gone: the server zeroed its entry).
    pub fn peer_state(&self) -> Result<LinkState, ProtocolError> {
        LinkState::from_raw(self.state(self.peer())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testmem::TestMem;

    #[test]
    fn jailhouse_layout() {
        let out = crate::v1::section_size(1 << 20);
        assert_eq!(memory_size(out), 0xff000);
        let m = TestMem::new(memory_size(out));
        let v = V2Region::new(m.region(), 1, 2, out).unwrap();
        assert_eq!(v.section(0).unwrap().len(), 0x7f000);
        // Same offsets as the v1 layout of a 1 MiB region.
        m.region().store_u32(0x80000, 0xabcd).unwrap();
        assert_eq!(v.section(1).unwrap().load_u32(0), Ok(0xabcd));
        m.region().store_u32(0x1000, 0x1234).unwrap();
        assert_eq!(v.section(0).unwrap().load_u32(0), Ok(0x1234));
    }

    #[test]
    fn state_entries() {
        let out = 0x7f000;
        let m = TestMem::new(memory_size(out));
        let a = V2Region::new(m.region(), 0, 2, out).unwrap();
        let b = V2Region::new(m.region(), 1, 2, out).unwrap();
        assert_eq!(a.peer_state(), Ok(LinkState::Reset));
        assert_eq!(b.set_state(2), Ok(true));
        assert_eq!(b.set_state(2), Ok(false), "unchanged: no doorbell");
        assert_eq!(a.peer_state(), Ok(LinkState::Ready));
        m.region().store_u32(4, 77).unwrap();
        assert_eq!(
            a.peer_state(),
            Err(ProtocolError::InvalidPeerState { raw: 77 })
        );
        assert!(a.state(2).is_err());
    }

    #[test]
    fn bad_geometry_is_refused() {
        let m = TestMem::new(0x10000);
        assert_eq!(
            V2Region::new(m.region(), 2, 2, 0x1000).unwrap_err(),
            LayoutError::Peers {
                id: 2,
                max_peers: 2
            }
        );
        assert!(V2Region::new(m.region(), 0, 3, 0x1000).is_err());
        assert!(matches!(
            V2Region::new(m.region(), 0, 2, 0x8000),
            Err(LayoutError::TooSmall { .. })
        ));
        assert!(V2Region::new(m.region(), 0, 2, usize::MAX / 2).is_err());
        assert!(V2Region::new(m.region(), 0, 2, 0).is_err());
        // Room left over: an R/W section before the outputs.
        let v = V2Region::new(m.region(), 0, 2, 0x4000).unwrap();
        assert_eq!(v.section(1).unwrap().len(), 0x4000);
    }
}
