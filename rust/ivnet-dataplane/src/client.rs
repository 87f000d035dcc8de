//! A client of an ivshmem server, doing what QEMU's ivshmem-doorbell device (or, for an
//! ivshmem 2.0 server, the `ivshmem2` device) does: receive the shared memory and everyone's
//! eventfds, ring other peers, wait on its own vectors. The server's first message says which
//! protocol it speaks (v1: the int64 version 0; v2: an INIT frame).

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use log::{debug, warn};

use crate::mapping::{fd_size, sealed_against_shrinking, Mapping};
use crate::proto::v2 as pv2;
use crate::proto::{recv_exact, recv_msg, PROTOCOL_VERSION};

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

/// What an ivshmem 2.0 server's INIT said about the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct V2Link {
    /// Peers of the link.
    pub max_peers: u32,
    /// Interrupt vectors per peer.
    pub vectors: u32,
    /// ivshmem 2.0 protocol number (0x0001: ivshmem-net).
    pub protocol: u32,
    /// Size of each output section.
    pub output_section_size: u64,
}

/// A connected ivshmem client.
pub struct Client {
    stream: UnixStream,
    id: u32,
    map: Mapping,
    own: Vec<Option<OwnedFd>>,
    peers: BTreeMap<u32, Vec<Option<OwnedFd>>>,
    v2: Option<V2Link>,
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
        let mut head = [0u8; 8];
        let fd = recv_exact(s, &mut head)?.ok_or_else(closed)?;
        if head[..4] == [0; 4] && head[4..] == [40, 0, 0, 0] {
            let (msg, fd) = pv2::recv_rest(s, head, fd)?;
            return Client::setup_v2(stream, path, msg, fd);
        }
        let version = i64::from_le_bytes(head);
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
        let (map, size) = map_shared(&shm, path)?;
        let mut c = Client {
            stream,
            id,
            map,
            own: Vec::new(),
            peers: BTreeMap::new(),
            v2: None,
        };
        while c.own.len() < vectors as usize {
            let (who, fd) = recv_msg(c.stream.as_fd())?.ok_or_else(closed)?;
            let fd = fd.ok_or_else(|| bad("peer message without fd during setup"))?;
            let who = u32::try_from(who).map_err(|_| bad(format!("bad peer id {who}")))?;
            if who == id {
                c.own.push(Some(fd));
            } else {
                c.peers.entry(who).or_default().push(Some(fd));
            }
        }
        debug!(
            "ivshmem client {id}: {size} bytes, peers {:?}",
            c.peer_ids()
        );
        Ok(c)
    }

    /// The rest of the setup with an ivshmem 2.0 server, after its INIT.
    fn setup_v2(
        stream: UnixStream,
        path: &Path,
        init: pv2::Msg,
        shm: Option<OwnedFd>,
    ) -> io::Result<Client> {
        let pv2::Msg::Init {
            id,
            max_peers,
            vectors,
            protocol,
            output_section_size,
        } = init
        else {
            return Err(bad("an ivshmem 2.0 server's first message must be INIT"));
        };
        if !(2..=65536).contains(&max_peers) || id >= max_peers || !(1..=1024).contains(&vectors) {
            return Err(bad(format!(
                "INIT: id {id}, {max_peers} peers, {vectors} vectors: out of range"
            )));
        }
        let shm = shm.ok_or_else(|| bad("INIT came without the shared memory fd"))?;
        let (map, size) = map_shared(&shm, path)?;
        let mut c = Client {
            stream,
            id,
            map,
            own: (0..vectors).map(|_| None).collect(),
            peers: BTreeMap::new(),
            v2: Some(V2Link {
                max_peers,
                vectors,
                protocol,
                output_section_size,
            }),
        };
        while c.own.iter().any(Option::is_none) {
            let ev = c.handle_message()?;
            if ev == ServerEvent::Closed {
                return Err(bad(format!(
                    "ivshmem server at {} closed the connection during setup (link full?)",
                    path.display()
                )));
            }
        }
        debug!(
            "ivshmem 2.0 client {id}: {size} bytes, peers {:?}",
            c.peer_ids()
        );
        Ok(c)
    }

    /// What an ivshmem 2.0 server said about the link (`None` on v1).
    pub fn v2(&self) -> Option<V2Link> {
        self.v2
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
        self.own
            .get(v as usize)
            .and_then(|f| f.as_ref())
            .map(|f| f.as_fd())
    }

    /// Reads one message from the server (call when the socket is readable).
    pub fn handle_message(&mut self) -> io::Result<ServerEvent> {
        if let Some(link) = self.v2 {
            return self.handle_message_v2(link);
        }
        match recv_msg(self.stream.as_fd())? {
            None => Ok(ServerEvent::Closed),
            Some((who, fd)) => {
                let who = u32::try_from(who).map_err(|_| bad(format!("bad peer id {who}")))?;
                match fd {
                    Some(fd) => {
                        self.peers.entry(who).or_default().push(Some(fd));
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

    fn handle_message_v2(&mut self, link: V2Link) -> io::Result<ServerEvent> {
        let Some((msg, fd)) = pv2::recv(self.stream.as_fd())? else {
            return Ok(ServerEvent::Closed);
        };
        match msg {
            pv2::Msg::EventFd { id, vector } => {
                let fd = fd.ok_or_else(|| bad(format!("EVENT_FD {id}/{vector} without an fd")))?;
                if id >= link.max_peers || vector >= link.vectors {
                    return Err(bad(format!(
                        "EVENT_FD for peer {id} vector {vector}: out of range"
                    )));
                }
                let slots = if id == self.id {
                    &mut self.own
                } else {
                    self.peers.entry(id).or_default()
                };
                if slots.len() < link.vectors as usize {
                    slots.resize_with(link.vectors as usize, || None);
                }
                slots[vector as usize] = Some(fd);
                Ok(ServerEvent::PeerVector(id))
            }
            pv2::Msg::PeerGone { id } => {
                self.peers.remove(&id);
                Ok(ServerEvent::PeerGone(id))
            }
            pv2::Msg::Init { .. } => Err(bad("a second INIT from the ivshmem 2.0 server")),
        }
    }

    /// Rings vector `v` of peer `peer`. Returns false when that peer or vector is unknown.
    pub fn ring(&self, peer: u32, v: u16) -> bool {
        match self
            .peers
            .get(&peer)
            .and_then(|fds| fds.get(v as usize))
            .and_then(|f| f.as_ref())
        {
            Some(fd) => nix::unistd::write(fd, &1u64.to_ne_bytes()).is_ok(),
            None => false,
        }
    }
}

/// Maps the shared memory the server at `path` sent, whole; returns the mapping and its size.
fn map_shared(shm: &OwnedFd, path: &Path) -> io::Result<(Mapping, usize)> {
    let size = fd_size(shm)?;
    if !sealed_against_shrinking(shm) {
        // Another server's memory (QEMU's ivshmem-server does not seal): a peer that shrank it
        // would crash us with SIGBUS. Ours always seals it.
        warn!(
            "shared memory from {} is not sealed against shrinking",
            path.display()
        );
    }
    Ok((Mapping::new(shm, size)?, size))
}

/// Clears an eventfd; returns its count (0 when it was not signalled).
pub fn drain_eventfd(fd: BorrowedFd<'_>) -> u64 {
    let mut b = [0u8; 8];
    match nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(&fd), &mut b) {
        Ok(8) => u64::from_ne_bytes(b),
        _ => 0,
    }
}
