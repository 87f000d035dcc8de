//! Section geometry: where the virtqueue parts and the frame data area sit inside one output
//! section, and how long the queue is. These are pure functions of the section size, computed
//! exactly as Linux ivshmem-net and Zephyr's eth_ivshmem compute them, so that any two peers
//! that agree on the section size agree on everything else.
//!
//! ```
//! use ivnet_core::geometry::Geometry;
//! let g = Geometry::for_section(0x7f000).unwrap();
//! assert_eq!((g.qlen, g.avail_off, g.used_off, g.header_size), (2048, 0x8000, 0x9040, 0xD080));
//! ```

/// Alignment of the virtqueue parts (the `vring` alignment both drivers use).
pub const VRING_ALIGN: usize = 64;
/// Largest queue length the protocol chooses.
pub const MAX_QLEN: u16 = 4096;
/// Smallest queue length the protocol accepts.
pub const MIN_QLEN: u16 = 64;
/// Size of one descriptor: `addr: u64, len: u32, flags: u16, next: u16`.
pub const DESC_SIZE: usize = 16;
/// Size of one used-ring element: `id: u32, len: u32`.
pub const USED_ELEM_SIZE: usize = 8;
/// Cache line used to align frame slots in the data area.
pub const FRAME_ALIGN: usize = 64;
/// Smallest data area the geometry accepts: room for two maximum-size frames (1518 bytes
/// plus slot overhead), the minimum Linux ivshmem-net needs to keep transmitting.
pub const MIN_DATA_SIZE: usize = 2 * frame_slot_size(1518);

/// Why a section size cannot carry the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GeometryError {
    /// The section is too small for even the shortest queue plus two frames.
    SectionTooSmall {
        /// The size that was offered.
        size: usize,
    },
    /// Our section and the peer's differ in size.
    SectionSizeMismatch {
        /// Our section's size.
        own: usize,
        /// The peer's section's size.
        peer: usize,
    },
    /// The transmit bookkeeping table offered is shorter than the queue.
    SlotTableTooSmall {
        /// Entries needed (the queue length).
        need: usize,
        /// Entries offered.
        have: usize,
    },
    /// The section is larger than a 32-bit descriptor offset scheme supports here.
    SectionTooLarge {
        /// The size that was offered.
        size: usize,
    },
}

impl core::fmt::Display for GeometryError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            GeometryError::SectionTooSmall { size } => write!(
                f,
                "output section of {size} bytes is too small for an ivshmem-net queue and two frames"
            ),
            GeometryError::SectionSizeMismatch { own, peer } => {
                write!(f, "own output section has {own} bytes but the peer's has {peer}")
            }
            GeometryError::SlotTableTooSmall { need, have } => {
                write!(f, "transmit table has {have} entries, the queue needs {need}")
            }
            GeometryError::SectionTooLarge { size } => {
                write!(f, "output section of {size} bytes is larger than 4 GiB")
            }
        }
    }
}

/// `x` rounded up to a multiple of `a` (a power of two).
pub const fn align_up(x: usize, a: usize) -> usize {
    (x + a - 1) & !(a - 1)
}

/// Bytes taken by a split virtqueue of `qlen` entries with alignment `align`, as Linux's
/// `vring_size()` computes it: descriptors and avail ring (with `used_event`), padded to
/// `align`, then the used ring (with `avail_event`).
pub const fn vring_size(qlen: usize, align: usize) -> usize {
    align_up(DESC_SIZE * qlen + 2 * (3 + qlen), align) + 6 + USED_ELEM_SIZE * qlen
}

/// Size of the data-area slot a frame of `len` bytes occupies (the convention both known
/// senders use; receivers must not rely on it).
pub const fn frame_slot_size(len: usize) -> usize {
    align_up(18 + len, FRAME_ALIGN)
}

/// The layout of one output section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Size of the whole output section in bytes.
    pub section_size: usize,
    /// Number of queue entries (a power of two, 64..=4096).
    pub qlen: u16,
    /// Offset of the descriptor table (always 0).
    pub desc_off: usize,
    /// Offset of the avail ring.
    pub avail_off: usize,
    /// Offset of the used ring.
    pub used_off: usize,
    /// Size of the virtqueue header; the data area starts here.
    pub header_size: usize,
}

impl Geometry {
    /// Computes the layout for an output section of `section_size` bytes: the queue length is
    /// the largest of 4096, 2048, ..., 64 whose aligned vring size is below an eighth of the
    /// section.
    pub fn for_section(section_size: usize) -> Result<Geometry, GeometryError> {
        if section_size > u32::MAX as usize {
            return Err(GeometryError::SectionTooLarge { size: section_size });
        }
        let mut q = MAX_QLEN as usize;
        while q >= MIN_QLEN as usize {
            let hdr = align_up(vring_size(q, VRING_ALIGN), VRING_ALIGN);
            if hdr < section_size / 8 {
                if section_size - hdr < MIN_DATA_SIZE {
                    break;
                }
                return Ok(Geometry {
                    section_size,
                    qlen: q as u16,
                    desc_off: 0,
                    avail_off: DESC_SIZE * q,
                    used_off: align_up(DESC_SIZE * q + 2 * (3 + q), VRING_ALIGN),
                    header_size: hdr,
                });
            }
            q /= 2;
        }
        Err(GeometryError::SectionTooSmall { size: section_size })
    }

    /// Offset of the frame data area (equal to the header size).
    pub fn data_off(&self) -> usize {
        self.header_size
    }

    /// Size of the frame data area in bytes.
    pub fn data_size(&self) -> usize {
        self.section_size - self.header_size
    }

    /// Offset of descriptor `i`.
    pub fn desc(&self, i: u16) -> usize {
        self.desc_off + DESC_SIZE * i as usize
    }

    /// Offset of the avail ring's `idx` field.
    pub fn avail_idx(&self) -> usize {
        self.avail_off + 2
    }

    /// Offset of avail ring entry `slot` (already reduced modulo `qlen`).
    pub fn avail_ring(&self, slot: u16) -> usize {
        self.avail_off + 4 + 2 * slot as usize
    }

    /// Offset of `used_event`, the field after the avail ring.
    pub fn used_event(&self) -> usize {
        self.avail_off + 4 + 2 * self.qlen as usize
    }

    /// Offset of the used ring's `idx` field.
    pub fn used_idx(&self) -> usize {
        self.used_off + 2
    }

    /// Offset of used ring element `slot` (already reduced modulo `qlen`).
    pub fn used_ring(&self, slot: u16) -> usize {
        self.used_off + 4 + USED_ELEM_SIZE * slot as usize
    }

    /// Offset of `avail_event`, the field after the used ring.
    pub fn avail_event(&self) -> usize {
        self.used_off + 4 + USED_ELEM_SIZE * self.qlen as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jailhouse_net_section() {
        let g = Geometry::for_section(0x7f000).unwrap();
        assert_eq!(g.qlen, 2048);
        assert_eq!(g.desc_off, 0);
        assert_eq!(g.avail_off, 0x8000);
        assert_eq!(g.used_off, 0x9040);
        assert_eq!(g.header_size, 0xD080);
        assert_eq!(g.data_size(), 0x71F80);
        assert_eq!(g.used_event(), 0x8000 + 4 + 2 * 2048);
        assert_eq!(g.avail_event(), 0x9040 + 4 + 8 * 2048);
        assert!(g.avail_event() + 2 <= g.header_size);
    }

    #[test]
    fn vring_size_matches_linux_formula() {
        // ALIGN(16N + 2(3+N), 64) + 6 + 8N
        assert_eq!(vring_size(2048, 64), 0x9040 + 6 + 8 * 2048);
        assert_eq!(vring_size(64, 64), 1216 + 6 + 512);
    }

    #[test]
    fn queue_length_steps_down_with_the_section() {
        assert_eq!(Geometry::for_section(0x200000).unwrap().qlen, 4096);
        assert_eq!(Geometry::for_section(0x7f000).unwrap().qlen, 2048);
        assert_eq!(Geometry::for_section(0x3f000).unwrap().qlen, 1024);
        assert_eq!(Geometry::for_section(0x10000).unwrap().qlen, 256);
        assert_eq!(Geometry::for_section(0x4000).unwrap().qlen, 64);
    }

    #[test]
    fn too_small_sections_are_refused() {
        assert_eq!(
            Geometry::for_section(0x1000),
            Err(GeometryError::SectionTooSmall { size: 0x1000 })
        );
        assert!(Geometry::for_section(0).is_err());
        assert!(Geometry::for_section(usize::MAX).is_err());
    }

    #[test]
    fn every_power_of_two_layout_is_consistent() {
        let mut s = 0x4000;
        while s <= 1 << 30 {
            let g = Geometry::for_section(s).unwrap();
            assert!(g.avail_off >= 16 * g.qlen as usize);
            assert!(g.used_event() + 2 <= g.used_off);
            assert!(g.avail_event() + 2 <= g.header_size);
            assert!(g.header_size < s / 8);
            assert_eq!(g.header_size % 64, 0);
            s *= 2;
        }
    }
}
