//! Parsing and checking a topology file ([`Topology::parse`]): the file's raw TOML form, and
//! the checks that name the line of each problem.
//!
//! About 600 lines, most of them [`Topology::parse`]: one pass over the file in its own order
//! (host, cells, links), each check next to the line bookkeeping of the value it checks.

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    host: RawHost,
    #[serde(default)]
    cell: Vec<RawCell>,
    #[serde(default)]
    link: Vec<RawLink>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHost {
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
pub(super) struct RawIsolation {
    cpu_weight: Option<Spanned<i64>>,
    cpus: Option<Spanned<String>>,
    memory_min: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawForward {
    port: Spanned<u16>,
    cell: Spanned<String>,
    to: Spanned<u16>,
    #[serde(default = "tcp")]
    proto: Spanned<String>,
}

pub(super) fn tcp() -> Spanned<String> {
    Spanned::new(0..0, "tcp".to_string())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCell {
    name: Spanned<String>,
    image: Spanned<String>,
    mac: Spanned<String>,
    address: Option<Spanned<String>>,
    #[serde(default)]
    services: Vec<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLink {
    ends: Spanned<[String; 2]>,
    #[serde(default = "one_mib")]
    size: Spanned<String>,
    subnet: Option<Spanned<String>>,
    subnet6: Option<Spanned<String>>,
    ivshmem: Option<Spanned<i64>>,
}

pub(super) fn one_mib() -> Spanned<String> {
    Spanned::new(0..0, "1M".to_string())
}

pub(super) struct Lines<'a>(&'a str);

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
pub(super) fn is_aarch64_elf(path: &Path) -> bool {
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
pub(super) fn parse_subnet6(s: &str) -> Result<Ipv6Addr, String> {
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

/// Parses "a.b.c.d/p" with p in 8..=30 and no host bits.
pub(super) fn parse_subnet(s: &str) -> Result<Subnet, String> {
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

pub(super) fn parse_isolation(
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
