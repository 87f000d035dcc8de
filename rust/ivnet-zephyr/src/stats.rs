//! The driver's per-link counters as a Zephyr STATS group named after the instance
//! (`ivnet0`, `ivnet1`, ...), readable with MCUmgr's stat group (`stat read ivnet0`) or the
//! shell's `stats` command. Enabled by CONFIG_ETH_IVNET_STATS (needs CONFIG_STATS).

use core::cell::UnsafeCell;
use core::ffi::c_char;
use core::mem::offset_of;

use crate::driver::Stats;
use crate::log::wrn;
use crate::sys;

/// A STATS group: Zephyr's header followed by the u32 counters it describes.
#[repr(C)]
pub struct Group {
    hdr: sys::stats_hdr,
    counters: Stats,
}

/// Counter names, in `Stats` order, with their offsets from the group's start.
struct NameMap([sys::stats_name_map; Stats::COUNT]);

// SAFETY: the map is immutable and its pointers are to static C strings.
unsafe impl Sync for NameMap {}

macro_rules! entry {
    ($f:ident) => {
        sys::stats_name_map {
            snm_off: (offset_of!(Group, counters) + offset_of!(Stats, $f)) as u16,
            snm_name: concat!(stringify!($f), "\0").as_ptr() as *const c_char,
        }
    };
}

static NAMES: NameMap = NameMap([
    entry!(rx_frames),
    entry!(tx_frames),
    entry!(rx_bytes),
    entry!(tx_bytes),
    entry!(rx_dropped),
    entry!(tx_dropped),
    entry!(tx_waits),
    entry!(doorbells),
    entry!(state_changes),
    entry!(protocol_resets),
    entry!(peer_stalls),
]);

const GROUP_NAMES: [&core::ffi::CStr; 4] = [c"ivnet0", c"ivnet1", c"ivnet2", c"ivnet3"];

/// One instance's group (lives inside the never-moving driver object).
pub struct Published(UnsafeCell<Group>);

// SAFETY: written only inside the driver's critical section; the STATS subsystem reads the
// aligned u32 counters, which a concurrent write cannot tear.
unsafe impl Sync for Published {}

impl Published {
    /// A zeroed, unregistered group.
    pub fn new() -> Published {
        Published(UnsafeCell::new(Group {
            hdr: sys::stats_hdr::default(),
            counters: Stats::default(),
        }))
    }

    /// Registers the group of devicetree instance `n` (once, from the driver's init; the
    /// object must not move afterwards).
    pub fn register(&self, n: usize) {
        let Some(name) = GROUP_NAMES.get(n) else {
            wrn!("ivnet{}: no STATS group name for this instance", n);
            return;
        };
        // SAFETY: the group lives as long as the system and does not move; Zephyr keeps
        // pointers to it, to the static name map and to the static name.
        let r = unsafe {
            let g = self.0.get();
            sys::stats_init_and_reg(
                &mut (*g).hdr,
                4,
                Stats::COUNT as u16,
                NAMES.0.as_ptr(),
                Stats::COUNT as u16,
                name.as_ptr(),
            )
        };
        if r != 0 {
            wrn!("ivnet{}: STATS group not registered ({})", n, r);
        }
    }

    /// Publishes the current counters (call inside the driver's critical section).
    pub fn publish(&self, s: &Stats) {
        let src = s.as_words();
        // SAFETY: `counters` is COUNT u32s (checked at compile time below), written one aligned
        // word at a time with volatile stores (no tearing of a counter the STATS subsystem
        // reads concurrently, no `&mut` to memory C reads); callers serialise writers with the
        // critical section.
        unsafe {
            let dst = core::ptr::addr_of_mut!((*self.0.get()).counters) as *mut u32;
            for (i, w) in src.iter().enumerate() {
                dst.add(i).write_volatile(*w);
            }
        }
    }
}

// Zephyr finds counter i at `sizeof(struct stats_hdr) + i * s_size` from the header.
const _: () = assert!(offset_of!(Group, counters) == core::mem::size_of::<sys::stats_hdr>());
const _: () = assert!(core::mem::size_of::<Stats>() == Stats::COUNT * 4);
const _: () = assert!(core::mem::align_of::<Stats>() == 4);

impl Stats {
    /// The counters as words, in declaration order.
    fn as_words(&self) -> [u32; Stats::COUNT] {
        [
            self.rx_frames,
            self.tx_frames,
            self.rx_bytes,
            self.tx_bytes,
            self.rx_dropped,
            self.tx_dropped,
            self.tx_waits,
            self.doorbells,
            self.state_changes,
            self.protocol_resets,
            self.peer_stalls,
        ]
    }
}
