//! Safe handles for devices: one of ours (defined by the C shim) and the ivshmem device it
//! sits on.

use core::ffi::{c_int, c_void};
use core::sync::atomic::{AtomicPtr, Ordering};

use ivnet_core::shm::Region;

use crate::driver::Driver;
use crate::kernel::PollSignal;
use crate::net::Iface;
use crate::sys::{self, device};

/// One of our devices, as the C shim defines it: its config is a static `ivnet_config`, its
/// data a static `ivnet_data`. Only C makes one (it is the device argument of the entry
/// points, `repr(transparent)` over the pointer C passes).
#[repr(transparent)]
#[derive(Clone, Copy)]
pub struct Dev(&'static device);

impl Dev {
    /// The instance's configuration.
    pub fn config(self) -> &'static sys::ivnet_config {
        // SAFETY: the shim defines config as a static ivnet_config (see the type).
        unsafe { &*(self.0.config as *const sys::ivnet_config) }
    }

    /// The `driver` word of the instance's data: null, or the Driver that `set_driver` left.
    fn driver_slot(self) -> &'static AtomicPtr<c_void> {
        let data = self.0.data as *mut sys::ivnet_data;
        // SAFETY: data is this instance's static ivnet_data (see the type); its `driver`
        // pointer is aligned, and C never touches it after zero-initialising it.
        unsafe { AtomicPtr::from_ptr(core::ptr::addr_of_mut!((*data).driver)) }
    }

    /// The instance's driver (None before its init succeeded).
    pub fn driver(self) -> Option<&'static Driver> {
        let p = self.driver_slot().load(Ordering::Acquire) as *const Driver;
        // SAFETY: only `set_driver` stores into the slot (it is private), and only a Driver
        // that lives for ever; it is only shared.
        unsafe { p.as_ref() }
    }

    /// Records the instance's driver (once, from its init).
    pub fn set_driver(self, d: &'static Driver) {
        let p = d as *const Driver as *mut c_void;
        self.driver_slot().store(p, Ordering::Release);
    }

    /// Zephyr's Ethernet statistics of this device (in its data; static and aligned).
    #[cfg(ivnet_eth_stats)]
    pub fn eth_stats(self) -> *mut sys::net_stats_eth {
        let data = self.0.data as *mut sys::ivnet_data;
        // SAFETY: data is this instance's static ivnet_data (see the type); only the
        // field's address is taken.
        unsafe { core::ptr::addr_of_mut!((*data).stats) }
    }

    /// The ivshmem device the instance sits on, if it is ready.
    pub fn ivshmem(self) -> Option<Ivshmem> {
        let d = self.config().ivshmem;
        // SAFETY: the shim sets `ivshmem` with DEVICE_DT_GET of an ivshmem node: a static
        // device with the ivshmem API, which is what an Ivshmem is.
        unsafe { sys::device_is_ready(d).then(|| Ivshmem(&*d)) }
    }

    /// The device of one of our interfaces.
    pub fn of(iface: Iface) -> Dev {
        // SAFETY: an Iface is a live interface of one of our devices; its device is static.
        Dev(unsafe { &*sys::net_if_get_device(iface.raw()) })
    }
}

/// A ready ivshmem device (v1, ivshmem-doorbell; or v2).
#[derive(Clone, Copy)]
pub struct Ivshmem(&'static device);

/// The calls on the device that take and return plain values.
enum Call {
    Id,
    Vectors,
    #[cfg(ivshmem_v2)]
    MaxPeers,
    #[cfg(ivshmem_v2)]
    Protocol,
    #[cfg(ivshmem_v2)]
    State(u32),
    #[cfg(ivshmem_v2)]
    SetState(u32),
    #[cfg(ivshmem_v2)]
    EnableInterrupts,
    Ring(u32, u16),
}

impl Ivshmem {
    fn call(self, c: Call) -> u32 {
        let d = self.0;
        // SAFETY: `d` is a ready ivshmem device (see the type). These calls read its
        // registers and configuration or write its doorbell, STATE and interrupt-control
        // registers; they take no pointers.
        unsafe {
            match c {
                Call::Id => sys::ivshmem_get_id(d),
                Call::Vectors => u32::from(sys::ivshmem_get_vectors(d)),
                #[cfg(ivshmem_v2)]
                Call::MaxPeers => sys::ivshmem_get_max_peers(d),
                #[cfg(ivshmem_v2)]
                Call::Protocol => u32::from(sys::ivshmem_get_protocol(d)),
                #[cfg(ivshmem_v2)]
                Call::State(peer) => sys::ivshmem_get_state(d, peer),
                #[cfg(ivshmem_v2)]
                Call::SetState(s) => {
                    sys::ivshmem_set_state(d, s);
                    0
                }
                #[cfg(ivshmem_v2)]
                Call::EnableInterrupts => {
                    sys::ivshmem_enable_interrupts(d, true);
                    0
                }
                Call::Ring(peer, vector) => sys::ivshmem_int_peer(d, peer, vector) as u32,
            }
        }
    }

    /// Our ivshmem id.
    pub fn id(self) -> u32 {
        self.call(Call::Id)
    }

    /// Number of interrupt vectors.
    pub fn vectors(self) -> u16 {
        self.call(Call::Vectors) as u16
    }

    /// Number of peers (0 on a v1 device).
    #[cfg(ivshmem_v2)]
    pub fn max_peers(self) -> u32 {
        self.call(Call::MaxPeers)
    }

    /// The v2 device's protocol.
    #[cfg(ivshmem_v2)]
    pub fn protocol(self) -> u32 {
        self.call(Call::Protocol)
    }

    /// A peer's state word in the v2 state table.
    #[cfg(ivshmem_v2)]
    pub fn state(self, peer: u32) -> u32 {
        self.call(Call::State(peer))
    }

    /// Writes our STATE register (v2: mirrored into the state table, raises vector 0 at the
    /// peer).
    #[cfg(ivshmem_v2)]
    pub fn set_state(self, s: u32) {
        self.call(Call::SetState(s));
    }

    /// Enables the v2 device's interrupts.
    #[cfg(ivshmem_v2)]
    pub fn enable_interrupts(self) {
        self.call(Call::EnableInterrupts);
    }

    /// Rings `vector` at `peer`.
    pub fn ring(self, peer: u32, vector: u16) {
        self.call(Call::Ring(peer, vector));
    }

    /// The shared memory of a v1 device (QEMU's ivshmem-doorbell: one flat region, all of it
    /// ours to write); None when the device has none.
    pub fn region(self) -> Option<Region<'static>> {
        let mut addr: usize = 0;
        // SAFETY: the device is ready and `addr` a valid out pointer. The device maps the
        // memory it reports, read-write, for the life of the system; only Region accessors
        // touch it.
        unsafe {
            let size = sys::ivshmem_get_mem(self.0, &mut addr);
            (size != 0 && addr != 0).then(|| Region::new(addr as *mut u8, size))
        }
    }

    /// The output section of peer `peer` of a v2 device; None when the device has none.
    ///
    /// # Safety
    /// Only our own output section is writable: the device maps every other peer's
    /// read-only, so nothing may write through the Region of another peer's section (a write
    /// would fault).
    #[cfg(ivshmem_v2)]
    pub unsafe fn output_section(self, peer: u32) -> Option<Region<'static>> {
        let mut addr: usize = 0;
        // SAFETY: the device is ready and `addr` a valid out pointer. The device maps the
        // section for the life of the system (readable; writable if it is ours: the caller's
        // side of the contract); only Region accessors touch it.
        unsafe {
            let size = sys::ivshmem_get_output_mem_section(self.0, peer, &mut addr);
            (size != 0 && addr != 0).then(|| Region::new(addr as *mut u8, size))
        }
    }

    /// Has `vector` raise `signal` (the device keeps the signal: it lives for ever).
    pub fn register_handler(self, signal: &'static PollSignal, vector: u16) -> c_int {
        // SAFETY: the device is ready; the signal is initialised and static.
        unsafe { sys::ivshmem_register_handler(self.0, signal.raw(), vector) }
    }
}
