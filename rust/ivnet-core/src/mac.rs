//! The one MAC address type: what a topology names, what the host hands a cell and what the
//! cell applies are parsed and printed by the same code, so they cannot disagree on what a
//! valid address is.
//!
//! ```
//! use ivnet_core::mac::{Mac, MacError};
//! let m: Mac = "02:00:00:00:00:01".parse().unwrap();
//! assert_eq!(m.to_string(), "02:00:00:00:00:01");
//! assert_eq!(m.iface(1).to_string(), "02:01:00:00:00:01");
//! assert_eq!("00:00:00:00:00:00".parse::<Mac>(), Err(MacError::Zero));
//! assert_eq!("01:00:5e:00:00:01".parse::<Mac>(), Err(MacError::Multicast));
//! ```

use core::fmt;
use core::str::FromStr;

/// A unicast, non-zero Ethernet address (what an interface may use as its own).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac([u8; 6]);

/// Why a text is not an interface's MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MacError {
    /// Not six two-digit hex bytes separated by colons.
    Syntax,
    /// The group bit is set: a multicast (or broadcast) address.
    Multicast,
    /// 00:00:00:00:00:00, which Zephyr and Linux take for "no address".
    Zero,
}

impl fmt::Display for MacError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MacError::Syntax => "not a MAC address (six hex bytes like 02:00:00:00:00:01)",
            MacError::Multicast => "a multicast address (the first byte's lowest bit is set)",
            MacError::Zero => "the all-zero address",
        })
    }
}

impl Mac {
    /// The address `octets`, checked like a parsed one.
    pub fn new(octets: [u8; 6]) -> Result<Mac, MacError> {
        if octets[0] & 1 != 0 {
            Err(MacError::Multicast)
        } else if octets == [0; 6] {
            Err(MacError::Zero)
        } else {
            Ok(Mac(octets))
        }
    }

    /// The six bytes.
    pub const fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// The address of a cell's interface `k`: its own for `k` = 0 (the host link), then the
    /// same with the second byte xor `k` (its cell<->cell links). Never the zero address:
    /// 00:kk:00:00:00:00 would give it for interface kk, which gets 00:00:00:00:00:01 instead
    /// (a topology checks that all interface addresses differ).
    pub fn iface(&self, k: usize) -> Mac {
        let mut m = self.0;
        if k > 0 {
            m[1] ^= k as u8;
        }
        if m == [0; 6] {
            m[5] = 1;
        }
        Mac(m)
    }
}

impl FromStr for Mac {
    type Err = MacError;

    fn from_str(s: &str) -> Result<Mac, MacError> {
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for b in mac.iter_mut() {
            let p = parts.next().ok_or(MacError::Syntax)?;
            if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(MacError::Syntax);
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| MacError::Syntax)?;
        }
        if parts.next().is_some() {
            return Err(MacError::Syntax);
        }
        Mac::new(mac)
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    #[test]
    fn parses_what_it_prints() {
        for s in [
            "02:00:00:00:00:01",
            "fe:dc:ba:98:76:54",
            "00:00:00:00:00:01",
        ] {
            let m: Mac = s.parse().unwrap();
            assert_eq!(m.to_string(), s);
        }
        let m: Mac = "0A:1b:2C:3d:4E:5f".parse().unwrap();
        assert_eq!(m.octets(), [0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f]);
    }

    #[test]
    fn refuses_what_no_interface_may_use() {
        for s in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:01:02",
            "2:00:00:00:00:01",
            "02:00:00:00:00:0g",
            "02-00-00-00-00-01",
            "+2:00:00:00:00:01",
            "02:00:00:00:00:01:",
            " 02:00:00:00:00:01",
        ] {
            assert_eq!(s.parse::<Mac>(), Err(MacError::Syntax), "{s:?}");
        }
        assert_eq!("ff:ff:ff:ff:ff:ff".parse::<Mac>(), Err(MacError::Multicast));
        assert_eq!("03:00:00:00:00:01".parse::<Mac>(), Err(MacError::Multicast));
        assert_eq!("00:00:00:00:00:00".parse::<Mac>(), Err(MacError::Zero));
        assert_eq!(Mac::new([0; 6]), Err(MacError::Zero));
    }

    #[test]
    fn interface_addresses_stay_valid_and_distinct() {
        let m: Mac = "02:00:00:00:00:07".parse().unwrap();
        assert_eq!(m.iface(0), m);
        assert_eq!(m.iface(2).to_string(), "02:02:00:00:00:07");
        let edge: Mac = "00:01:00:00:00:00".parse().unwrap();
        let i1 = edge.iface(1);
        assert_ne!(i1.octets(), [0; 6]);
        assert_ne!(i1, edge);
        assert_eq!(Mac::new(i1.octets()), Ok(i1));
    }
}
