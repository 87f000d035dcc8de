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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    host: RawHost,
    #[serde(default)]
    cell: Vec<RawCell>,
    #[serde(default)]
    link: Vec<RawLink>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    bridge: Spanned<String>,
    subnet: Spanned<String>,
    subnet6: Option<Spanned<String>>,
    address: Option<Spanned<String>>,
    dhcp: Option<Spanned<[String; 2]>>,
    uplink: Option<Spanned<String>>,
    #[serde(default)]
    forward: Vec<RawForward>,
    isolation: Option<Spanned<RawIsolation>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIsolation {
    cpu_weight: Option<Spanned<i64>>,
    cpus: Option<Spanned<String>>,
    memory_min: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawForward {
    port: Spanned<u16>,
    cell: Spanned<String>,
    to: Spanned<u16>,
    #[serde(default = "tcp")]
    proto: Spanned<String>,
}

fn tcp() -> Spanned<String> {
    Spanned::new(0..0, "tcp".to_string())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCell {
    name: Spanned<String>,
    image: Spanned<String>,
    mac: Spanned<String>,
    address: Option<Spanned<String>>,
    #[serde(default)]
    services: Vec<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLink {
    ends: Spanned<[String; 2]>,
    #[serde(default = "one_mib")]
    size: Spanned<String>,
    subnet: Option<Spanned<String>>,
    subnet6: Option<Spanned<String>>,
    ivshmem: Option<Spanned<i64>>,
}

fn one_mib() -> Spanned<String> {
    Spanned::new(0..0, "1M".to_string())
}

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

struct Lines<'a>(&'a str);

impl Lines<'_> {
    fn at(&self, span: Range<usize>) -> usize {
        if span.start == 0 && span.end == 0 {
            return 0;
        }
        self.0[..span.start.min(self.0.len())].matches('\n').count() + 1
    }

    fn err<T>(&self, span: Range<usize>, message: impl Into<String>) -> Result<T, TopologyError> {
        Err(TopologyError {
            line: self.at(span),
            message: message.into(),
        })
    }
}

/// Whether `path` starts like a 64-bit little-endian AArch64 ELF executable (QEMU would run
/// any file it is given as a raw image, so a wrong file is caught here).
fn is_aarch64_elf(path: &Path) -> bool {
    use std::io::Read;
    let mut h = [0u8; 20];
    let ok = std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut h));
    ok.is_ok()
        && &h[..4] == b"\x7fELF"
        && h[4] == 2 // 64-bit
        && h[5] == 1 // little-endian
        && u16::from_le_bytes([h[16], h[17]]) == 2 // ET_EXEC
        && u16::from_le_bytes([h[18], h[19]]) == 183 // EM_AARCH64
}

/// Parses an IPv6 "/64" network for SLAAC and static ends: unicast, not link-local, no host
/// bits.
fn parse_subnet6(s: &str) -> Result<Ipv6Addr, String> {
    let bad = || format!("subnet6 {s:?} is not an IPv6 /64 network like fd00:20::/64");
    let (a, p) = s.split_once('/').ok_or_else(bad)?;
    let a: Ipv6Addr = a.parse().map_err(|_| bad())?;
    if p != "64" {
        return Err(format!(
            "subnet6 {s:?}: the prefix must be /64 (SLAAC builds the rest from the MAC)"
        ));
    }
    let seg = a.segments();
    if seg[4..].iter().any(|&x| x != 0) {
        return Err(format!(
            "subnet6 {s:?} has host bits set (did you mean the network address?)"
        ));
    }
    if a.is_multicast() || a.is_unspecified() || a.is_loopback() || seg[0] & 0xffc0 == 0xfe80 {
        return Err(format!(
            "subnet6 {s:?} is not a unicast network (multicast, link-local, loopback)"
        ));
    }
    Ok(a)
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

/// Parses "a.b.c.d/p" with p in 8..=30 and no host bits.
fn parse_subnet(s: &str) -> Result<Subnet, String> {
    let parsed = s
        .split_once('/')
        .and_then(|(a, p)| Some((a.parse::<Ipv4Addr>().ok()?, p.parse::<u8>().ok()?)));
    match parsed {
        Some((a, p)) if (8..=30).contains(&p) => {
            let sn = Subnet {
                network: a,
                prefix: p,
            };
            if u32::from(a) & !sn.mask() != 0 {
                return Err(format!(
                    "subnet {s} has host bits set (did you mean the network address?)"
                ));
            }
            Ok(sn)
        }
        _ => Err(format!(
            "subnet {s:?} is not an IPv4 network like 10.20.0.0/24 (prefix 8-30)"
        )),
    }
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

fn parse_isolation(
    lines: &Lines<'_>,
    iso: &Spanned<RawIsolation>,
) -> Result<isolation::Spec, TopologyError> {
    let raw = iso.get_ref();
    let mut spec = isolation::Spec::default();
    if let Some(w) = &raw.cpu_weight {
        match isolation::Spec::cpu_weight(*w.get_ref()) {
            Ok(v) => spec.cpu_weight = Some(v),
            Err(e) => return lines.err(w.span(), format!("isolation {e}")),
        }
    }
    if let Some(c) = &raw.cpus {
        spec.cpus = Some(
            c.get_ref()
                .parse()
                .or_else(|e| lines.err(c.span(), format!("isolation cpus: {e}")))?,
        );
    }
    if let Some(m) = &raw.memory_min {
        match parse_size(m.get_ref()) {
            Ok(n) if n > 0 => spec.memory_min = Some(n as u64),
            Ok(_) => return lines.err(m.span(), "isolation memory_min 0: drop it instead"),
            Err(e) => return lines.err(m.span(), format!("isolation memory_min: {e}")),
        }
    }
    if let Err(e) = spec.check() {
        return lines.err(iso.span(), format!("isolation: {e}"));
    }
    Ok(spec)
}

impl Topology {
    /// Parses and checks a topology file's text. Relative image paths are taken from `base`
    /// (the file's directory), and every image must exist.
    pub fn parse(text: &str, base: &Path) -> Result<Topology, TopologyError> {
        let lines = Lines(text);
        let raw: RawFile = toml::from_str(text).map_err(|e| TopologyError {
            line: e.span().map_or(0, |s| lines.at(s)),
            message: e.message().to_string(),
        })?;

        // Host.
        let h = &raw.host;
        // The bridge names the network and its state directory: never a path.
        if let Err(e) = check_ifname("bridge", h.bridge.get_ref()) {
            return lines.err(h.bridge.span(), e);
        }
        let subnet = match parse_subnet(h.subnet.get_ref()) {
            Ok(sn) => sn,
            Err(e) => return lines.err(h.subnet.span(), e),
        };
        let address = match &h.address {
            Some(a) => match a.get_ref().parse::<Ipv4Addr>() {
                Ok(ip) if subnet.holds(ip) => ip,
                _ => {
                    return lines.err(
                        a.span(),
                        format!(
                            "host address {:?} is not a host address in {}",
                            a.get_ref(),
                            h.subnet.get_ref()
                        ),
                    )
                }
            },
            None => Ipv4Addr::from(u32::from(subnet.network) + 1),
        };
        let dhcp = match &h.dhcp {
            Some(r) => {
                let [a, b] = r.get_ref();
                let (Ok(a), Ok(b)) = (a.parse::<Ipv4Addr>(), b.parse::<Ipv4Addr>()) else {
                    return lines.err(r.span(), "DHCP range must be two IPv4 addresses");
                };
                if !subnet.holds(a) || !subnet.holds(b) || u32::from(a) > u32::from(b) {
                    return lines.err(
                        r.span(),
                        format!(
                            "DHCP range {a} - {b} is not an ascending range inside {}",
                            h.subnet.get_ref()
                        ),
                    );
                }
                if (u32::from(a)..=u32::from(b)).contains(&u32::from(address)) {
                    return lines.err(
                        r.span(),
                        format!("DHCP range {a} - {b} holds the host's own address {address}"),
                    );
                }
                Some((a, b))
            }
            None => None,
        };
        if let Some(u) = &h.uplink {
            if let Err(e) = check_ifname("uplink", u.get_ref()) {
                return lines.err(u.span(), e);
            }
        }
        let isolation = match &h.isolation {
            Some(iso) => Some(parse_isolation(&lines, iso)?),
            None => None,
        };
        let subnet6 = match &h.subnet6 {
            Some(s6) => Some(parse_subnet6(s6.get_ref()).or_else(|e| lines.err(s6.span(), e))?),
            None => None,
        };

        // Cells.
        let mut cells = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut macs: HashMap<Mac, String> = HashMap::new();
        let mut addrs: HashMap<Ipv4Addr, String> = HashMap::new();
        addrs.insert(address, "the host".to_string());
        for c in &raw.cell {
            let name = c.name.get_ref();
            let name_ok = !name.is_empty()
                && name.len() <= 10
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if name == "host" || !name_ok {
                return lines.err(
                    c.name.span(),
                    format!("cell name {name:?}: use 1-10 letters, digits, '-' or '_' (and not \"host\")"),
                );
            }
            if names.contains_key(name) {
                return lines.err(c.name.span(), format!("cell {name:?} is defined twice"));
            }
            let mac: Mac = match c.mac.get_ref().parse() {
                Ok(m) => m,
                Err(e) => {
                    return lines.err(
                        c.mac.span(),
                        format!("MAC {:?} of cell {name:?}: {e}", c.mac.get_ref()),
                    )
                }
            };
            if let Some(other) = macs.insert(mac, name.clone()) {
                return lines.err(
                    c.mac.span(),
                    format!(
                        "MAC {} of cell {name:?} is already cell {other:?}'s",
                        c.mac.get_ref()
                    ),
                );
            }
            let addressing = if let Some(addr) = &c.address {
                let a = addr.get_ref();
                if a == "dhcp" {
                    if dhcp.is_none() {
                        return lines.err(
                            addr.span(),
                            format!("cell {name:?} wants DHCP but [host] has no dhcp range"),
                        );
                    }
                    Addressing::Dhcp
                } else {
                    match a.parse::<Ipv4Addr>() {
                    Ok(ip) if subnet.holds(ip) => {
                        if let Some((lo, hi)) = dhcp {
                            if (u32::from(lo)..=u32::from(hi)).contains(&u32::from(ip)) {
                                return lines.err(addr.span(), format!("address {ip} of cell {name:?} overlaps the DHCP range {lo} - {hi}"));
                            }
                        }
                        if let Some(other) = addrs.insert(ip, format!("cell {name:?}")) {
                            return lines.err(addr.span(), format!("address {ip} of cell {name:?} is already {other}'s"));
                        }
                        Addressing::Static(ip)
                    }
                    _ => {
                        return lines.err(
                            addr.span(),
                            format!("address {a:?} of cell {name:?} is neither \"dhcp\" nor a host address in {}", h.subnet.get_ref()),
                        )
                    }
                }
                }
            } else {
                Addressing::None
            };
            let image = base.join(c.image.get_ref());
            if !image.is_file() {
                return lines.err(
                    c.image.span(),
                    format!("image {} of cell {name:?} does not exist", image.display()),
                );
            }
            if !is_aarch64_elf(&image) {
                return lines.err(
                    c.image.span(),
                    format!(
                        "image {} of cell {name:?} is not an AArch64 ELF executable (a qemu_cortex_a53 build's zephyr/zephyr.elf)",
                        image.display()
                    ),
                );
            }
            names.insert(name.clone(), cells.len());
            cells.push(Cell {
                name: name.clone(),
                image,
                mac,
                address: addressing,
                services: c.services.clone(),
            });
        }

        // Links.
        let mut links = Vec::new();
        let mut seen: HashSet<[End; 2]> = HashSet::new();
        for l in &raw.link {
            let end = |n: &str| -> Result<End, TopologyError> {
                if n == "host" {
                    Ok(End::Host)
                } else {
                    names.get(n).map(|&i| End::Cell(i)).map_or_else(
                        || {
                            lines.err(
                                l.ends.span(),
                                format!("link end {n:?} is neither \"host\" nor a cell"),
                            )
                        },
                        Ok,
                    )
                }
            };
            let [a, b] = l.ends.get_ref();
            let ends = [end(a)?, end(b)?];
            if ends[0] == ends[1] {
                return lines.err(l.ends.span(), format!("link joins {a:?} to itself"));
            }
            let key = if format!("{:?}", ends[0]) <= format!("{:?}", ends[1]) {
                ends
            } else {
                [ends[1], ends[0]]
            };
            if !seen.insert(key) {
                return lines.err(l.ends.span(), format!("{a:?} and {b:?} are linked twice"));
            }
            let size_span = if l.size.span() == (0..0) {
                l.ends.span()
            } else {
                l.size.span()
            };
            let size = crate::size::parse_size(l.size.get_ref())
                .map_err(|e| e.to_string())
                .and_then(|n| {
                    ivnet_core::v1::check_size(n)
                        .map(|_| n)
                        .map_err(|e| e.to_string())
                })
                .map_err(|e| TopologyError {
                    line: lines.at(size_span),
                    message: format!("link {a:?} - {b:?}: size {:?}: {e}", l.size.get_ref()),
                })?;
            let cell_to_cell = !ends.contains(&End::Host);
            let link_subnet = match (&l.subnet, cell_to_cell) {
                (None, true) => {
                    return lines.err(
                        l.ends.span(),
                        format!("cell<->cell link {a:?} - {b:?} needs its own subnet (subnet = \"10.30.0.0/30\")"),
                    )
                }
                (Some(sn), false) => {
                    return lines.err(
                        sn.span(),
                        format!("link {a:?} - {b:?} goes to the host, whose subnet is [host] subnet: drop this one"),
                    )
                }
                (None, false) => None,
                (Some(sn), true) => {
                    let parsed = parse_subnet(sn.get_ref()).or_else(|e| lines.err(sn.span(), e))?;
                    if parsed.overlaps(&subnet) {
                        return lines.err(sn.span(), format!("subnet {} of link {a:?} - {b:?} overlaps the host subnet {}", sn.get_ref(), h.subnet.get_ref()));
                    }
                    if let Some(o) = links.iter().filter_map(|o: &Link| o.subnet).find(|o| o.overlaps(&parsed)) {
                        return lines.err(sn.span(), format!("subnet {} of link {a:?} - {b:?} overlaps another link's {}/{}", sn.get_ref(), o.network, o.prefix));
                    }
                    Some(parsed)
                }
            };
            let link_subnet6 = match (&l.subnet6, cell_to_cell) {
                (None, _) => None,
                (Some(s6), false) => {
                    return lines.err(
                        s6.span(),
                        format!("link {a:?} - {b:?} goes to the host, whose IPv6 subnet is [host] subnet6: drop this one"),
                    )
                }
                (Some(s6), true) => {
                    let parsed = parse_subnet6(s6.get_ref()).or_else(|e| lines.err(s6.span(), e))?;
                    if subnet6 == Some(parsed) {
                        return lines.err(s6.span(), format!("subnet6 {} of link {a:?} - {b:?} is the host's", s6.get_ref()));
                    }
                    if links.iter().any(|o: &Link| o.subnet6 == Some(parsed)) {
                        return lines.err(s6.span(), format!("subnet6 {} of link {a:?} - {b:?} is another link's", s6.get_ref()));
                    }
                    Some(parsed)
                }
            };
            let ivshmem = match &l.ivshmem {
                None => 1,
                Some(v) if *v.get_ref() == 1 || *v.get_ref() == 2 => *v.get_ref() as u8,
                Some(v) => {
                    return lines.err(
                        v.span(),
                        format!(
                            "link {a:?} - {b:?}: ivshmem = {}: 1 (QEMU's ivshmem-doorbell) or 2 (ivshmem 2.0)",
                            v.get_ref()
                        ),
                    )
                }
            };
            for e in ends {
                if let End::Cell(i) = e {
                    if let Some(o) = links
                        .iter()
                        .find(|o: &&Link| o.ends.contains(&e) && o.ivshmem != ivshmem)
                    {
                        return lines.err(
                            l.ends.span(),
                            format!(
                                "cell {:?} would be on ivshmem {} and ivshmem {ivshmem} links (its image is built for one generation; another link of it uses {})",
                                cells[i].name, o.ivshmem, o.ivshmem
                            ),
                        );
                    }
                    if links.iter().filter(|o: &&Link| o.ends.contains(&e)).count()
                        >= MAX_CELL_LINKS
                    {
                        return lines.err(
                            l.ends.span(),
                            format!("cell {:?} would have more than {MAX_CELL_LINKS} links (a cell image carries {MAX_CELL_LINKS} ivnet interfaces)", cells[i].name),
                        );
                    }
                }
            }
            links.push(Link {
                ends,
                size,
                subnet: link_subnet,
                subnet6: link_subnet6,
                ivshmem,
            });
        }
        // A cell on the host bridge needs an address there; one off it must not give one.
        for (i, c) in cells.iter().enumerate() {
            let on_bridge = links
                .iter()
                .any(|l| l.ends.contains(&End::Cell(i)) && l.ends.contains(&End::Host));
            let raw_cell = &raw.cell[i];
            match (on_bridge, &raw_cell.address) {
                (true, None) => {
                    return lines.err(
                        raw_cell.name.span(),
                        format!(
                            "cell {:?} is linked to the host but has no address (\"dhcp\" or one in {})",
                            c.name,
                            h.subnet.get_ref()
                        ),
                    )
                }
                (false, Some(a)) => {
                    return lines.err(
                        a.span(),
                        format!(
                            "cell {:?} has no link to the host, so no address on its subnet: drop this line",
                            c.name
                        ),
                    )
                }
                _ => {}
            }
        }
        // Every interface's MAC is unique (a cell's second interface takes its MAC with the
        // second byte's low bit flipped).
        let mut all_macs: HashMap<Mac, String> = HashMap::new();
        for (i, c) in cells.iter().enumerate() {
            for k in 0..=MAX_CELL_LINKS {
                let m = c.mac.iface(k);
                if let Some(other) = all_macs.insert(m, format!("{} interface {k}", c.name)) {
                    let line = raw.cell[i].mac.span();
                    return lines.err(line, format!("MAC {} of cell {:?} interface {k} is already {other}'s (a cell's cell<->cell interfaces use its MAC with the second byte xor 1, 2)", m, c.name));
                }
            }
        }

        // Forwards.
        let mut forwards = Vec::new();
        let mut ports: HashSet<(String, u16)> = HashSet::new();
        for f in &h.forward {
            let proto = f.proto.get_ref().to_ascii_lowercase();
            if proto != "tcp" && proto != "udp" {
                return lines.err(
                    f.proto.span(),
                    format!("protocol {:?} is neither tcp nor udp", f.proto.get_ref()),
                );
            }
            let Some(&cell) = names.get(f.cell.get_ref()) else {
                return lines.err(
                    f.cell.span(),
                    format!("forward to unknown cell {:?}", f.cell.get_ref()),
                );
            };
            if !links
                .iter()
                .any(|l| l.ends.contains(&End::Cell(cell)) && l.ends.contains(&End::Host))
            {
                return lines.err(
                    f.cell.span(),
                    format!(
                        "cell {:?} has no link to the host to forward to",
                        f.cell.get_ref()
                    ),
                );
            }
            if *f.port.get_ref() == 0 || *f.to.get_ref() == 0 {
                return lines.err(f.port.span(), "port 0 cannot be forwarded");
            }
            if !ports.insert((proto.clone(), *f.port.get_ref())) {
                return lines.err(
                    f.port.span(),
                    format!(
                        "host port {}/{proto} is already forwarded",
                        f.port.get_ref()
                    ),
                );
            }
            forwards.push(Forward {
                port: *f.port.get_ref(),
                proto,
                cell,
                to: *f.to.get_ref(),
            });
        }

        Ok(Topology {
            host: Host {
                bridge: h.bridge.get_ref().clone(),
                subnet,
                address,
                subnet6,
                dhcp,
                uplink: h.uplink.as_ref().map(|u| u.get_ref().clone()),
                forwards,
                isolation,
            },
            cells,
            links,
        })
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
mod tests {
    use super::*;

    /// A directory holding `cell.elf`, the start of an AArch64 ELF executable (all the
    /// check reads), and `text.elf`, which is not one.
    fn base() -> PathBuf {
        static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
        DIR.get_or_init(|| {
            let d = std::env::temp_dir().join(format!("ivnet-topology-{}", std::process::id()));
            std::fs::create_dir_all(&d).unwrap();
            let mut h = vec![0x7f, b'E', b'L', b'F', 2, 1, 1];
            h.resize(16, 0);
            h.extend_from_slice(&2u16.to_le_bytes());
            h.extend_from_slice(&183u16.to_le_bytes());
            h.resize(64, 0);
            std::fs::write(d.join("cell.elf"), h).unwrap();
            std::fs::write(d.join("text.elf"), "not a kernel").unwrap();
            d
        })
        .clone()
    }

    const GOOD: &str = r#"
[host]
bridge = "ivbr0"
subnet = "10.20.0.0/24"
dhcp = ["10.20.0.100", "10.20.0.199"]
uplink = "veth-out"
isolation = { cpu_weight = 1000, cpus = "0-1", memory_min = "256M" }

[[host.forward]]
port = 8080
cell = "c1"
to = 4242

[[cell]]
name = "c1"
image = "cell.elf"
mac = "02:00:00:00:00:01"
address = "dhcp"
services = [4242]

[[cell]]
name = "c2"
image = "cell.elf"
mac = "02:00:00:00:00:02"
address = "10.20.0.12"

[[link]]
ends = ["c1", "host"]

[[link]]
ends = ["c2", "host"]

[[link]]
ends = ["c1", "c2"]
size = "2M"
subnet = "10.30.0.0/30"
"#;

    #[test]
    fn a_good_file_parses() {
        let t = Topology::parse(GOOD, &base()).unwrap();
        assert_eq!(t.host.address, Ipv4Addr::new(10, 20, 0, 1));
        assert_eq!(t.cells.len(), 2);
        assert_eq!(
            t.cells[1].address,
            Addressing::Static(Ipv4Addr::new(10, 20, 0, 12))
        );
        assert_eq!(t.links[2].ends, [End::Cell(0), End::Cell(1)]);
        assert_eq!(t.links[2].size, 2 << 20);
        assert_eq!(t.host.forwards[0].cell, 0);
        assert_eq!(t.host.forwards[0].proto, "tcp");
    }

    #[test]
    fn ivshmem_generation_per_link() {
        let t = Topology::parse(GOOD, &base()).unwrap();
        assert!(t.links.iter().all(|l| l.ivshmem == 1), "v1 by default");
        // Every link of c1 and c2 on ivshmem 2.0.
        let v2 = GOOD.replace("[[link]]\n", "[[link]]\nivshmem = 2\n");
        let t = Topology::parse(&v2, &base()).unwrap();
        assert!(t.links.iter().all(|l| l.ivshmem == 2));
        let e = bad(
            "ends = [\"c1\", \"c2\"]",
            "ends = [\"c1\", \"c2\"]\nivshmem = 3",
        );
        assert!(e.message.contains("ivshmem = 3"), "{e}");
        assert_eq!(e.line, line_of("ends = [\"c1\", \"c2\"]") + 1);
        // c1's link to the host on v1, its link to c2 on v2: refused, naming the cell.
        let e = bad(
            "ends = [\"c1\", \"c2\"]",
            "ends = [\"c1\", \"c2\"]\nivshmem = 2",
        );
        assert!(
            e.message
                .contains("cell \"c1\" would be on ivshmem 1 and ivshmem 2"),
            "{e}"
        );
    }

    /// Replaces `from` with `to` in the good file and returns the error.
    fn bad(from: &str, to: &str) -> TopologyError {
        assert!(GOOD.contains(from), "{from}");
        Topology::parse(&GOOD.replacen(from, to, 1), &base()).unwrap_err()
    }

    fn line_of(needle: &str) -> usize {
        GOOD[..GOOD.find(needle).unwrap()].matches('\n').count() + 1
    }

    #[test]
    fn isolation_settings() {
        let t = Topology::parse(GOOD, &base()).unwrap();
        let iso = t.host.isolation.unwrap();
        assert_eq!(iso.cpu_weight, Some(1000));
        assert_eq!(iso.cpus.unwrap().to_string(), "0-1");
        assert_eq!(iso.memory_min, Some(256 << 20));
        let at = line_of("isolation = ");
        for (to, says) in [
            ("cpu_weight = 0,", "cpu_weight 0: use 1..10000"),
            ("cpu_weight = 20000,", "cpu_weight 20000"),
            ("cpu_weight = \"x\",", "invalid type"),
        ] {
            let e = bad("cpu_weight = 1000,", to);
            assert_eq!(e.line, at, "{e}");
            assert!(e.message.contains(says), "{e}");
        }
        let e = bad("cpus = \"0-1\"", "cpus = \"1-0\"");
        assert!(
            e.message.contains("isolation cpus: CPU list \"1-0\""),
            "{e}"
        );
        let e = bad("memory_min = \"256M\"", "memory_min = \"lots\"");
        assert!(
            e.message.contains("isolation memory_min: invalid size"),
            "{e}"
        );
        let e = bad("memory_min = \"256M\"", "memory_max = \"256M\"");
        assert!(e.message.contains("memory_max"), "{e}");
        let e = bad(
            "isolation = { cpu_weight = 1000, cpus = \"0-1\", memory_min = \"256M\" }",
            "isolation = {}",
        );
        assert_eq!(e.line, at, "{e}");
        assert!(e.message.contains("asks for nothing"), "{e}");
    }

    #[test]
    fn every_mistake_is_named_with_its_line() {
        let e = bad("mac = \"02:00:00:00:00:02\"", "mac = \"02:00:00:00:00:01\"");
        assert_eq!(e.line, line_of("mac = \"02:00:00:00:00:02\""));
        assert!(e.message.contains("already cell \"c1\"'s"), "{e}");

        let e = bad("ends = [\"c2\", \"host\"]", "ends = [\"c3\", \"host\"]");
        assert_eq!(e.line, line_of("ends = [\"c2\", \"host\"]"));
        assert!(e.message.contains("\"c3\""), "{e}");

        let e = bad("address = \"10.20.0.12\"", "address = \"10.20.0.150\"");
        assert!(e.message.contains("overlaps the DHCP range"), "{e}");

        let e = bad("address = \"10.20.0.12\"", "address = \"10.30.0.12\"");
        assert!(e.message.contains("10.20.0.0/24"), "{e}");

        let e = bad("image = \"cell.elf\"", "image = \"text.elf\"");
        assert!(e.message.contains("not an AArch64 ELF"), "{e}");

        let e = bad("image = \"cell.elf\"", "image = \"no-such.elf\"");
        assert_eq!(e.line, line_of("image = \"cell.elf\""));
        assert!(e.message.contains("does not exist"), "{e}");

        let e = bad("size = \"2M\"", "size = \"100K\"");
        assert_eq!(e.line, line_of("size = \"2M\""));
        assert!(e.message.contains("100K"), "{e}");

        let e = bad("name = \"c2\"", "name = \"c.2\"");
        assert!(e.message.contains("letters"), "{e}");

        let e = bad("name = \"c2\"", "name = \"c1\"");
        assert!(e.message.contains("defined twice"), "{e}");

        let e = bad(
            "to = 4242\n",
            "to = 4242\n\n[[host.forward]]\nport = 8080\ncell = \"c2\"\nto = 1\n",
        );
        assert!(e.message.contains("8080/tcp is already forwarded"), "{e}");

        let e = bad(
            "ends = [\"c1\", \"c2\"]",
            "ends = [\"c2\", \"c1\"]\nsubnet = \"10.31.0.0/30\"\n[[link]]\nends = [\"c1\", \"c2\"]",
        );
        assert!(e.message.contains("linked twice"), "{e}");

        let e = bad("subnet = \"10.20.0.0/24\"", "subnet = \"10.20.0.1/24\"");
        assert!(e.message.contains("host bits"), "{e}");

        let e = bad("mac = \"02:00:00:00:00:01\"", "mac = \"01:00:00:00:00:01\"");
        assert!(e.message.contains("multicast"), "{e}");

        // The cell would ignore an all-zero MAC (and take a random one), so the check refuses
        // it, with the same rule the cell applies (ivnet_core::mac).
        let e = bad("mac = \"02:00:00:00:00:01\"", "mac = \"00:00:00:00:00:00\"");
        assert_eq!(e.line, line_of("mac = \"02:00:00:00:00:01\""));
        assert!(e.message.contains("all-zero"), "{e}");

        let e = bad("mac = \"02:00:00:00:00:01\"", "mac = \"02:00:00:00:00:1\"");
        assert!(e.message.contains("six hex bytes"), "{e}");

        let e = bad("bridge = \"ivbr0\"", "bridge = \"ivbr0\"\ncolour = 3");
        assert_eq!(e.line, line_of("bridge = \"ivbr0\"") + 1);
        assert!(e.message.contains("colour"), "{e}");

        let e = bad(
            "dhcp = [\"10.20.0.100\", \"10.20.0.199\"]",
            "dhcp = [\"10.20.0.0\", \"10.20.0.9\"]",
        );
        assert!(e.message.contains("DHCP range"), "{e}");

        let e = bad("subnet = \"10.30.0.0/30\"", "");
        assert!(e.message.contains("needs its own subnet"), "{e}");
        let e = bad("subnet = \"10.30.0.0/30\"", "subnet = \"10.20.0.0/30\"");
        assert!(e.message.contains("overlaps the host subnet"), "{e}");
        let e = bad(
            "ends = [\"c2\", \"host\"]",
            "ends = [\"c2\", \"host\"]\nsubnet = \"10.40.0.0/30\"",
        );
        assert!(e.message.contains("drop this one"), "{e}");
        let e = bad(
            "subnet = \"10.30.0.0/30\"",
            "subnet = \"10.30.0.0/30\"\n[[link]]\nends = [\"c1\", \"c3\"]\nsubnet = \"10.30.1.0/30\"\n[[cell]]\nname = \"c3\"\nimage = \"cell.elf\"\nmac = \"02:00:00:00:00:03\"\naddress = \"10.20.0.13\"",
        );
        assert!(e.message.contains("more than 2 links"), "{e}");
        let e = bad("mac = \"02:00:00:00:00:02\"", "mac = \"02:01:00:00:00:01\"");
        assert!(e.message.contains("interface"), "{e}");
    }

    #[test]
    fn cells_get_their_interfaces_in_link_order() {
        use ivnet_core::cell::Ipv4;
        let t = Topology::parse(GOOD, &base()).unwrap();
        // The host link goes last (see cell_ifaces).
        let c1 = t.cell_ifaces(0);
        assert_eq!(c1.len(), 2);
        assert_eq!((c1[1].link, c1[1].address, c1[1].to_host), (0, None, true));
        assert_eq!(c1[0].address, Some((Ipv4Addr::new(10, 30, 0, 1), 30)));
        assert_eq!(c1[0].mac.octets(), [2, 1, 0, 0, 0, 1]);
        assert_eq!(c1[1].mac.octets(), [2, 0, 0, 0, 0, 1]);
        let c2 = t.cell_config(1);
        assert_eq!(c2.ifaces[1].ipv4, Some(Ipv4::Static([10, 20, 0, 12], 24)));
        assert_eq!(c2.ifaces[1].gw, Some([10, 20, 0, 1]));
        assert_eq!(c2.ifaces[0].ipv4, Some(Ipv4::Static([10, 30, 0, 2], 30)));
        assert_eq!(c2.ifaces[0].gw, None);
        assert_eq!(c2.default, Some(1));
        let c1 = t.cell_config(0);
        assert_eq!(c1.ifaces[1].ipv4, Some(Ipv4::Dhcp));
    }

    /// The good file, dual-stack.
    fn dual() -> String {
        GOOD.replacen(
            "subnet = \"10.20.0.0/24\"",
            "subnet = \"10.20.0.0/24\"\nsubnet6 = \"fd00:20::/64\"",
            1,
        )
        .replacen(
            "subnet = \"10.30.0.0/30\"",
            "subnet = \"10.30.0.0/30\"\nsubnet6 = \"fd00:30::/64\"",
            1,
        )
    }

    #[test]
    fn ipv6_addresses() {
        let t = Topology::parse(&dual(), &base()).unwrap();
        let p: Ipv6Addr = "fd00:20::".parse().unwrap();
        assert_eq!(t.host.subnet6, Some(p));
        // SLAAC (modified EUI-64) of 02:00:00:00:00:01 on the bridge.
        assert_eq!(
            t.cell_address6(0),
            Some("fd00:20::ff:fe00:1".parse().unwrap())
        );
        let c1 = t.cell_ifaces(0);
        assert_eq!(c1[0].address6, Some("fd00:30::1".parse().unwrap()));
        let c2 = t.cell_config(1);
        let want: Ipv6Addr = "fd00:30::2".parse().unwrap();
        assert_eq!(c2.ifaces[0].ipv6, Some((want.octets(), 64)));
        // On the bridge: SLAAC from the host's advertisements, nothing in the file.
        assert_eq!(c2.ifaces[1].ipv6, None);
        // Without subnet6, no IPv6 anywhere.
        let t = Topology::parse(GOOD, &base()).unwrap();
        assert_eq!(t.cell_address6(0), None);
        assert!(t.cell_config(0).ifaces.iter().all(|f| f.ipv6.is_none()));
    }

    #[test]
    fn ipv6_mistakes_are_named() {
        let text = dual();
        let bad6 = |from: &str, to: &str| {
            assert!(text.contains(from), "{from}");
            Topology::parse(&text.replacen(from, to, 1), &base()).unwrap_err()
        };
        for (to, says) in [
            ("fd00:20::/48", "must be /64"),
            ("fd00:20::1/64", "host bits"),
            ("fe80::/64", "not a unicast"),
            ("ff02::/64", "not a unicast"),
            ("10.20.0.0/24", "not an IPv6 /64"),
            ("fd00:20::", "not an IPv6 /64"),
        ] {
            let e = bad6("subnet6 = \"fd00:20::/64\"", &format!("subnet6 = \"{to}\""));
            assert!(e.message.contains(says), "{to}: {e}");
            assert_eq!(e.line, 5, "{e}");
        }
        let e = bad6("subnet6 = \"fd00:30::/64\"", "subnet6 = \"fd00:20::/64\"");
        assert!(e.message.contains("is the host's"), "{e}");
        let e = bad6(
            "[[link]]\nends = [\"c2\", \"host\"]",
            "[[link]]\nends = [\"c2\", \"host\"]\nsubnet6 = \"fd00:40::/64\"",
        );
        assert!(e.message.contains("[host] subnet6"), "{e}");
    }

    #[test]
    fn slaac_is_modified_eui64() {
        let p: Ipv6Addr = "2001:db8:1:2::".parse().unwrap();
        assert_eq!(
            slaac(p, Mac::new([0x02, 0x1e, 0x6e, 0x55, 0x62, 0x01]).unwrap()),
            "2001:db8:1:2:1e:6eff:fe55:6201"
                .parse::<Ipv6Addr>()
                .unwrap()
        );
    }

    #[test]
    fn subnet_membership() {
        let s = Subnet {
            network: Ipv4Addr::new(10, 20, 0, 0),
            prefix: 24,
        };
        assert!(s.holds(Ipv4Addr::new(10, 20, 0, 1)));
        assert!(!s.holds(Ipv4Addr::new(10, 20, 0, 0)));
        assert!(!s.holds(Ipv4Addr::new(10, 20, 0, 255)));
        assert!(!s.holds(Ipv4Addr::new(10, 20, 1, 1)));
    }
}
