//! The cell configuration ([`ivnet_core::cell`]) read from QEMU's fw_cfg device and applied:
//! the MAC when an interface is created, addresses, gateway and DHCP client at APPLICATION
//! init (`ivnet_cell_setup`). One image then serves every cell of a topology.

use core::cell::RefCell;

use critical_section::Mutex;
use ivnet_core::cell::{self, netmask, CellConfig, Ipv4, MAX_FILE, MAX_IFACES};

use crate::log::{err, inf, wrn};
use crate::net::{Iface, IfaceCell};
use crate::sys;

/// QEMU's fw_cfg, MMIO flavour (Arm `virt`): data register at +0, 16-bit big-endian selector
/// at +8.
struct FwCfg {
    base: *mut u8,
}

const FW_CFG_SIGNATURE: u16 = 0x0000;
const FW_CFG_FILE_DIR: u16 = 0x0019;

impl FwCfg {
    /// Maps the device named by the devicetree, if the image has one.
    fn open() -> Option<FwCfg> {
        // From the devicetree (0 when the image has no fw_cfg node).
        let phys: usize = sys::IVNET_FW_CFG_BASE;
        if phys == 0 {
            return None;
        }
        let mut virt: *mut u8 = core::ptr::null_mut();
        // SAFETY: maps one page of device memory at the address devicetree gives for fw_cfg;
        // `virt` receives the mapping, which is never unmapped.
        unsafe {
            sys::k_mem_map_phys_bare(
                &mut virt,
                phys,
                0x1000,
                sys::IVNET_K_MEM_CACHE_NONE | sys::IVNET_K_MEM_PERM_RW,
            )
        };
        if virt.is_null() {
            return None;
        }
        let f = FwCfg { base: virt };
        f.select(FW_CFG_SIGNATURE);
        let mut sig = [0u8; 4];
        f.read(&mut sig);
        (&sig == b"QEMU").then_some(f)
    }

    fn select(&self, key: u16) {
        self.io(Some(key), &mut []);
    }

    fn read(&self, out: &mut [u8]) {
        self.io(None, out);
    }

    /// Selects item `key` (if given), then reads its next `out.len()` bytes.
    fn io(&self, key: Option<u16>, out: &mut [u8]) {
        // SAFETY: `base` maps the fw_cfg registers (a page of device memory, never unmapped):
        // the selector is a 16-bit register at +8, and byte reads of the data register at +0
        // return the selected item's next byte.
        unsafe {
            if let Some(k) = key {
                core::ptr::write_volatile(self.base.add(8) as *mut u16, k.to_be());
            }
            for b in out.iter_mut() {
                *b = core::ptr::read_volatile(self.base);
            }
        }
    }

    /// Reads the named file into `buf`; returns its length (truncated to `buf`'s).
    fn file(&self, name: &[u8], buf: &mut [u8]) -> Option<usize> {
        self.select(FW_CFG_FILE_DIR);
        let mut n = [0u8; 4];
        self.read(&mut n);
        let count = u32::from_be_bytes(n).min(4096);
        for _ in 0..count {
            // struct FWCfgFile { be32 size; be16 select; u16 reserved; char name[56]; }
            let mut e = [0u8; 64];
            self.read(&mut e);
            let fname = &e[8..];
            let end = fname.iter().position(|&c| c == 0).unwrap_or(fname.len());
            if &fname[..end] == name {
                let size = u32::from_be_bytes([e[0], e[1], e[2], e[3]]) as usize;
                let key = u16::from_be_bytes([e[4], e[5]]);
                let len = size.min(buf.len());
                self.select(key);
                self.read(&mut buf[..len]);
                if size > len {
                    wrn!("cell config: {} bytes, only the first {} read", size, len);
                }
                return Some(len);
            }
        }
        None
    }
}

static CONFIG: Mutex<RefCell<Option<CellConfig>>> = Mutex::new(RefCell::new(None));

/// The fw_cfg file is read into static memory, not onto the stack: [`get`] runs first during
/// device init, on the stack of Zephyr's init (later main) thread, which an application may keep
/// small (Zephyr's echo_server sample: 2 KiB, which a 1 KiB buffer there overflowed).
static FILE: Mutex<RefCell<[u8; MAX_FILE]>> = Mutex::new(RefCell::new([0; MAX_FILE]));

/// The cell's configuration (read from fw_cfg once; empty when there is none).
pub fn get() -> CellConfig {
    if let Some(c) = critical_section::with(|cs| *CONFIG.borrow_ref(cs)) {
        return c;
    }
    let fw = FwCfg::open();
    // Once, at boot: the fw_cfg reads and the parse run with interrupts locked (the buffer is
    // shared), a millisecond or so.
    let cfg = critical_section::with(|cs| {
        let mut file = FILE.borrow_ref_mut(cs);
        let buf = &mut file[..];
        read_config(fw.as_ref(), buf)
    });
    critical_section::with(|cs| *CONFIG.borrow_ref_mut(cs) = Some(cfg));
    cfg
}

/// Reads and parses the cell configuration file into `buf`'s room.
fn read_config(fw: Option<&FwCfg>, buf: &mut [u8]) -> CellConfig {
    match fw.and_then(|f| f.file(cell::FW_CFG_NAME.as_bytes(), buf)) {
        Some(len) => {
            inf!("cell config: {} bytes from fw_cfg", len);
            // A file longer than the buffer was cut: drop its partial last line, which could
            // otherwise parse as a different value (10.20.0.1 from 10.20.0.12).
            let len = if len == buf.len() {
                buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)
            } else {
                len
            };
            cell::parse(&buf[..len], |l| {
                wrn!("cell config: line not understood: {}", l)
            })
        }
        None => CellConfig::default(),
    }
}

/// The interfaces of the ivnet devices, by devicetree instance (set by `iface_init`).
static IFACES: [IfaceCell; MAX_IFACES] = [const { IfaceCell::new() }; MAX_IFACES];

/// Records the interface of instance `n`.
pub fn register_iface(n: usize, iface: Iface) {
    if let Some(slot) = IFACES.get(n) {
        slot.set(iface);
    }
}

/// A static IPv6 address, and its prefix as on-link (Zephyr decides on-link by its prefix
/// list; duplicate address detection runs as for any address).
#[cfg(ivnet_ipv6)]
fn setup_ipv6(i: usize, iface: Iface, a: [u8; 16], prefix: u8) {
    // The prefix without the address's host bits (parse() keeps `prefix` in 1..=128).
    let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
    let net = (u128::from_be_bytes(a) & mask).to_be_bytes();
    let ok = iface.add_ipv6(a, net, prefix);
    let a = core::net::Ipv6Addr::from(a);
    if ok {
        inf!("ivnet{}: {}/{}", i, a, prefix);
    } else {
        err!("ivnet{}: cannot add {}/{}", i, a, prefix);
    }
}

#[cfg(not(ivnet_ipv6))]
fn setup_ipv6(i: usize, _iface: Iface, _a: [u8; 16], _prefix: u8) {
    err!(
        "ivnet{}: IPv6 address asked for, but CONFIG_NET_IPV6 is off",
        i
    );
}

/// Applies addresses, gateways and DHCP (at APPLICATION init, when the stack is up).
pub fn setup() {
    let cfg = get();
    for (i, ifc) in cfg.ifaces.iter().enumerate() {
        if ifc.ipv4.is_none() && ifc.gw.is_none() && ifc.ipv6.is_none() {
            continue;
        }
        let Some(iface) = IFACES[i].get() else {
            wrn!(
                "cell config: if{} is configured but this image has no ivnet{}",
                i,
                i
            );
            continue;
        };
        match ifc.ipv4 {
            Some(Ipv4::Static(a, prefix)) => {
                if iface.add_ipv4(a, netmask(prefix)) {
                    inf!("ivnet{}: {}.{}.{}.{}/{}", i, a[0], a[1], a[2], a[3], prefix);
                } else {
                    err!(
                        "ivnet{}: cannot add {}.{}.{}.{}/{}",
                        i,
                        a[0],
                        a[1],
                        a[2],
                        a[3],
                        prefix
                    );
                }
            }
            Some(Ipv4::Dhcp) => {
                #[cfg(ivnet_dhcpv4)]
                {
                    inf!("ivnet{}: DHCPv4", i);
                    iface.start_dhcpv4();
                }
                #[cfg(not(ivnet_dhcpv4))]
                err!("ivnet{}: DHCP asked for, but CONFIG_NET_DHCPV4 is off", i);
            }
            None => {}
        }
        if let Some(g) = ifc.gw {
            iface.set_gw(g);
        }
        if let Some((a, prefix)) = ifc.ipv6 {
            setup_ipv6(i, iface, a, prefix);
        }
    }
    if let Some(d) = cfg.default {
        if let Some(iface) = IFACES[d].get() {
            iface.set_default();
        }
    }
}
