//! Values a hostile peer writes into the fields of its section, structured so that the fuzzer
//! produces the interesting ones often: indices just off the expected value, addresses at the
//! edges of the data area, runt lengths, each known flag. Shared by the queue targets.

use arbitrary::Arbitrary;
use ivnet_core::geometry::Geometry;

/// A 16-bit ring index the peer publishes.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Index16 {
    /// The index the receiving side expects, moved by a small amount (either way).
    Near(i8),
    /// Any value.
    Raw(u16),
}

impl Index16 {
    /// The value written, given the index the other side expects.
    pub fn resolve(self, expected: u16) -> u16 {
        match self {
            Index16::Near(d) => expected.wrapping_add(d as i16 as u16),
            Index16::Raw(v) => v,
        }
    }
}

/// A descriptor index as the peer names it in its avail ring.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum DescRef {
    /// Inside the queue (reduced modulo its length).
    In(u8),
    /// Just past the end of the queue.
    PastEnd(u8),
    /// Any value.
    Raw(u16),
}

impl DescRef {
    /// The raw index written.
    pub fn resolve(self, g: &Geometry) -> u16 {
        match self {
            DescRef::In(i) => u16::from(i) % g.qlen,
            DescRef::PastEnd(i) => g.qlen.wrapping_add(u16::from(i % 4)),
            DescRef::Raw(v) => v,
        }
    }
}

/// A descriptor's `addr` (an offset from the start of the sender's section).
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Addr {
    /// At `data_off + x` (inside the data area unless `x` is large).
    Data(u16),
    /// At `section_size - x` (a frame that may run past the end).
    FromEnd(u16),
    /// Just before the data area, inside the queue header.
    BeforeData(u8),
    /// Any value (including ones whose `addr + len` overflows).
    Raw(u64),
}

impl Addr {
    /// The raw address written.
    pub fn resolve(self, g: &Geometry) -> u64 {
        match self {
            Addr::Data(x) => (g.data_off() + usize::from(x)) as u64,
            Addr::FromEnd(x) => (g.section_size as u64).wrapping_sub(u64::from(x)),
            Addr::BeforeData(x) => (g.data_off() as u64).saturating_sub(u64::from(x) + 1),
            Addr::Raw(v) => v,
        }
    }
}

/// A descriptor's `len`.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Len {
    /// An Ethernet-sized frame: 14 + (x % 1501) bytes.
    Frame(u16),
    /// Shorter than an Ethernet header: x % 14 bytes.
    Runt(u8),
    /// Any value.
    Raw(u32),
}

impl Len {
    /// The raw length written.
    pub fn resolve(self) -> u32 {
        match self {
            Len::Frame(x) => 14 + u32::from(x) % 1501,
            Len::Runt(x) => u32::from(x) % 14,
            Len::Raw(v) => v,
        }
    }
}

/// A descriptor's `flags`.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Flags {
    /// None (the only valid value).
    Zero,
    /// VIRTQ_DESC_F_NEXT.
    Next,
    /// VIRTQ_DESC_F_WRITE.
    Write,
    /// VIRTQ_DESC_F_INDIRECT.
    Indirect,
    /// Any value.
    Raw(u16),
}

impl Flags {
    /// The raw flags written.
    pub fn resolve(self) -> u16 {
        match self {
            Flags::Zero => 0,
            Flags::Next => 1,
            Flags::Write => 2,
            Flags::Indirect => 4,
            Flags::Raw(v) => v,
        }
    }
}

/// Offset of an aligned 8-byte word anywhere in the queue header of a section.
pub fn header_word(g: &Geometry, off: u16) -> usize {
    (usize::from(off) * 8) % g.header_size
}

/// The bytes of an honest test frame: `len` bytes derived from `tag`, so that a receiver can
/// tell frames apart and see corruption.
pub fn frame_bytes(tag: u32, len: usize) -> Vec<u8> {
    let t = tag.to_le_bytes();
    (0..len)
        .map(|i| t[i % 4] ^ (i as u8).wrapping_mul(31) ^ (i >> 8) as u8)
        .collect()
}
