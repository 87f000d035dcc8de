//! # ivnet-zephyr: the ivshmem-net Ethernet driver for Zephyr, in Rust
//!
//! The C shim (drivers/ethernet/eth_ivnet.c) defines one Zephyr device per devicetree
//! instance and an `ethernet_api` table whose entries are the `extern "C"` functions below
//! (their prototypes are generated into `ivnet_zephyr.h` by cbindgen). All logic is here and in
//! `ivnet-core`.
#![no_std]

#[cfg(ivnet_cell_config)]
mod cellcfg;
mod copy;
mod cs;
mod driver;
mod log;
#[cfg(ivnet_stats)]
mod stats;
mod sys;

use core::ffi::c_int;

use sys::{device, ethernet_config, ethernet_config_type, ethernet_hw_caps, net_if, net_pkt};

/// Device init (POST_KERNEL): maps the link and starts the link thread.
///
/// # Safety
/// Called by Zephyr's device model with a device defined by the shim.
#[no_mangle]
pub unsafe extern "C" fn ivnet_init(dev: *const device) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { driver::init(dev) }
}

/// net_if init: MAC address, Ethernet L2, carrier off.
///
/// # Safety
/// Called by the network stack with one of our interfaces.
#[no_mangle]
pub unsafe extern "C" fn ivnet_iface_init(iface: *mut net_if) {
    // SAFETY: forwarded contract.
    unsafe { driver::iface_init(iface) }
}

/// The interface went up.
///
/// # Safety
/// Called by the Ethernet L2 with one of our devices.
#[no_mangle]
pub unsafe extern "C" fn ivnet_start(dev: *const device) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { driver::set_up(dev, true) }
}

/// The interface went down.
///
/// # Safety
/// Called by the Ethernet L2 with one of our devices.
#[no_mangle]
pub unsafe extern "C" fn ivnet_stop(dev: *const device) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { driver::set_up(dev, false) }
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

/// Sends one frame (called from the stack's TX path).
///
/// # Safety
/// Called by the Ethernet L2 with one of our devices and a valid packet.
#[no_mangle]
pub unsafe extern "C" fn ivnet_send(dev: *const device, pkt: *mut net_pkt) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { driver::send(dev, pkt) }
}

/// Zephyr's Ethernet statistics of the interface (`net stats`, `net_mgmt`): the Ethernet L2
/// updates frames, bytes, broadcast, multicast and errors through this pointer on every frame;
/// the driver sets its own counters there (see `driver::publish`).
///
/// # Safety
/// Called by the Ethernet L2 with one of our devices.
#[cfg(ivnet_eth_stats)]
#[no_mangle]
pub unsafe extern "C" fn ivnet_get_stats(dev: *const device) -> *mut sys::net_stats_eth {
    // SAFETY: forwarded contract.
    unsafe { driver::eth_stats(dev) }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    log::log(log::Level::Err, format_args!("ivnet: panic: {}", info));
    // SAFETY: halting the system is the only way out of a panic in a no_std driver.
    unsafe { sys::k_fatal_halt(0) }
}

/// Applies the cell configuration from fw_cfg (addresses, gateway, DHCP): a SYS_INIT at
/// APPLICATION level, when CONFIG_IVNET_CELL_CONFIG is set.
#[cfg(ivnet_cell_config)]
#[no_mangle]
pub extern "C" fn ivnet_cell_setup() -> c_int {
    cellcfg::setup();
    0
}
