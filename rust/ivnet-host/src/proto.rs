//! QEMU's ivshmem-server wire protocol: little-endian `i64` messages on a UNIX stream socket,
//! each optionally carrying one file descriptor (SCM_RIGHTS).
//!
//! On connect the server sends the protocol version (0), the client's id, `-1` with the shared
//! memory fd, then `P` + eventfd for each vector of each existing peer `P`, then `own id` +
//! eventfd for each of the client's own vectors. Later, `P` + fd announces a vector of a new
//! peer and `P` without fd says that `P` left. Clients never write.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

/// Most file descriptors one message can carry (Linux's SCM_MAX_FD).
const SCM_MAX_FD: usize = 253;

/// The only protocol version QEMU's ivshmem device speaks.
pub const PROTOCOL_VERSION: i64 = 0;

/// Sends one message, with `fd` attached when given.
pub fn send_msg(sock: BorrowedFd<'_>, value: i64, fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
    let bytes = value.to_le_bytes();
    let iov = [IoSlice::new(&bytes)];
    let raw;
    let cmsgs: &[ControlMessage] = match fd {
        Some(f) => {
            raw = [f.as_raw_fd()];
            &[ControlMessage::ScmRights(&raw)]
        }
        None => &[],
    };
    let n = sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
    if n != 8 {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short ivshmem message",
        ));
    }
    Ok(())
}

/// Receives one message: `Ok(None)` at end of stream.
pub fn recv_msg(sock: BorrowedFd<'_>) -> io::Result<Option<(i64, Option<OwnedFd>)>> {
    let mut bytes = [0u8; 8];
    let mut got = 0;
    let mut fd = None;
    while got < 8 {
        // Room for as many fds as one message can carry (the kernel's SCM_MAX_FD). With a
        // smaller buffer the kernel installs the fds that fit and sets MSG_CTRUNC, and nix's
        // `cmsgs()` then fails without handing us the ones installed, which would never be
        // closed. We keep the first fd and close the rest.
        let mut cmsg = nix::cmsg_space!([RawFd; SCM_MAX_FD]);
        let mut iov = [IoSliceMut::new(&mut bytes[got..])];
        let msg = recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let n = msg.bytes;
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                for f in fds {
                    // SAFETY: the kernel just installed `f` in our table for us; we own it.
                    let owned = unsafe { OwnedFd::from_raw_fd(f) };
                    if fd.is_none() {
                        fd = Some(owned);
                    }
                }
            }
        }
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "ivshmem message cut short",
            ));
        }
        got += n;
    }
    Ok(Some((i64::from_le_bytes(bytes), fd)))
}
