//! The cell configuration file: what the host (`ivnet up`) tells a Zephyr cell about its
//! interfaces, through QEMU's fw_cfg device (file `opt/ivnet/cell`). Text, one `key=value`
//! per line:
//!
//! ```text
//! name=c2
//! if0.mac=02:01:00:00:00:02
//! if0.ipv4=10.30.0.1/30
//! if1.mac=02:00:00:00:00:02
//! if1.ipv4=10.20.0.12/24
//! if0.ipv6=fd00:30::1/64
//! if1.gw=10.20.0.1
//! default=1
//! ```
//!
//! `ifN` is the cell's Nth ivnet interface (devicetree instance N); `default` names the
//! interface that carries the default route. `ifN.ipv6` is a static IPv6 address (a
//! cell<->cell link's; on the host bridge a cell takes SLAAC addresses from router
//! advertisements). The host renders the file with `Display`; the
//! cell parses it with [`parse`], as untrusted text: a line that does not parse is reported
//! and skipped.
//!
//! ```
//! use ivnet_core::cell::{parse, CellConfig, Ipv4};
//! let c = parse(b"if0.ipv4=10.20.0.12/24\nif0.gw=10.20.0.1\n", |_| {});
//! assert_eq!(c.ifaces[0].ipv4, Some(Ipv4::Static([10, 20, 0, 12], 24)));
//! ```

use core::fmt;

use crate::mac::Mac;

/// Interfaces a cell can configure (devicetree instances 0..MAX_IFACES).
pub const MAX_IFACES: usize = 4;
/// The fw_cfg file name the host passes the file as (`-fw_cfg name=opt/ivnet/cell,file=...`).
pub const FW_CFG_NAME: &str = "opt/ivnet/cell";
/// Largest file a cell reads.
pub const MAX_FILE: usize = 1024;

/// How an interface gets its IPv4 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ipv4 {
    /// DHCPv4 client.
    Dhcp,
    /// A fixed address and prefix length.
    Static([u8; 4], u8),
}

/// One interface's settings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfConfig {
    /// MAC address.
    pub mac: Option<Mac>,
    /// IPv4 addressing.
    pub ipv4: Option<Ipv4>,
    /// Default gateway through this interface.
    pub gw: Option<[u8; 4]>,
    /// A static IPv6 address and its prefix length (on-link).
    pub ipv6: Option<([u8; 16], u8)>,
}

/// The whole configuration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CellConfig {
    /// Per interface.
    pub ifaces: [IfConfig; MAX_IFACES],
    /// The interface to make the default one.
    pub default: Option<usize>,
}

fn parse_ip(s: &str) -> Option<[u8; 4]> {
    let mut ip = [0u8; 4];
    let mut parts = s.split('.');
    for b in ip.iter_mut() {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        *b = p.parse().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(ip)
}

fn parse_ipv4(s: &str) -> Option<Ipv4> {
    if s == "dhcp" {
        return Some(Ipv4::Dhcp);
    }
    let (a, p) = s.split_once('/')?;
    let prefix: u8 = p.parse().ok()?;
    if !(1..=32).contains(&prefix) {
        return None;
    }
    Some(Ipv4::Static(parse_ip(a)?, prefix))
}

fn parse_ipv6(s: &str) -> Option<([u8; 16], u8)> {
    let (a, p) = s.split_once('/')?;
    let prefix: u8 = p.parse().ok()?;
    let a: core::net::Ipv6Addr = a.parse().ok()?;
    if !(1..=128).contains(&prefix) || a.is_multicast() || a.is_unspecified() || a.is_loopback() {
        return None;
    }
    Some((a.octets(), prefix))
}

/// Applies one `key=value` line; false if it is not understood.
fn apply_line(cfg: &mut CellConfig, line: &str) -> bool {
    let Some((key, value)) = line.split_once('=') else {
        return false;
    };
    let (key, value) = (key.trim(), value.trim());
    match key {
        "name" => return true,
        "default" => {
            return match value.parse::<usize>() {
                Ok(i) if i < MAX_IFACES => {
                    cfg.default = Some(i);
                    true
                }
                _ => false,
            }
        }
        _ => {}
    }
    let Some((ifname, field)) = key.split_once('.') else {
        return false;
    };
    let Some(i) = ifname
        .strip_prefix("if")
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|&i| i < MAX_IFACES)
    else {
        return false;
    };
    let ifc = &mut cfg.ifaces[i];
    match field {
        "mac" => value.parse().map(|m| ifc.mac = Some(m)).is_ok(),
        "ipv4" => parse_ipv4(value).map(|a| ifc.ipv4 = Some(a)).is_some(),
        "gw" => parse_ip(value).map(|g| ifc.gw = Some(g)).is_some(),
        "ipv6" => parse_ipv6(value).map(|a| ifc.ipv6 = Some(a)).is_some(),
        _ => false,
    }
}

/// Parses the file; calls `bad` with each line that is not understood.
pub fn parse(text: &[u8], mut bad: impl FnMut(&str)) -> CellConfig {
    let mut cfg = CellConfig::default();
    for raw in text.split(|&b| b == b'\n') {
        let Ok(line) = core::str::from_utf8(raw) else {
            bad("(not UTF-8)");
            continue;
        };
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if !apply_line(&mut cfg, line) {
            bad(line);
        }
    }
    cfg
}

/// The netmask of a prefix length.
pub fn netmask(prefix: u8) -> [u8; 4] {
    let m: u32 = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix.min(32) as u32)
    };
    m.to_be_bytes()
}

struct Ip([u8; 4]);

impl fmt::Display for Ip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = self.0;
        write!(f, "{}.{}.{}.{}", a[0], a[1], a[2], a[3])
    }
}

impl fmt::Display for CellConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.ifaces.iter().enumerate() {
            if let Some(m) = c.mac {
                writeln!(f, "if{i}.mac={m}")?;
            }
            match c.ipv4 {
                Some(Ipv4::Dhcp) => writeln!(f, "if{i}.ipv4=dhcp")?,
                Some(Ipv4::Static(a, p)) => writeln!(f, "if{i}.ipv4={}/{p}", Ip(a))?,
                None => {}
            }
            if let Some(g) = c.gw {
                writeln!(f, "if{i}.gw={}", Ip(g))?;
            }
            if let Some((a, p)) = c.ipv6 {
                writeln!(f, "if{i}.ipv6={}/{p}", core::net::Ipv6Addr::from(a))?;
            }
        }
        if let Some(d) = self.default {
            writeln!(f, "default={d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_cell_file() {
        let text = b"name=c1\nif0.mac=02:00:00:00:00:01\nif0.ipv4=dhcp\n\n# comment\nif1.ipv4=10.30.0.1/30\nif1.gw=10.30.0.2\nif1.ipv6=fd00:30::2/64\ndefault=0\n";
        let mut bad = 0;
        let c = parse(text, |_| bad += 1);
        assert_eq!(bad, 0);
        assert_eq!(
            c.ifaces[0].mac.map(|m| m.octets()),
            Some([2, 0, 0, 0, 0, 1])
        );
        assert_eq!(c.ifaces[0].ipv4, Some(Ipv4::Dhcp));
        assert_eq!(c.ifaces[1].ipv4, Some(Ipv4::Static([10, 30, 0, 1], 30)));
        assert_eq!(c.ifaces[1].gw, Some([10, 30, 0, 2]));
        let want: core::net::Ipv6Addr = "fd00:30::2".parse().unwrap();
        assert_eq!(c.ifaces[1].ipv6, Some((want.octets(), 64)));
        assert_eq!(c.default, Some(0));
    }

    #[test]
    fn rejects_bad_lines() {
        let text = b"if0.mac=01:00:00:00:00:01\nif0.mac=00:00:00:00:00:00\nif9.ipv4=dhcp\nif0.ipv4=10.0.0.300/24\nif0.ipv4=10.0.0.1/33\nif0.gw=1.2.3\nnonsense\nif0.x=1\n\xff\nif0.ipv6=fd00::1\nif0.ipv6=fd00::1/129\nif0.ipv6=ff02::1/64\nif0.ipv6=::/64\nif0.ipv6=fd00:::1/64\n";
        let mut bad = 0;
        let c = parse(text, |_| bad += 1);
        assert_eq!(bad, 14);
        assert_eq!(c, CellConfig::default());
    }

    #[test]
    fn netmasks() {
        assert_eq!(netmask(24), [255, 255, 255, 0]);
        assert_eq!(netmask(30), [255, 255, 255, 252]);
        assert_eq!(netmask(32), [255, 255, 255, 255]);
    }

    #[test]
    fn renders_what_it_parses() {
        let mut c = CellConfig::default();
        c.ifaces[0] = IfConfig {
            mac: Mac::new([2, 0, 0, 0, 0, 7]).ok(),
            ipv4: Some(Ipv4::Dhcp),
            gw: None,
            ipv6: None,
        };
        c.ifaces[1] = IfConfig {
            mac: Mac::new([2, 0xab, 0, 0, 1, 7]).ok(),
            ipv4: Some(Ipv4::Static([10, 30, 0, 1], 30)),
            gw: Some([10, 30, 0, 2]),
            ipv6: Some(([0xfd, 0, 0, 0x30, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], 64)),
        };
        c.default = Some(0);
        let text = std::format!("{c}");
        let mut bad = 0;
        assert_eq!(parse(text.as_bytes(), |_| bad += 1), c);
        assert_eq!(bad, 0);
    }
}
