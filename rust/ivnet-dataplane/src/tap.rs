//! A Linux TAP device (layer 2, no packet-info header), non-blocking.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;

const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
mod ioctl {
    #![allow(missing_docs)]
    nix::ioctl_write_int!(tunsetiff, b'T', 202);
    nix::ioctl_write_ptr!(tunsetcarrier, b'T', 226, libc::c_int);
}
use ioctl::{tunsetcarrier, tunsetiff};

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open TAP device.
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Opens (creating if needed) the TAP device `name`.
    pub fn open(name: &str) -> io::Result<Tap> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('/') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("TAP name {name:?}: must be 1 to 15 characters without '/'"),
            ));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|e| io::Error::new(e.kind(), format!("/dev/net/tun: {e}")))?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which IfReq lays out (name,
        // flags, padding to the union's size); the fd is the tun device we just opened.
        let r = unsafe { tunsetiff(file.as_raw_fd(), &mut req as *mut IfReq as u64) };
        if let Err(e) = r {
            let hint = match e {
                nix::errno::Errno::EPERM => {
                    " (creating a TAP needs CAP_NET_ADMIN: run as root or in a user+net namespace)"
                }
                nix::errno::Errno::EBUSY => " (another process holds it)",
                _ => "",
            };
            return Err(io::Error::new(
                io::Error::from(e).kind(),
                format!("TAP {name}: {e}{hint}"),
            ));
        }
        Ok(Tap {
            file,
            name: name.to_string(),
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets the TAP's carrier (`TUNSETCARRIER`, Linux 4.19+), as a NIC's follows its cable.
    /// Carrier off makes the kernel drop the interface's neighbour entries, so that a cell
    /// that comes back with another MAC is found again at once.
    pub fn set_carrier(&self, on: bool) -> io::Result<()> {
        let v: libc::c_int = on.into();
        // SAFETY: TUNSETCARRIER reads one int through the pointer, which points to `v`; the fd
        // is our attached TAP.
        unsafe { tunsetcarrier(self.file.as_raw_fd(), &v) }
            .map(|_| ())
            .map_err(|e| {
                io::Error::new(
                    io::Error::from(e).kind(),
                    format!("TAP {} carrier: {e}", self.name),
                )
            })
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}
