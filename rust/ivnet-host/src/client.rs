//! A client of an ivshmem server, doing what QEMU's ivshmem-doorbell device does: receive the
//! shared memory and everyone's eventfds, ring other peers, wait on its own vectors.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use log::{debug, warn};

use crate::mapping::{fd_size, sealed_against_shrinking, Mapping};
use crate::proto::{recv_msg, PROTOCOL_VERSION};

/// What the server said after setup.
#[derive(Debug, PartialEq, Eq)]
pub enum ServerEvent {
    /// A new peer's vector arrived (its vectors arrive one message each).
    PeerVector(u32),
    /// A peer left.
    PeerGone(u32),
    /// The server closed the connection.
    Closed,
}

/// A connected ivshmem client.
pub struct Client {
    stream: UnixStream,
    id: u32,
    map: Mapping,
    own: Vec<OwnedFd>,
    peers: BTreeMap<u32, Vec<OwnedFd>>,
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

impl Client {
    /// Connects to the server at `path` and completes the setup exchange, expecting `vectors`
    /// vectors per peer.
    pub fn connect(path: &Path, vectors: u16) -> io::Result<Client> {
        let stream = UnixStream::connect(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot connect to ivshmem server at {}: {e}",
                    path.display()
                ),
            )
        })?;
        let s = stream.as_fd();
        let closed = || {
            bad(format!(
                "ivshmem server at {} closed the connection during setup (link full?)",
                path.display()
            ))
        };
        let (version, _) = recv_msg(s)?.ok_or_else(closed)?;
        if version != PROTOCOL_VERSION {
            return Err(bad(format!(
                "unsupported ivshmem protocol version {version}"
            )));
        }
        let (id, _) = recv_msg(s)?.ok_or_else(closed)?;
        let id = u32::try_from(id).map_err(|_| bad(format!("bad peer id {id}")))?;
        let (minus1, shm) = recv_msg(s)?.ok_or_else(closed)?;
        let shm = match (minus1, shm) {
            (-1, Some(fd)) => fd,
            _ => return Err(bad("expected the shared memory fd")),
        };
        let size = fd_size(&shm)?;
        if !sealed_against_shrinking(&shm) {
            // Another server's memory (QEMU's ivshmem-server does not seal): a peer that
            // shrank it would crash us with SIGBUS. Ours always seals it.
            warn!(
                "shared memory from {} is not sealed against shrinking",
                path.display()
            );
        }
        let map = Mapping::new(&shm, size)?;
        let mut c = Client {
            stream,
            id,
            map,
            own: Vec::new(),
            peers: BTreeMap::new(),
        };
        while c.own.len() < vectors as usize {
            let (who, fd) = recv_msg(c.stream.as_fd())?.ok_or_else(closed)?;
            let fd = fd.ok_or_else(|| bad("peer message without fd during setup"))?;
            let who = u32::try_from(who).map_err(|_| bad(format!("bad peer id {who}")))?;
            if who == id {
                c.own.push(fd);
            } else {
                c.peers.entry(who).or_default().push(fd);
            }
        }
        debug!(
            "ivshmem client {id}: {size} bytes, peers {:?}",
            c.peer_ids()
        );
        Ok(c)
    }

    /// Our peer id (QEMU's IVPosition).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The shared memory.
    pub fn mapping(&self) -> &Mapping {
        &self.map
    }

    /// Ids of the other peers known now.
    pub fn peer_ids(&self) -> Vec<u32> {
        self.peers.keys().copied().collect()
    }

    /// The server socket, to poll for [`Client::handle_message`].
    pub fn socket(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    /// Our own vector `v`'s eventfd, to poll; read it (8 bytes) to clear it.
    pub fn vector(&self, v: u16) -> Option<BorrowedFd<'_>> {
        self.own.get(v as usize).map(|f| f.as_fd())
    }

    /// Reads one message from the server (call when the socket is readable).
    pub fn handle_message(&mut self) -> io::Result<ServerEvent> {
        match recv_msg(self.stream.as_fd())? {
            None => Ok(ServerEvent::Closed),
            Some((who, fd)) => {
                let who = u32::try_from(who).map_err(|_| bad(format!("bad peer id {who}")))?;
                match fd {
                    Some(fd) => {
                        self.peers.entry(who).or_default().push(fd);
                        Ok(ServerEvent::PeerVector(who))
                    }
                    None => {
                        self.peers.remove(&who);
                        Ok(ServerEvent::PeerGone(who))
                    }
                }
            }
        }
    }

    /// Rings vector `v` of peer `peer`. Returns false when that peer or vector is unknown.
    pub fn ring(&self, peer: u32, v: u16) -> bool {
        match self.peers.get(&peer).and_then(|fds| fds.get(v as usize)) {
            Some(fd) => nix::unistd::write(fd, &1u64.to_ne_bytes()).is_ok(),
            None => false,
        }
    }
}

/// Clears an eventfd; returns its count (0 when it was not signalled).
pub fn drain_eventfd(fd: BorrowedFd<'_>) -> u64 {
    let mut b = [0u8; 8];
    match nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(&fd), &mut b) {
        Ok(8) => u64::from_ne_bytes(b),
        _ => 0,
    }
}
