//! # ivnet-zephyr: the ivshmem-net Ethernet driver for Zephyr, in Rust
//!
//! The C shim (drivers/ethernet/eth_ivnet.c) defines one Zephyr device per devicetree
//! instance and an `ethernet_api` table whose entries are the `extern "C"` functions below
//! (their prototypes are generated into `ivnet_zephyr.h` by cbindgen). All logic is here and in
//! `ivnet-core`.
//!
//! The kernel's clock, sleeping, timeouts, a semaphore, the critical section and the panic
//! handler come from zephyr-lang-rust's `zephyr` crate. The unsafe calls into the rest of
//! Zephyr are gathered in the safe handles of `kernel` (poll signal, allocations, yield,
//! randomness), `dev` (our devices, the ivshmem device) and `net` (packets, interfaces). The
//! entry points take those handles directly: each is `repr(transparent)` over the pointer C
//! passes, and only C makes one.
#![no_std]

#[cfg(ivnet_cell_config)]
mod cellcfg;
mod copy;
mod dev;
mod driver;
mod kernel;
mod log;
mod net;
#[cfg(ivnet_stats)]
mod stats;
mod sys;

use core::ffi::c_int;

use dev::Dev;
use net::{Iface, PktRef};
use sys::{device, ethernet_config, ethernet_config_type, ethernet_hw_caps};

/// Device init (POST_KERNEL): maps the link and starts the link thread.
#[no_mangle]
pub extern "C" fn ivnet_init(dev: Dev) -> c_int {
    driver::init(dev)
}

/// net_if init: MAC address, Ethernet L2, carrier off.
#[no_mangle]
pub extern "C" fn ivnet_iface_init(iface: Iface) {
    driver::iface_init(iface)
}

/// The interface went up.
#[no_mangle]
pub extern "C" fn ivnet_start(dev: Dev) -> c_int {
    driver::set_up(dev, true)
}

/// The interface went down.
#[no_mangle]
pub extern "C" fn ivnet_stop(dev: Dev) -> c_int {
    driver::set_up(dev, false)
}

/// Capabilities: a gigabit-class link (shared memory has no line rate); with
/// CONFIG_ETH_IVNET_RX_CHECKSUM_OFFLOAD, received frames need no checksum verification.
#[no_mangle]
pub extern "C" fn ivnet_get_capabilities(_dev: *const device) -> ethernet_hw_caps {
    let mut caps = sys::ethernet_hw_caps_ETHERNET_LINK_1000BASE;
    if sys::IVNET_RX_CHECKSUM_OFFLOAD {
        caps |= sys::ethernet_hw_caps_ETHERNET_HW_RX_CHKSUM_OFFLOAD;
    }
    caps
}

/// Configuration queries: none are supported yet.
#[no_mangle]
pub extern "C" fn ivnet_get_config(
    _dev: *const device,
    _type: ethernet_config_type,
    _config: *mut ethernet_config,
) -> c_int {
    -(sys::ENOTSUP as c_int)
}

/// Sends one frame (called from the stack's TX path, which lends us the packet).
#[no_mangle]
pub extern "C" fn ivnet_send(dev: Dev, pkt: PktRef<'_>) -> c_int {
    driver::send(dev, pkt)
}

/// Zephyr's Ethernet statistics of the interface (`net stats`, `net_mgmt`): the Ethernet L2
/// updates frames, bytes, broadcast, multicast and errors through this pointer on every frame;
/// the driver sets its own counters there (see `driver::publish`).
#[cfg(ivnet_eth_stats)]
#[no_mangle]
pub extern "C" fn ivnet_get_stats(dev: Dev) -> *mut sys::net_stats_eth {
    dev.eth_stats()
}

/// The end of a panic: the `zephyr` crate's panic handler (which printed the message) calls
/// this (zephyr-lang-rust defines it in the C main of its applications, which this module
/// does not use).
#[no_mangle]
pub extern "C" fn rust_panic_wrap() -> ! {
    log::log(log::Level::Err, format_args!("ivnet: panic"));
    // Halting the system is the only way out of a panic in a no_std driver.
    kernel::halt()
}

/// Applies the cell configuration from fw_cfg (addresses, gateway, DHCP): a SYS_INIT at
/// APPLICATION level, when CONFIG_IVNET_CELL_CONFIG is set.
#[cfg(ivnet_cell_config)]
#[no_mangle]
pub extern "C" fn ivnet_cell_setup() -> c_int {
    cellcfg::setup();
    0
}
