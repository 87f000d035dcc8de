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
    send_whole(sock, &value.to_le_bytes(), fd)
}

/// One `sendmsg` of `bytes`, with `fd` attached when given: how many bytes went.
fn send_once(sock: BorrowedFd<'_>, bytes: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<usize> {
    let iov = [IoSlice::new(bytes)];
    let raw;
    let cmsgs: &[ControlMessage] = match fd {
        Some(f) => {
            raw = [f.as_raw_fd()];
            &[ControlMessage::ScmRights(&raw)]
        }
        None => &[],
    };
    Ok(sendmsg::<()>(
        sock.as_raw_fd(),
        &iov,
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?)
}

/// One ivshmem message in one `sendmsg`: a short send is an error (the peer reads messages
/// whole).
fn send_whole(sock: BorrowedFd<'_>, bytes: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
    if send_once(sock, bytes, fd)? != bytes.len() {
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
    Ok(recv_exact(sock, &mut bytes)?.map(|fd| (i64::from_le_bytes(bytes), fd)))
}

/// Sends all of `bytes` on a stream socket, with `fd` attached to the first part when given
/// (the supervisor's control socket).
pub fn send_with_fd(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    mut fd: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let mut sent = 0;
    while sent < bytes.len() {
        let n = send_once(sock, &bytes[sent..], fd.take())?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "socket closed"));
        }
        sent += n;
    }
    Ok(())
}

/// One `recvmsg` into `buf`: the bytes received (0 at end of stream) and the first fd that
/// rode along; any other fds are closed, never leaked.
pub fn recv_with_fd(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    // Room for as many fds as one message can carry (the kernel's SCM_MAX_FD). With a smaller
    // buffer the kernel installs the fds that fit and sets MSG_CTRUNC, and nix's `cmsgs()`
    // then fails without handing us the ones installed, which would never be closed. We keep
    // the first fd and close the rest.
    let mut cmsg = nix::cmsg_space!([RawFd; SCM_MAX_FD]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let n = msg.bytes;
    let mut fd = None;
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
    Ok((n, fd))
}

/// Receives exactly `buf.len()` bytes, keeping the first fd that rides along (any others are
/// closed). `Ok(None)` at end of stream before the first byte. Both protocols' messages come
/// through here.
pub(crate) fn recv_exact(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<Option<Option<OwnedFd>>> {
    let mut got = 0;
    let mut fd = None;
    while got < buf.len() {
        let (n, f) = recv_with_fd(sock, &mut buf[got..])?;
        if fd.is_none() {
            fd = f;
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
    Ok(Some(fd))
}

/// The ivshmem 2.0 server protocol (the project's QEMU `ivshmem2` device speaks it): framed
/// little-endian messages, a header `{u32 type, u32 len}` (len counts the whole message),
/// each optionally carrying one fd.
pub mod v2 {
    use super::*;

    /// Protocol version of the messages below.
    pub const VERSION: u32 = 2;
    const INIT: u32 = 0;
    const EVENT_FD: u32 = 1;
    const PEER_GONE: u32 = 2;
    /// Longest message a peer accepts.
    pub const MAX_LEN: u32 = 64;

    /// One server message.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Msg {
        /// The first message: who the peer is and what the link is; the memory fd rides along.
        Init {
            /// Peer id: the index of its state-table entry and output section.
            id: u32,
            /// Peers of the link.
            max_peers: u32,
            /// Interrupt vectors per peer.
            vectors: u32,
            /// ivshmem 2.0 protocol (0x0001: ivshmem-net).
            protocol: u32,
            /// Size of each output section.
            output_section_size: u64,
        },
        /// An eventfd to ring vector `vector` of peer `id` (the own ones: to wait on).
        EventFd {
            /// Whose vector.
            id: u32,
            /// Which vector.
            vector: u32,
        },
        /// Peer `id` left (its state entry is zero already).
        PeerGone {
            /// Who left.
            id: u32,
        },
    }

    impl Msg {
        /// The message's bytes.
        pub fn encode(&self) -> Vec<u8> {
            let mut b = Vec::with_capacity(40);
            let (ty, body): (u32, Vec<u8>) = match *self {
                Msg::Init {
                    id,
                    max_peers,
                    vectors,
                    protocol,
                    output_section_size,
                } => {
                    let mut v = Vec::new();
                    for w in [VERSION, VERSION, id, max_peers, vectors, protocol] {
                        v.extend_from_slice(&w.to_le_bytes());
                    }
                    v.extend_from_slice(&output_section_size.to_le_bytes());
                    (INIT, v)
                }
                Msg::EventFd { id, vector } => {
                    let mut v = id.to_le_bytes().to_vec();
                    v.extend_from_slice(&vector.to_le_bytes());
                    (EVENT_FD, v)
                }
                Msg::PeerGone { id } => (PEER_GONE, id.to_le_bytes().to_vec()),
            };
            b.extend_from_slice(&ty.to_le_bytes());
            b.extend_from_slice(&(8 + body.len() as u32).to_le_bytes());
            b.extend_from_slice(&body);
            b
        }

        /// Parses one whole message (header included).
        pub fn decode(b: &[u8]) -> Result<Msg, String> {
            let word = |i: usize| -> u32 {
                u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
            };
            if b.len() < 8 {
                return Err(format!("message of {} bytes", b.len()));
            }
            let (ty, len) = (word(0), word(1));
            if len as usize != b.len() {
                return Err(format!("type {ty}: length {len}, {} bytes read", b.len()));
            }
            match (ty, len) {
                (INIT, 40) => {
                    let (version, compat) = (word(2), word(3));
                    if compat != VERSION {
                        return Err(format!(
                            "the server speaks ivshmem 2.0 server protocol version {version} \
                             (compatible with {compat}), not {VERSION}"
                        ));
                    }
                    let mut q = [0u8; 8];
                    q.copy_from_slice(&b[32..40]);
                    Ok(Msg::Init {
                        id: word(4),
                        max_peers: word(5),
                        vectors: word(6),
                        protocol: word(7),
                        output_section_size: u64::from_le_bytes(q),
                    })
                }
                (EVENT_FD, 16) => Ok(Msg::EventFd {
                    id: word(2),
                    vector: word(3),
                }),
                (PEER_GONE, 12) => Ok(Msg::PeerGone { id: word(2) }),
                _ => Err(format!("unknown message type {ty} of length {len}")),
            }
        }
    }

    /// Sends one message, with `fd` attached when given.
    pub fn send(sock: BorrowedFd<'_>, msg: &Msg, fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
        send_whole(sock, &msg.encode(), fd)
    }

    /// Receives the rest of a message whose first 8 bytes (`head`, with `fd` if one came
    /// with them) were read already.
    pub fn recv_rest(
        sock: BorrowedFd<'_>,
        head: [u8; 8],
        mut fd: Option<OwnedFd>,
    ) -> io::Result<(Msg, Option<OwnedFd>)> {
        let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if !(8..=MAX_LEN).contains(&len) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("ivshmem 2.0 server message of length {len}"),
            ));
        }
        let mut b = vec![0u8; len as usize];
        b[..8].copy_from_slice(&head);
        if len > 8 {
            match recv_exact(sock, &mut b[8..])? {
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "ivshmem message cut short",
                    ))
                }
                Some(more) => fd = fd.or(more),
            }
        }
        let msg = Msg::decode(&b).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok((msg, fd))
    }

    /// Receives one message: `Ok(None)` at end of stream.
    pub fn recv(sock: BorrowedFd<'_>) -> io::Result<Option<(Msg, Option<OwnedFd>)>> {
        let mut head = [0u8; 8];
        match recv_exact(sock, &mut head)? {
            None => Ok(None),
            Some(fd) => recv_rest(sock, head, fd).map(Some),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn messages_round_trip() {
            for m in [
                Msg::Init {
                    id: 1,
                    max_peers: 2,
                    vectors: 2,
                    protocol: 1,
                    output_section_size: 0x7f000,
                },
                Msg::EventFd { id: 0, vector: 1 },
                Msg::PeerGone { id: 1 },
            ] {
                assert_eq!(Msg::decode(&m.encode()), Ok(m));
            }
            let init = Msg::Init {
                id: 1,
                max_peers: 2,
                vectors: 2,
                protocol: 1,
                output_section_size: 0x7f000,
            }
            .encode();
            assert_eq!(init.len(), 40);
            assert_eq!(&init[..8], &[0, 0, 0, 0, 40, 0, 0, 0]);
            assert_eq!(&init[8..16], &[2, 0, 0, 0, 2, 0, 0, 0]);
        }

        #[test]
        fn bad_messages_are_errors() {
            let mut init = Msg::Init {
                id: 0,
                max_peers: 2,
                vectors: 2,
                protocol: 1,
                output_section_size: 0x1000,
            }
            .encode();
            init[12] = 3;
            assert!(Msg::decode(&init).unwrap_err().contains("version"));
            assert!(Msg::decode(&[1, 0, 0, 0, 12, 0, 0, 0]).is_err());
            assert!(Msg::decode(&[9, 0, 0, 0, 8, 0, 0, 0]).is_err());
            assert!(Msg::decode(&[1, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0]).is_err());
        }
    }
}
