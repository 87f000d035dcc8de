//! The topology file: a network of Zephyr cells on ivnet links, and the host side that joins
//! them to Linux networking (bridge, DHCP, NAT, port forwards).
//!
//! ```toml
//! [host]
//! bridge = "ivbr0"
//! subnet = "10.20.0.0/24"          # the host's address is the first one unless `address`
//! subnet6 = "fd00:20::/64"         # optional IPv6: the host is ::1 and sends router
//!                                  # advertisements; cells take SLAAC addresses (EUI-64)
//! dhcp = ["10.20.0.100", "10.20.0.199"]
//! uplink = "eth0"                  # optional: masquerade to it
//! # optional: the network's processes (supervisor, host peers, QEMUs) in a control group
//! # of their own, `ivnet-<bridge>`, removed by `ivnet down` (see the isolation module)
//! isolation = { cpu_weight = 1000, cpus = "0-1", memory_min = "256M" }
//!
//! [[host.forward]]                 # host port -> a cell's service
//! port = 8080
//! cell = "c1"
//! to = 4242
//!
//! [[cell]]
//! name = "c1"
//! image = "build/echo/zephyr/zephyr.elf"
//! mac = "02:00:00:00:00:01"
//! address = "dhcp"                 # or "10.20.0.11"
//! services = [4242]
//!
//! [[link]]                         # "host" is the bridge; two cells make a cell<->cell link
//! ends = ["c1", "host"]
//! ```
//!
//! A cell<->cell link has its own `subnet` (IPv4), and may have a `subnet6` (an IPv6 /64, with
//! or without one on the host): its first end takes `::1`, its second `::2`.
//!
//! A link is ivshmem v1 (upstream QEMU's ivshmem-doorbell) unless it says `ivshmem = 2`: then
//! its cells get the project's ivshmem 2.0 device (`ivshmem2`, in the QEMU that
//! scripts/qemu-build.sh builds) and must run an image built for it (snippet `ivnet-v2-cell`).
//! All links of one cell use the same generation.
//!
//! [`Topology::parse`] checks everything that can be checked without touching the machine and
//! names the line of the first problem.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::Range;
use std::path::{Path, PathBuf};

use ivnet_core::mac::Mac;
use serde::Deserialize;
use toml::Spanned;

use crate::isolation;
use crate::names::check_ifname;
use crate::size::parse_size;

mod parse;

/// A problem in a topology file, with the line it is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyError {
    /// 1-based line of the offending value (0 when the file as a whole is at fault).
    pub line: usize,
    /// What is wrong, naming the offending value.
    pub message: String,
}

impl fmt::Display for TopologyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "line {}: {}", self.line, self.message)
        } else {
            write!(f, "{}", self.message)
        }
    }
}

impl std::error::Error for TopologyError {}

/// An IPv4 subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    /// Network address.
    pub network: Ipv4Addr,
    /// Prefix length, 8..=30.
    pub prefix: u8,
}

impl Subnet {
    fn mask(&self) -> u32 {
        u32::MAX << (32 - self.prefix)
    }

    /// True when `a` is a usable host address of the subnet (not the network or broadcast).
    pub fn holds(&self, a: Ipv4Addr) -> bool {
        let (a, n) = (u32::from(a), u32::from(self.network));
        a & self.mask() == n && a != n && a != n | !self.mask()
    }
}

/// How a cell gets its IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addressing {
    /// From the host's DHCP server.
    Dhcp,
    /// A fixed address in the host subnet.
    Static(Ipv4Addr),
    /// None on the host subnet: the cell has no link to the host.
    None,
}

/// A host port forwarded to a cell's service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// Host port.
    pub port: u16,
    /// Protocol, `tcp` or `udp`.
    pub proto: String,
    /// Index into [`Topology::cells`].
    pub cell: usize,
    /// The cell's port.
    pub to: u16,
}

/// The host side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Linux bridge the cells' TAPs join.
    pub bridge: String,
    /// Subnet of the bridge.
    pub subnet: Subnet,
    /// The host's address on the bridge.
    pub address: Ipv4Addr,
    /// The bridge's IPv6 /64 (its network address), if the network has IPv6.
    pub subnet6: Option<Ipv6Addr>,
    /// DHCP range, first and last address.
    pub dhcp: Option<(Ipv4Addr, Ipv4Addr)>,
    /// Interface to masquerade to.
    pub uplink: Option<String>,
    /// Port forwards.
    pub forwards: Vec<Forward>,
    /// Resource isolation of the network's processes (a control group of its own), if asked.
    pub isolation: Option<isolation::Spec>,
}

/// One cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    /// Name, unique.
    pub name: String,
    /// Zephyr image to boot.
    pub image: PathBuf,
    /// MAC address.
    pub mac: Mac,
    /// Addressing.
    pub address: Addressing,
    /// Ports of the cell's services.
    pub services: Vec<u16>,
}

/// What a link end is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum End {
    /// The host (a host peer on a TAP in the bridge).
    Host,
    /// A cell, by index into [`Topology::cells`].
    Cell(usize),
}

/// One ivnet link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Its two ends.
    pub ends: [End; 2],
    /// Shared memory size in bytes.
    pub size: usize,
    /// A cell<->cell link's own subnet: the first end takes its first host address, the
    /// second end the second. None for a link to the host (the host subnet).
    pub subnet: Option<Subnet>,
    /// A cell<->cell link's IPv6 /64 (ends `::1` and `::2`), if it has one.
    pub subnet6: Option<Ipv6Addr>,
    /// The ivshmem generation: 1 (QEMU's ivshmem-doorbell) or 2 (ivshmem 2.0, `ivshmem2`).
    pub ivshmem: u8,
}

/// ivnet interfaces one cell image carries (the `ivnet-cell` snippet's two links).
pub const MAX_CELL_LINKS: usize = 2;

/// A checked topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// The host side.
    pub host: Host,
    /// The cells.
    pub cells: Vec<Cell>,
    /// The links.
    pub links: Vec<Link>,
}

/// The address in /64 `prefix` with interface identifier `iid`.
pub fn in6(prefix: Ipv6Addr, iid: u64) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(prefix) | u128::from(iid))
}

/// The SLAAC address of the interface with MAC `mac` in /64 `prefix` (modified EUI-64, RFC
/// 4291 2.5.1: what Zephyr uses unless built for stable or private identifiers).
pub fn slaac(prefix: Ipv6Addr, mac: Mac) -> Ipv6Addr {
    let m = mac.octets();
    in6(
        prefix,
        u64::from_be_bytes([m[0] ^ 2, m[1], m[2], 0xff, 0xfe, m[3], m[4], m[5]]),
    )
}

impl Subnet {
    /// The `n`th host address (1 is the first after the network address).
    pub fn host(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + n)
    }

    /// Whether the two subnets share any address.
    pub fn overlaps(&self, o: &Subnet) -> bool {
        let m = self.mask() & o.mask();
        u32::from(self.network) & m == u32::from(o.network) & m
    }
}

/// One interface of a cell, in the order the cell sees them (ivnet0, ivnet1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CellIface {
    /// Index into [`Topology::links`].
    pub link: usize,
    /// Its MAC.
    pub mac: Mac,
    /// Its address (`None`: DHCP on the host bridge).
    pub address: Option<(Ipv4Addr, u8)>,
    /// Its IPv6 address (/64): SLAAC on the host bridge, `::1` or `::2` on a cell<->cell link.
    pub address6: Option<Ipv6Addr>,
    /// Whether it is the cell's link to the host bridge.
    pub to_host: bool,
}

impl Topology {
    /// The IPv6 address of cell `i` on the host bridge (SLAAC), if the network has IPv6 and
    /// the cell a link to the host.
    pub fn cell_address6(&self, i: usize) -> Option<Ipv6Addr> {
        self.cell_ifaces(i)
            .into_iter()
            .find(|f| f.to_host)
            .and_then(|f| f.address6)
    }

    /// The interfaces of cell `i`: its cell<->cell links in file order, then its link to the
    /// host bridge last.
    ///
    /// Zephyr 4.3 has no IPv4 routing table: traffic for another network leaves through the
    /// interface whose subnet shares the longest prefix with the destination, and on a tie
    /// through the last interface. With the host link last, a cell reaches the host's gateway
    /// (NAT, other networks) unless the destination is closer to a cell<->cell subnet.
    pub fn cell_ifaces(&self, i: usize) -> Vec<CellIface> {
        let me = End::Cell(i);
        let cell = &self.cells[i];
        let mut mine: Vec<(usize, &Link)> = self
            .links
            .iter()
            .enumerate()
            .filter(|(_, l)| l.ends.contains(&me))
            .collect();
        mine.sort_by_key(|(_, l)| l.ends.contains(&End::Host));
        mine.into_iter()
            .enumerate()
            .map(|(k, (li, l))| {
                let to_host = l.ends.contains(&End::Host);
                // The cell's own MAC is its host interface's (the DHCP server knows it by it);
                // the cell<->cell interfaces take derived ones.
                let mac_index = if to_host { 0 } else { k + 1 };
                let address = match (l.subnet, cell.address) {
                    (Some(sn), _) => {
                        let n = if l.ends[0] == me { 1 } else { 2 };
                        Some((sn.host(n), sn.prefix))
                    }
                    (None, Addressing::Static(a)) => Some((a, self.host.subnet.prefix)),
                    (None, Addressing::Dhcp | Addressing::None) => None,
                };
                let mac = cell.mac.iface(mac_index);
                let address6 = if to_host {
                    self.host.subnet6.map(|p| slaac(p, mac))
                } else {
                    let n = if l.ends[0] == me { 1 } else { 2 };
                    l.subnet6.map(|p| in6(p, n))
                };
                CellIface {
                    link: li,
                    mac,
                    address,
                    address6,
                    to_host,
                }
            })
            .collect()
    }

    /// The configuration file handed to cell `i` (through QEMU's fw_cfg).
    pub fn cell_config(&self, i: usize) -> ivnet_core::cell::CellConfig {
        use ivnet_core::cell::{CellConfig, IfConfig, Ipv4};
        let mut c = CellConfig::default();
        for (k, f) in self.cell_ifaces(i).iter().enumerate() {
            c.ifaces[k] = IfConfig {
                mac: Some(f.mac),
                ipv4: Some(match f.address {
                    Some((a, p)) => Ipv4::Static(a.octets(), p),
                    None => Ipv4::Dhcp,
                }),
                // A DHCP lease brings its own router; a static host-side address uses the host.
                gw: (f.to_host && f.address.is_some()).then(|| self.host.address.octets()),
                // On the host bridge the cell takes its address and router from the host's
                // router advertisements (SLAAC); a cell<->cell link has no router.
                ipv6: (!f.to_host)
                    .then_some(f.address6)
                    .flatten()
                    .map(|a| (a.octets(), 64)),
            };
            if f.to_host {
                c.default = Some(k);
            }
        }
        c
    }
}

#[cfg(test)]
mod tests;
