//! Target `v1`: the control page of an ivshmem v1 region, over arbitrary region sizes and
//! contents.
//!
//! The fuzzer picks the region size (powers of two around the minimum, or any size) and what
//! the peers and the server write into the control page, and calls the accessors in any
//! order.
//!
//! Invariants: no panic; `V1Region::new` accepts exactly the sizes `check_size` accepts; the
//! two sections lie after the control page, inside the region, side by side without
//! overlapping, and a third does not exist; `owner` is the owner word minus one; `set_owner`
//! zeroes the slot's state word and records the id; `peer_state` is RESET when the other slot
//! has no owner, else the other slot's state word validated (an invalid one is
//! `InvalidPeerState`); `slot_of` finds the slot only when exactly one slot has that owner.

use arbitrary::Arbitrary;
use ivnet_core::geometry::Geometry;
use ivnet_core::state::LinkState;
use ivnet_core::testmem::TestMem;
use ivnet_core::v1::{
    check_size, min_region_size, section_offset, section_size, V1Region, CONTROL_SIZE, OWNER_OFF,
    SLOTS, STATE_OFF,
};
use ivnet_core::ProtocolError;

use crate::tally::seen;

/// The region's size.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Size {
    /// `min_region_size() << (x % 4)`, or `>> 1` for x % 5 == 4 (too small).
    Pow2(u8),
    /// Any size up to 1 MiB (mostly not a power of two).
    Raw(u32),
}

/// An owner id.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Id {
    /// A small id (x % 4), likely to collide with another slot's.
    Small(u8),
    /// Any id.
    Raw(u32),
}

impl Id {
    fn get(self) -> u32 {
        match self {
            Id::Small(x) => u32::from(x % 4),
            Id::Raw(v) => v,
        }
    }
}

/// One step. Slots are taken modulo 4 for the plain accessors (slots 2 and 3 exist in no
/// link but are still inside the control page), also for `peer_state` (slots 2 and 3 are an
/// error).
#[derive(Arbitrary, Debug, Clone)]
pub enum Op {
    /// A peer writes its state word (raw).
    WriteState(u8, u32),
    /// The server writes an owner word (raw).
    WriteOwner(u8, u32),
    /// Anyone writes any word of the control page.
    Poke(u16, u32),
    /// `set_owner(slot, id)`.
    SetOwner(u8, Option<Id>),
    /// `set_state(slot, v)` with a valid state (v % 4) or any value.
    SetState(u8, u32),
    /// `owner(slot)`.
    Owner(u8),
    /// `state(slot)`.
    State(u8),
    /// `peer_state(slot)`.
    PeerState(u8),
    /// `slot_of(id)`.
    SlotOf(Id),
    /// `section(slot)` for slot 0..=2.
    Section(u8),
}

/// The region and the steps.
#[derive(Arbitrary, Debug, Clone)]
pub struct Input {
    /// Its size.
    pub size: Size,
    /// The steps.
    pub ops: Vec<Op>,
}

/// Runs one input.
pub fn run(input: &Input) {
    let size = match input.size {
        Size::Pow2(x) if x % 5 == 4 => min_region_size() / 2,
        Size::Pow2(x) => min_region_size() << (x % 4),
        Size::Raw(v) => (v % (1 << 20)) as usize,
    };
    let mem = TestMem::new(size);
    let region = mem.region();
    let v = V1Region::new(region);
    assert_eq!(v.is_ok(), check_size(size).is_ok());
    let Ok(v) = v else {
        return;
    };
    assert!(size.is_power_of_two() && size >= min_region_size());
    let sec = section_size(size);
    let g = Geometry::for_section(sec).expect("check_size checked the geometry");
    assert_eq!(g.section_size, sec);
    for op in &input.ops {
        match *op {
            Op::WriteState(s, w) => region
                .store_u32(STATE_OFF + 4 * usize::from(s % 4), w)
                .unwrap(),
            Op::WriteOwner(s, w) => region
                .store_u32(OWNER_OFF + 4 * usize::from(s % 4), w)
                .unwrap(),
            Op::Poke(off, w) => region
                .store_u32((usize::from(off) * 4) % CONTROL_SIZE, w)
                .unwrap(),
            Op::SetOwner(s, id) => {
                let s = usize::from(s % 4);
                region.store_u32(STATE_OFF + 4 * s, 0xdead).unwrap();
                let id = id.map(Id::get);
                if id == Some(u32::MAX) {
                    // The one id the owner word (id + 1) cannot hold: refused, nothing written.
                    let before = v.owner(s).unwrap();
                    assert!(v.set_owner(s, id).is_err());
                    assert_eq!(
                        v.state(s).unwrap(),
                        0xdead,
                        "a refused set_owner writes nothing"
                    );
                    assert_eq!(v.owner(s).unwrap(), before);
                } else {
                    v.set_owner(s, id).unwrap();
                    assert_eq!(v.state(s).unwrap(), 0, "set_owner zeroes the state word");
                    assert_eq!(v.owner(s).unwrap(), id);
                }
            }
            Op::SetState(s, w) => {
                let s = usize::from(s % 4);
                v.set_state(s, w).unwrap();
                assert_eq!(v.state(s).unwrap(), w);
                assert_eq!(region.load_u32(STATE_OFF + 4 * s).unwrap(), w);
            }
            Op::Owner(s) => {
                let s = usize::from(s % 4);
                let raw = region.load_u32(OWNER_OFF + 4 * s).unwrap();
                assert_eq!(v.owner(s).unwrap(), raw.checked_sub(1));
            }
            Op::State(s) => {
                let s = usize::from(s % 4);
                let raw = region.load_u32(STATE_OFF + 4 * s).unwrap();
                assert_eq!(v.state(s).unwrap(), raw);
            }
            Op::PeerState(s) if usize::from(s % 4) >= SLOTS => {
                // No such slot: an error, not a panic.
                assert!(matches!(
                    v.peer_state(usize::from(s % 4)),
                    Err(ProtocolError::OutOfBounds(_))
                ));
            }
            Op::PeerState(s) => {
                let s = usize::from(s % 4);
                let other = 1 - s;
                let got = seen(v.peer_state(s));
                let owner = region.load_u32(OWNER_OFF + 4 * other).unwrap();
                let word = region.load_u32(STATE_OFF + 4 * other).unwrap();
                if owner == 0 {
                    assert_eq!(got, Ok(LinkState::Reset));
                } else if word < 4 {
                    assert_eq!(got.map(LinkState::raw), Ok(word));
                } else {
                    assert_eq!(got, Err(ProtocolError::InvalidPeerState { raw: word }));
                }
            }
            Op::SlotOf(id) => {
                let id = id.get();
                let owners: Vec<Option<u32>> = (0..SLOTS)
                    .map(|s| region.load_u32(OWNER_OFF + 4 * s).unwrap().checked_sub(1))
                    .collect();
                let matching: Vec<usize> = (0..SLOTS).filter(|&s| owners[s] == Some(id)).collect();
                let want = if matching.len() == 1 {
                    Some(matching[0])
                } else {
                    None
                };
                assert_eq!(v.slot_of(id).unwrap(), want);
            }
            Op::Section(s) => {
                let s = usize::from(s % 3);
                let r = v.section(s);
                if s >= SLOTS {
                    assert!(r.is_err(), "a third section");
                    continue;
                }
                let r = r.expect("section inside the region");
                assert_eq!(r.len(), sec);
                let off = r.as_ptr() as usize - region.as_ptr() as usize;
                assert_eq!(off, section_offset(size, s));
                assert!(off >= CONTROL_SIZE);
                assert!(off + sec <= size);
                assert_eq!(off % 8, 0, "sections are aligned");
                if s == 1 {
                    assert!(section_offset(size, 0) + sec <= off, "sections overlap");
                }
            }
        }
    }
}
