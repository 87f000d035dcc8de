//! An ivshmem server that plays the hypervisor's part for an ivshmem-net link: for QEMU's
//! `ivshmem-doorbell` on the flat v1 region (see [`ivnet_core::v1`]), or for the project's
//! ivshmem 2.0 device `ivshmem2` (see [`ivnet_core::v2`] and [`crate::proto::v2`]).
//!
//! On ivshmem 2.0 ([`Ivshmem::V2`]) ids are state-table indices: a newcomer gets the lowest
//! free one (0 or 1), INIT with the memory (state table + two output sections, sized as the v1
//! layout of `size` would place them), then the other peer's eventfds and its own; the other
//! peer gets the newcomer's. When a peer leaves, its state entry is zeroed before the survivor
//! hears PEER_GONE (its device then raises its state vector). There is no owner table. The rest
//! of this list is about v1; the non-blocking peers and the refusal of a third peer hold for
//! both.
//!
//! - Ids only grow: QEMU frees a departed peer's eventfds without forgetting them and crashes
//!   when the same id comes back, so an id is never handed out twice. QEMU's doorbell register
//!   holds 16 bits of peer id, so after id 65535 the server refuses newcomers (a link whose
//!   peers joined 65536 times needs its server restarted) rather than hand out an id nobody
//!   could ring.
//! - The server keeps the slot-owner table in the control page: on join it writes the
//!   newcomer's slot owner (zeroing its state word) before the newcomer learns its id, then
//!   rings the other slot's owner on vector 0; on leave it zeroes the slot's owner and state
//!   and rings the survivor on vector 0.
//! - A third peer on a two-slot link is refused (its connection is closed at once).
//! - Peers are never waited for: their sockets are non-blocking, and a peer whose socket does
//!   not take a message (it stopped reading and its buffer is full) is dropped like one that
//!   left. The shared memory is sealed against resizing (see [`crate::mapping::memfd`]).
//! - The owner table is put back whenever a peer overwrote it.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ivnet_core::ratelimit::RateLimit;
use ivnet_core::shm::OutOfBounds;
use ivnet_core::v1::{self, V1Region, SLOTS, VECTOR_STATE};
use log::{info, warn};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::mapping::{memfd, Mapping};
use crate::proto::v2 as pv2;
use crate::proto::{send_msg, PROTOCOL_VERSION};

/// Which ivshmem device the link's peers have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ivshmem {
    /// Upstream QEMU's `ivshmem-doorbell` (ids only grow, the v1 control page).
    #[default]
    V1,
    /// ivshmem 2.0: the project's QEMU `ivshmem2` device (ids are state-table indices).
    V2,
}

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The device generation the peers speak.
    pub ivshmem: Ivshmem,
    /// Path of the UNIX socket QEMU and host peers connect to.
    pub socket: PathBuf,
    /// Size of the shared memory window (a power of two, at least [`v1::min_region_size`]).
    /// On ivshmem 2.0 the memory is the state table and the two output sections the v1
    /// layout of this size has (0xff000 bytes for 1 MiB: Jailhouse's ivshmem-net layout).
    pub size: usize,
    /// Interrupt vectors per peer (ivshmem-net uses 2: state and data).
    pub vectors: u16,
    /// Permission bits of the socket (e.g. 0o600: only its owner, root for `ivnet up`, may
    /// connect).
    pub socket_mode: u32,
}

/// Why the server cannot start.
#[derive(Debug)]
pub enum ServerError {
    /// The shared memory size cannot carry an ivshmem-net link.
    Size(v1::LayoutError),
    /// `vectors` is outside 1..=64.
    Vectors(u16),
    /// The socket path's directory does not exist, the path is taken by something that is not
    /// a socket, or another server is listening there.
    Socket(PathBuf, String),
    /// A system call failed.
    Io(io::Error),
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerError::Size(e) => write!(f, "--size: {e}"),
            ServerError::Vectors(v) => write!(f, "--vectors {v}: must be between 1 and 64"),
            ServerError::Socket(p, why) => write!(f, "socket {}: {why}", p.display()),
            ServerError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ServerError {}

impl From<io::Error> for ServerError {
    fn from(e: io::Error) -> Self {
        ServerError::Io(e)
    }
}

struct Peer {
    id: u32,
    slot: usize,
    stream: UnixStream,
    vectors: Vec<EventFd>,
}

/// A running ivshmem server (single-threaded; [`Server::run`] serves until stopped).
pub struct Server {
    cfg: ServerConfig,
    listener: UnixListener,
    shm: OwnedFd,
    map: Mapping,
    peers: Vec<Peer>,
    next_id: u32,
    owner_repairs: u64,
    repair_log: RateLimit,
    refusal_log: RateLimit,
}

/// The highest peer id QEMU's ivshmem-doorbell can ring (16 bits in its doorbell register).
pub const MAX_PEER_ID: u32 = 0xffff;

fn bind_socket(path: &Path) -> Result<UnixListener, ServerError> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(d) = dir {
        if !d.is_dir() {
            return Err(ServerError::Socket(
                path.into(),
                format!("directory {} does not exist", d.display()),
            ));
        }
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(ServerError::Socket(
                path.into(),
                "exists and is not a socket (refusing to replace it)".into(),
            ));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(ServerError::Socket(
                path.into(),
                "another server is already listening there".into(),
            ));
        }
        std::fs::remove_file(path).map_err(|e| {
            ServerError::Socket(path.into(), format!("cannot remove stale socket: {e}"))
        })?;
    }
    UnixListener::bind(path).map_err(|e| ServerError::Socket(path.into(), e.to_string()))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), ServerError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| ServerError::Socket(path.into(), format!("setting its mode {mode:o}: {e}")))
}

impl Server {
    /// Checks the settings, creates the shared memory and binds the socket.
    pub fn new(cfg: ServerConfig) -> Result<Server, ServerError> {
        v1::check_size(cfg.size).map_err(ServerError::Size)?;
        if cfg.vectors == 0 || cfg.vectors > 64 {
            return Err(ServerError::Vectors(cfg.vectors));
        }
        if cfg.socket_mode > 0o777 {
            return Err(ServerError::Socket(
                cfg.socket.clone(),
                format!("mode {:o} is not a permission mode", cfg.socket_mode),
            ));
        }
        let listener = bind_socket(&cfg.socket)?;
        set_mode(&cfg.socket, cfg.socket_mode)?;
        listener.set_nonblocking(true)?;
        let mem = memory_size(&cfg);
        let shm = memfd("ivnet-shm", mem)?;
        let map = Mapping::new(&shm, mem)?;
        info!(
            "ivshmem{} server on {}: {} bytes, {} vectors, sections of {:#x}",
            if cfg.ivshmem == Ivshmem::V2 {
                " 2.0"
            } else {
                ""
            },
            cfg.socket.display(),
            mem,
            cfg.vectors,
            v1::section_size(cfg.size)
        );
        Ok(Server {
            cfg,
            listener,
            shm,
            map,
            peers: Vec::new(),
            next_id: 0,
            owner_repairs: 0,
            repair_log: RateLimit::new(1000),
            refusal_log: RateLimit::new(1000),
        })
    }

    /// A read-only observer of the link's region (see [`crate::observe`]).
    pub fn observer(&self) -> io::Result<crate::observe::LinkObserver> {
        crate::observe::LinkObserver::new(&self.shm, memory_size(&self.cfg))
    }

    /// The device generation this server serves.
    pub fn ivshmem(&self) -> Ivshmem {
        self.cfg.ivshmem
    }

    /// Serves until `stop` becomes true (checked at least every 200 ms).
    pub fn run(&mut self, stop: &AtomicBool) -> io::Result<()> {
        while !stop.load(Ordering::Relaxed) {
            self.poll_once(200)?;
        }
        Ok(())
    }

    /// Serves until `stop` becomes true, on a background thread, which holds no capabilities
    /// (see [`crate::privs`]): it only uses the socket and memory it already has.
    pub fn spawn(mut self, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<io::Result<()>> {
        std::thread::spawn(move || {
            crate::privs::drop_all_in_thread()?;
            self.run(&stop)
        })
    }

    /// Waits up to `timeout_ms` for one round of events and handles them.
    pub fn poll_once(&mut self, timeout_ms: u16) -> io::Result<()> {
        let (listen_ready, gone) = {
            let mut fds = Vec::with_capacity(1 + self.peers.len());
            fds.push(PollFd::new(self.listener.as_fd(), PollFlags::POLLIN));
            for p in &self.peers {
                fds.push(PollFd::new(p.stream.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::from(timeout_ms)) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
            let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            let listen_ready = ready(&fds[0]);
            let gone: Vec<u32> = fds[1..]
                .iter()
                .zip(&self.peers)
                .filter(|(f, _)| ready(f))
                .map(|(_, p)| p.id)
                .collect();
            (listen_ready, gone)
        };
        for id in gone {
            // A client never writes: anything readable is EOF, an error, or a protocol
            // violation; in each case the peer is gone.
            self.remove_peer(id);
        }
        if listen_ready {
            loop {
                match self.listener.accept() {
                    Ok((s, _)) => self.add_peer(s),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        warn!("accept: {e}");
                        break;
                    }
                }
            }
        }
        self.repair_owners();
        Ok(())
    }

    /// The owner table lives in memory every peer can write (there is no hardware to protect
    /// it on ivshmem-doorbell). The server knows the truth: a table that differs from it was
    /// overwritten by a peer, and is put back (owner words only), and both peers are rung to
    /// look again. Checked at every round of the server (at least every 200 ms).
    fn repair_owners(&mut self) {
        if self.cfg.ivshmem == Ivshmem::V2 {
            return; // no owner table: ids are the slots
        }
        let v1 = v1_of(&self.map);
        let mut repaired = false;
        for slot in 0..SLOTS {
            let truth = self.peers.iter().find(|p| p.slot == slot).map(|p| p.id);
            if v1.owner(slot).ok() != Some(truth) {
                let _ = v1.set_owner_word(slot, truth);
                repaired = true;
            }
        }
        if repaired {
            self.owner_repairs += 1;
            if let Some(n) = self.repair_log.check(crate::link::millis()) {
                warn!(
                    "the owner table was overwritten by a peer: put back ({} repairs so far{})",
                    self.owner_repairs,
                    if n > 0 {
                        format!(", {n} not logged")
                    } else {
                        String::new()
                    }
                );
            }
            for p in &self.peers {
                ring(p, VECTOR_STATE);
            }
        }
    }

    /// Times the owner table had to be put back (see `repair_owners`).
    pub fn owner_repairs(&self) -> u64 {
        self.owner_repairs
    }

    fn add_peer(&mut self, stream: UnixStream) {
        // Never block on a peer: a full socket buffer is a peer that stopped reading.
        if let Err(e) = stream.set_nonblocking(true) {
            warn!("new peer: {e}");
            return;
        }
        let free = |peers: &[Peer]| (0..SLOTS).find(|s| !peers.iter().any(|p| p.slot == *s));
        if free(&self.peers).is_none() {
            // A peer that left a moment ago (a QEMU restarting) may not have been noticed yet:
            // look before refusing the newcomer.
            self.remove_departed();
        }
        let Some(slot) = free(&self.peers) else {
            if let Some(n) = self.refusal_log.check(crate::link::millis()) {
                warn!(
                    "refusing a third peer: this link has {SLOTS} slots, both taken (ids {:?}){}",
                    self.peers.iter().map(|p| p.id).collect::<Vec<_>>(),
                    if n > 0 {
                        format!("; {n} more refused")
                    } else {
                        String::new()
                    }
                );
            }
            return; // dropping the stream closes it
        };
        if self.cfg.ivshmem == Ivshmem::V1 && self.next_id > MAX_PEER_ID {
            if let Some(n) = self.refusal_log.check(crate::link::millis()) {
                warn!(
                    "refusing a peer: ids 0-{MAX_PEER_ID} are used up (QEMU can ring no higher \
                     id): restart this link's server{}",
                    if n > 0 {
                        format!("; {n} more refused")
                    } else {
                        String::new()
                    }
                );
            }
            return;
        }
        let id = match self.cfg.ivshmem {
            Ivshmem::V1 => {
                self.next_id += 1;
                self.next_id - 1
            }
            // The state-table index; the device copes with an id coming back.
            Ivshmem::V2 => slot as u32,
        };
        let vectors: Result<Vec<EventFd>, _> = (0..self.cfg.vectors)
            .map(|_| EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC))
            .collect();
        let vectors = match vectors {
            Ok(v) => v,
            Err(e) => {
                warn!("peer {id}: eventfd: {e}");
                return;
            }
        };
        // Record the owner (and zero its state word) before the newcomer learns its id.
        if let Err(e) = self.set_owner(slot, Some(id)) {
            warn!("peer {id}: owner table: {e:?}");
            return;
        }
        let peer = Peer {
            id,
            slot,
            stream,
            vectors,
        };
        if let Err(e) = self.greet(&peer) {
            warn!("peer {id}: setup failed: {e}");
            let _ = self.set_owner(slot, None);
            return;
        }
        // Tell everyone else about the newcomer's vectors.
        let mut broken = Vec::new();
        for other in &self.peers {
            if announce(self.cfg.ivshmem, other, &peer).is_err() {
                broken.push(other.id);
            }
        }
        info!("peer {id} joined, slot {slot}");
        if self.cfg.ivshmem == Ivshmem::V1 {
            // On v2 a newcomer changes no state entry (its device rings when it writes one).
            for other in &self.peers {
                ring(other, VECTOR_STATE);
            }
        }
        self.peers.push(peer);
        for b in broken {
            self.remove_peer(b);
        }
    }

    /// v1: records the owner of `slot` (zeroing its state word); v2: zeroes the state entry
    /// of the id (= slot) alone.
    fn set_owner(&self, slot: usize, id: Option<u32>) -> Result<(), OutOfBounds> {
        match self.cfg.ivshmem {
            Ivshmem::V1 => v1_of(&self.map).set_owner(slot, id),
            Ivshmem::V2 => self.map.region().store_u32(4 * slot, 0),
        }
    }

    fn greet(&self, peer: &Peer) -> io::Result<()> {
        let s = peer.stream.as_fd();
        if self.cfg.ivshmem == Ivshmem::V2 {
            let init = pv2::Msg::Init {
                id: peer.id,
                max_peers: SLOTS as u32,
                vectors: u32::from(self.cfg.vectors),
                protocol: ivnet_core::v2::PROTOCOL_NET,
                output_section_size: v1::section_size(self.cfg.size) as u64,
            };
            pv2::send(s, &init, Some(self.shm.as_fd()))?;
            for other in &self.peers {
                send_vectors_v2(s, other)?;
            }
            return send_vectors_v2(s, peer);
        }
        send_msg(s, PROTOCOL_VERSION, None)?;
        send_msg(s, peer.id as i64, None)?;
        send_msg(s, -1, Some(self.shm.as_fd()))?;
        for other in &self.peers {
            for v in &other.vectors {
                send_msg(s, other.id as i64, Some(v.as_fd()))?;
            }
        }
        for v in &peer.vectors {
            send_msg(s, peer.id as i64, Some(v.as_fd()))?;
        }
        Ok(())
    }

    /// Removes the peers whose connection is readable (closed, or sent something a client
    /// never sends), without waiting.
    fn remove_departed(&mut self) {
        let gone: Vec<u32> = {
            let mut fds: Vec<PollFd> = self
                .peers
                .iter()
                .map(|p| PollFd::new(p.stream.as_fd(), PollFlags::POLLIN))
                .collect();
            if poll(&mut fds, PollTimeout::ZERO).is_err() {
                return;
            }
            fds.iter()
                .zip(&self.peers)
                .filter(|(f, _)| f.revents().is_some_and(|r| !r.is_empty()))
                .map(|(_, p)| p.id)
                .collect()
        };
        for id in gone {
            self.remove_peer(id);
        }
    }

    fn remove_peer(&mut self, id: u32) {
        let Some(i) = self.peers.iter().position(|p| p.id == id) else {
            return;
        };
        let gone = self.peers.remove(i);
        let _ = self.set_owner(gone.slot, None);
        info!("peer {id} left, slot {} free", gone.slot);
        let mut broken = Vec::new();
        for other in &self.peers {
            let sent = match self.cfg.ivshmem {
                Ivshmem::V1 => send_msg(other.stream.as_fd(), id as i64, None),
                // The device raises its own state vector on PEER_GONE.
                Ivshmem::V2 => pv2::send(other.stream.as_fd(), &pv2::Msg::PeerGone { id }, None),
            };
            if sent.is_err() {
                broken.push(other.id);
            }
            if self.cfg.ivshmem == Ivshmem::V1 {
                ring(other, VECTOR_STATE);
            }
        }
        for b in broken {
            self.remove_peer(b);
        }
    }

    /// Ids of the connected peers, with their slots.
    pub fn peers(&self) -> Vec<(u32, usize)> {
        self.peers.iter().map(|p| (p.id, p.slot)).collect()
    }

    /// The socket's raw fd (for tests that poll it).
    pub fn listener_fd(&self) -> i32 {
        self.listener.as_raw_fd()
    }
}

/// Bytes of shared memory the server hands out.
fn memory_size(cfg: &ServerConfig) -> usize {
    match cfg.ivshmem {
        Ivshmem::V1 => cfg.size,
        Ivshmem::V2 => ivnet_core::v2::memory_size(v1::section_size(cfg.size)),
    }
}

/// Sends `whose` eventfds (one EVENT_FD message each) on `to`.
fn send_vectors_v2(to: BorrowedFd<'_>, whose: &Peer) -> io::Result<()> {
    for (v, fd) in whose.vectors.iter().enumerate() {
        let m = pv2::Msg::EventFd {
            id: whose.id,
            vector: v as u32,
        };
        pv2::send(to, &m, Some(fd.as_fd()))?;
    }
    Ok(())
}

/// Tells `other` the newcomer's eventfds.
fn announce(ivshmem: Ivshmem, other: &Peer, newcomer: &Peer) -> io::Result<()> {
    match ivshmem {
        Ivshmem::V1 => {
            for v in &newcomer.vectors {
                send_msg(other.stream.as_fd(), newcomer.id as i64, Some(v.as_fd()))?;
            }
            Ok(())
        }
        Ivshmem::V2 => send_vectors_v2(other.stream.as_fd(), newcomer),
    }
}

/// The v1 view of the server's region (its size was checked in `Server::new`).
fn v1_of(map: &Mapping) -> V1Region<'_> {
    V1Region::new(map.region()).expect("size checked in Server::new")
}

fn ring(p: &Peer, vector: u16) {
    if let Some(v) = p.vectors.get(vector as usize) {
        let _ = v.write(1);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.cfg.socket);
    }
}
