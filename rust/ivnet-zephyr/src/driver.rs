//! The ivshmem-net Ethernet driver: device init and the entry points C calls; the link thread,
//! receive and send are in [`datapath`].
//!
//! One [`Driver`] per devicetree instance, allocated once at init and never moved (the kernel
//! holds pointers to its poll signal and semaphore). Queue state lives in a
//! `critical_section::Mutex` shared by the link thread (state machine, receive) and the
//! network stack's TX thread (send).

use core::cell::RefCell;
use core::ffi::{c_int, c_void};
use core::ptr;
use core::sync::atomic::{AtomicU32, Ordering};

use critical_section::Mutex;
use ivnet_core::endpoint::{Effects, Endpoint, StateWords, V1Words};
use ivnet_core::liveness::{Progress, WaitBudget};
use ivnet_core::queue::{Queues, RxFrame};
use ivnet_core::ratelimit::RateLimit;
use ivnet_core::shm::Region;
use ivnet_core::state::LinkState;
use ivnet_core::v1::{V1Region, VECTOR_DATA, VECTOR_STATE};
use ivnet_core::ProtocolError;

use crate::dev::{Dev, Ivshmem};
use zephyr::sys::sync::Semaphore;

use crate::kernel::{self, PollSignal};
use crate::log::{dbg, err, inf, wrn};
use crate::net::{Iface, IfaceCell, Pkt, PktRef, RX_PAD_MAX};
use crate::sys;

mod datapath;
use datapath::*;

/// Largest frame handed to the stack: MTU plus Ethernet header plus one VLAN tag.
fn max_frame() -> usize {
    sys::IVNET_MTU as usize + 18
}

/// Counters of one link (published as a STATS group with CONFIG_ETH_IVNET_STATS).
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub struct Stats {
    /// Frames handed to the stack.
    pub rx_frames: u32,
    /// Frames sent to the peer.
    pub tx_frames: u32,
    /// Bytes handed to the stack.
    pub rx_bytes: u32,
    /// Bytes sent to the peer.
    pub tx_bytes: u32,
    /// Frames from the peer dropped (no packet, bad frame).
    pub rx_dropped: u32,
    /// Frames the stack gave us that were dropped (the ring stayed full too long).
    pub tx_dropped: u32,
    /// Times a sender waited for the peer to free ring space (ring full).
    pub tx_waits: u32,
    /// Doorbells rung at the peer.
    pub doorbells: u32,
    /// Link state changes (RESET/INIT/READY/RUN).
    pub state_changes: u32,
    /// Link resets because the peer broke the protocol.
    pub protocol_resets: u32,
    /// Link resets because the peer stayed in RUN but completed nothing for
    /// CONFIG_ETH_IVNET_PEER_TIMEOUT_MS with frames in flight (a hung or hostile peer).
    pub peer_stalls: u32,
}

#[cfg(ivnet_stats)]
impl Stats {
    /// Number of counters.
    pub const COUNT: usize = core::mem::size_of::<Stats>() / 4;
}

/// Where the link's state words live and how the peer is reached.
#[derive(Clone, Copy)]
enum Transport {
    /// Upstream QEMU's ivshmem-doorbell: the flat region with the ivnet control page (state
    /// words and slot owners), managed by the ivnet server.
    V1(V1Words<'static>),
    /// ivshmem 2.0 (Jailhouse): the device's state table and STATE register; peer = 1 - id.
    #[cfg(ivshmem_v2)]
    V2 { dev: Ivshmem, id: u32 },
}

impl StateWords for Transport {
    fn peer_state(&self) -> Result<LinkState, ProtocolError> {
        match *self {
            Transport::V1(w) => w.peer_state(),
            #[cfg(ivshmem_v2)]
            Transport::V2 { dev, id } => LinkState::from_raw(dev.state(1 - id)),
        }
    }

    fn set_state(&self, s: LinkState) -> Result<(), ProtocolError> {
        match *self {
            Transport::V1(w) => w.set_state(s),
            #[cfg(ivshmem_v2)]
            Transport::V2 { dev, .. } => {
                dev.set_state(s.raw());
                Ok(())
            }
        }
    }

    fn peer_id(&self) -> Option<u32> {
        match *self {
            Transport::V1(w) => w.peer_id(),
            #[cfg(ivshmem_v2)]
            Transport::V2 { id, .. } => Some(1 - id),
        }
    }

    /// v1 has no hardware state table: a state change must be announced with a doorbell.
    fn rings_on_state_change(&self) -> bool {
        matches!(self, Transport::V1(_))
    }
}

/// Link state shared by the link thread and send().
struct Link {
    /// The state machine over the transport's state words, and the queues (the endpoint's
    /// generation, bumped on every queue reset, keeps a frame polled before a reset from
    /// being completed after it).
    ep: Endpoint<'static, Transport, &'static mut [u32]>,
    /// send() is waiting for ring space.
    tx_waiting: bool,
    /// When the peer last completed a frame of ours (see ivnet_core::liveness).
    progress: Progress,
    /// How much of the TX thread's time send() may spend waiting for this peer.
    wait_budget: WaitBudget,
    /// The link was reset where its effects could not be applied (send()): the link thread
    /// turns the carrier off at its next round.
    reset_pending: bool,
    /// Devicetree instance (for log messages).
    instance: i32,
    /// Messages a peer can provoke: at most one a second.
    errors: RateLimit,
    /// Bumped by everything a round can achieve (a frame received, a completion reclaimed, a
    /// state transition, a reset): a round that leaves it unchanged was woken for nothing.
    work: u32,
    stats: Stats,
}

impl Link {
    /// Runs the state machine; what it returns is applied by the link thread outside the
    /// critical section.
    fn update(&mut self) -> Effects {
        let before = self.ep.state();
        let mut fx = self.ep.update();
        if let Some((old, new)) = fx.replaced {
            if let Some(n) = self.errors.check(now()) {
                wrn!(
                    "ivnet{}: the peer slot's owner changed from {:?} to {:?}: resetting the link{}",
                    self.instance,
                    old,
                    new,
                    Suppressed(n)
                );
            }
        }
        self.stats.state_changes = self.stats.state_changes.wrapping_add(fx.transitions);
        self.work = self.work.wrapping_add(fx.transitions);
        if let Some(e) = fx.error.take() {
            self.log_protocol_error(e);
            return self.after_reset(fx);
        }
        if fx.entered_run {
            self.progress.restart(now());
        }
        if before != self.ep.state() {
            dbg!("link: {:?} -> {:?}", before, self.ep.state());
        }
        fx
    }

    /// Frees what the peer completed and records its progress; false (and the link reset)
    /// when the completions break the protocol.
    fn reclaim(&mut self) -> Result<(), Effects> {
        match self.ep.queues.tx.reclaim() {
            Ok(n) => {
                let in_flight = self.ep.queues.tx.in_flight();
                self.progress.note(now(), n, in_flight);
                self.work = self.work.wrapping_add(u32::from(n));
                Ok(())
            }
            Err(e) => Err(self.protocol_reset(e)),
        }
    }

    /// The peer stays in RUN but has completed nothing for the timeout with frames in
    /// flight: reset the link (carrier off, our state RESET). The ring is freed at the next
    /// handshake, which a peer that comes back starts by seeing our RESET.
    fn stall_reset(&mut self) -> Effects {
        if let Some(n) = self.errors.check(now()) {
            wrn!(
                "ivnet{}: peer completed none of {} frames in flight for {} ms: resetting the link{}",
                self.instance,
                self.ep.queues.tx.in_flight(),
                sys::IVNET_PEER_TIMEOUT_MS,
                Suppressed(n)
            );
        }
        self.stats.peer_stalls += 1;
        let fx = self.ep.reset();
        self.after_reset(fx)
    }

    fn protocol_reset(&mut self, e: ProtocolError) -> Effects {
        self.log_protocol_error(e);
        let fx = self.ep.reset();
        self.after_reset(fx)
    }

    fn log_protocol_error(&mut self, e: ProtocolError) {
        if let Some(n) = self.errors.check(now()) {
            err!(
                "ivnet{}: peer broke the ivshmem-net protocol, resetting the link: {}{}",
                self.instance,
                e,
                Suppressed(n)
            );
        }
        self.stats.protocol_resets += 1;
    }

    /// The link was reset: a waiting sender gives up, and the link thread applies the
    /// effects at its next round if the reset happened in send().
    fn after_reset(&mut self, fx: Effects) -> Effects {
        self.work = self.work.wrapping_add(1);
        self.tx_waiting = false;
        self.reset_pending = true;
        fx
    }
}

/// What became of one received frame.
enum Rx {
    /// Handed over in this packet.
    Pkt(Pkt),
    /// Dropped (too long, or unreadable): completed and counted.
    Drop,
    /// No network buffer free: left in the ring for later.
    NoBuffer,
}

/// How a receive round ended.
#[derive(PartialEq, Eq)]
enum RoundResult {
    /// Nothing more to do until a doorbell.
    Idle,
    /// Frames are waiting: go again.
    More,
    /// The stack has no free buffers: wait a little, then go again.
    NoBuffer,
}

impl From<bool> for RoundResult {
    fn from(more: bool) -> Self {
        if more {
            RoundResult::More
        } else {
            RoundResult::Idle
        }
    }
}

/// One driver instance.
pub struct Driver {
    cfg: &'static sys::ivnet_config,
    ivshmem: Ivshmem,
    iface: IfaceCell,
    signal: &'static PollSignal,
    tx_room: Semaphore,
    link: Mutex<RefCell<Link>>,
    mac: [u8; 6],
    /// Doorbell vector for frames (1 with MSI-X; 0 when the device has a single vector).
    data_vector: u16,
    carrier: AtomicU32,
    doorbells: AtomicU32,
    #[cfg(ivnet_stats)]
    stats: crate::stats::Published,
    /// Zephyr's Ethernet statistics of this device (in its `ivnet_data`).
    #[cfg(ivnet_eth_stats)]
    eth: *mut sys::net_stats_eth,
}

// SAFETY: the kernel objects and devices are used only through kernel calls made for
// concurrent use; the link state is behind a critical-section mutex; the statistics are
// written inside it; the rest is immutable after init.
unsafe impl Sync for Driver {}

fn mac_for(cfg: &sys::ivnet_config, id: u32) -> [u8; 6] {
    #[cfg(ivnet_cell_config)]
    if let Some(mac) = usize::try_from(cfg.instance)
        .ok()
        .and_then(|i| crate::cellcfg::get().ifaces.get(i).and_then(|c| c.mac))
        .map(|m| m.octets())
    {
        return mac;
    }
    if !cfg.random_mac && cfg.mac != [0; 6] {
        return cfg.mac;
    }
    let mut r = [0u8; 3];
    kernel::random(&mut r);
    // Locally administered, unicast; the low byte is the ivshmem id, so the two ends of a link
    // (whose ids differ) never share a MAC even if their random bytes agree.
    [0x02, 0x1e, r[0], r[1], r[2], id as u8]
}

type Attached = (Transport, Region<'static>, Region<'static>, u32, u16);

/// Finds our output section and the peer's, and how state is kept: the ivnet control page on
/// a v1 device (QEMU ivshmem-doorbell), the device's state table on a v2 device (Jailhouse).
fn attach(cfg: &sys::ivnet_config, ivshmem: Ivshmem) -> Result<Attached, c_int> {
    let id = ivshmem.id();
    let vectors = ivshmem.vectors();
    // A v1 device reports 0 peers.
    #[cfg(ivshmem_v2)]
    if ivshmem.max_peers() != 0 {
        return attach_v2(cfg, ivshmem, id, vectors);
    }
    let Some(region) = ivshmem.region() else {
        err!("ivnet{}: ivshmem has no shared memory", cfg.instance);
        return Err(-(sys::ENODEV as c_int));
    };
    if vectors < 2 {
        err!(
            "ivnet{}: ivshmem has {} interrupt vectors, ivshmem-net on ivshmem-doorbell needs 2 (vectors=2)",
            cfg.instance,
            vectors
        );
        return Err(-(sys::ENOTSUP as c_int));
    }
    let ctl = V1Region::new(region).map_err(|e| {
        err!("ivnet{}: {}", cfg.instance, e);
        -(sys::EINVAL as c_int)
    })?;
    let slot = match ctl.slot_of(id) {
        Ok(Some(s)) => s,
        _ => {
            err!(
                "ivnet{}: ivshmem id {} owns no slot in the control page: is the link served by the ivnet server?",
                cfg.instance,
                id
            );
            return Err(-(sys::EIO as c_int));
        }
    };
    match (ctl.section(slot), ctl.section(1 - slot)) {
        (Ok(own), Ok(peer)) => Ok((
            Transport::V1(V1Words { ctl, slot }),
            own,
            peer,
            id,
            VECTOR_DATA,
        )),
        _ => Err(-(sys::EINVAL as c_int)),
    }
}

#[cfg(ivshmem_v2)]
fn attach_v2(
    cfg: &sys::ivnet_config,
    dev: Ivshmem,
    id: u32,
    vectors: u16,
) -> Result<Attached, c_int> {
    let (protocol, peers) = (dev.protocol(), dev.max_peers());
    if protocol != sys::IVNET_V2_PROTO_NET || peers != 2 || id > 1 || vectors == 0 {
        err!(
            "ivnet{}: ivshmem v2 device is not an ivshmem-net link (protocol {:#x}, {} peers, id {}, {} vectors)",
            cfg.instance, protocol, peers, id, vectors
        );
        return Err(-(sys::ENOTSUP as c_int));
    }
    // SAFETY: the peer's section (read-only) goes to the queues as the one they receive
    // from, which they only read (ivnet-core writes descriptors, rings and frames only into
    // its own, transmitting section: the used rings are swapped); ours is writable.
    let sections = unsafe { (dev.output_section(id), dev.output_section(1 - id)) };
    match sections {
        (Some(own), Some(peer)) => {
            let data_vector = if vectors >= 2 {
                VECTOR_DATA
            } else {
                VECTOR_STATE
            };
            Ok((Transport::V2 { dev, id }, own, peer, id, data_vector))
        }
        _ => {
            err!(
                "ivnet{}: ivshmem v2 device has no output sections",
                cfg.instance
            );
            Err(-(sys::ENODEV as c_int))
        }
    }
}

/// Device init: find the link in the shared memory, set up queues and the link thread.
///
pub fn init(dev: Dev) -> c_int {
    let cfg = dev.config();
    let Some(ivshmem) = dev.ivshmem() else {
        err!(
            "ivnet{}: ivshmem device not ready (no such PCI device given to QEMU, or no server): interface left down",
            cfg.instance
        );
        return -(sys::ENODEV as c_int);
    };
    let (t, own, peer, id, data_vector) = match attach(cfg, ivshmem) {
        Ok(x) => x,
        Err(e) => return e,
    };
    // The transmit bookkeeping (one u32 per queue entry) lives on the kernel heap, like the
    // driver object: neither may be built on the small init stack.
    let n = Queues::<&mut [u32]>::slots_needed(own.len());
    let Some(slots) = kernel::leak_with(n, |_| 0u32) else {
        err!(
            "ivnet{}: out of heap for the queue table ({} bytes)",
            cfg.instance,
            4 * n
        );
        return -(sys::ENOMEM as c_int);
    };
    let mut ep = match Endpoint::new(t, own, peer, slots) {
        Ok(ep) => ep,
        Err(e) => {
            err!("ivnet{}: {}", cfg.instance, e);
            return -(sys::EINVAL as c_int);
        }
    };
    // Down until the stack starts the interface.
    ep.set_up(false);
    // After a warm reset of this VM (MCUmgr reset, sys_reboot) the peer may still be in RUN
    // with us: it must see us go to RESET, or both wait for each other forever. On a doorbell
    // device nothing rings it for us (the endpoint says when to).
    if ep.reset().ring_state {
        if let Some(p) = ep.peer_id() {
            ivshmem.ring(p, VECTOR_STATE);
        }
    }
    let qlen = ep.queues.geometry().qlen;
    let size = own.len();

    let Some(signal) = PollSignal::leak() else {
        err!("ivnet{}: out of heap for kernel objects", cfg.instance);
        return -(sys::ENOMEM as c_int);
    };
    let drv = Driver {
        cfg,
        ivshmem,
        iface: IfaceCell::new(),
        signal,
        // Initialised at its first use, in the leaked Driver (it must not move after that).
        tx_room: Semaphore::new(0, 1),
        link: Mutex::new(RefCell::new(Link {
            ep,
            tx_waiting: false,
            progress: Progress::new(sys::IVNET_TX_WAIT_MS, sys::IVNET_PEER_TIMEOUT_MS),
            wait_budget: WaitBudget::new(
                WAIT_WINDOW_MS,
                WAIT_WINDOW_MS * sys::IVNET_TX_WAIT_BUDGET_PCT / 100,
            ),
            reset_pending: false,
            instance: cfg.instance,
            errors: RateLimit::new(1000),
            work: 0,
            stats: Stats::default(),
        })),
        mac: mac_for(cfg, id),
        data_vector,
        carrier: AtomicU32::new(0),
        doorbells: AtomicU32::new(0),
        #[cfg(ivnet_stats)]
        stats: crate::stats::Published::new(),
        #[cfg(ivnet_eth_stats)]
        eth: dev.eth_stats(),
    };
    let Some(d) = kernel::leak(drv) else {
        err!(
            "ivnet{}: out of heap for the driver ({} bytes)",
            cfg.instance,
            core::mem::size_of::<Driver>()
        );
        return -(sys::ENOMEM as c_int);
    };
    let d: &'static Driver = d;
    #[cfg(ivnet_stats)]
    if let Ok(n) = usize::try_from(cfg.instance) {
        d.stats.register(n);
    }
    for v in [VECTOR_STATE, d.data_vector] {
        let r = ivshmem.register_handler(d.signal, v);
        if r != 0 {
            err!(
                "ivnet{}: cannot register doorbell vector {}: {}",
                cfg.instance,
                v,
                r
            );
            return r;
        }
    }
    dev.set_driver(d);
    let p = d as *const Driver as *mut c_void;
    // SAFETY: the shim gives each instance its own static thread object and stack, used
    // only here, once (the device's init runs once). The thread gets the leaked Driver,
    // which lives forever.
    unsafe {
        let tid = sys::k_thread_create(
            cfg.thread,
            cfg.stack,
            cfg.stack_size,
            Some(thread_main),
            p,
            ptr::null_mut(),
            ptr::null_mut(),
            sys::IVNET_THREAD_PRIORITY as c_int,
            0,
            sys::k_timeout_t { ticks: 0 },
        );
        sys::k_thread_name_set(tid, c"ivnet".as_ptr());
    }
    #[cfg(ivshmem_v2)]
    if let Transport::V2 { dev, .. } = t {
        dev.enable_interrupts();
    }
    inf!(
        "ivnet{}: ivshmem {} id {}, sections of {} KiB, queue {} entries, MAC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        cfg.instance, match t { Transport::V1(_) => "v1", #[cfg(ivshmem_v2)] Transport::V2 { .. } => "v2" },
        id, size / 1024, qlen,
        d.mac[0], d.mac[1], d.mac[2], d.mac[3], d.mac[4], d.mac[5]
    );
    0
}

/// iface init: MAC, L2 init, carrier off until the link runs.
pub fn iface_init(iface: Iface) {
    let dev = Dev::of(iface);
    iface.ethernet_init();
    let Some(d) = dev.driver() else {
        iface.carrier_off();
        return;
    };
    iface.set_link_addr(d.mac);
    iface.carrier_off();
    d.iface.set(iface);
    #[cfg(ivnet_cell_config)]
    if let Ok(n) = usize::try_from(d.cfg.instance) {
        crate::cellcfg::register_iface(n, iface);
    }
    d.raise();
}

/// start/stop: the interface went administratively up or down.
pub fn set_up(dev: Dev, up: bool) -> c_int {
    let Some(d) = dev.driver() else {
        return -(sys::ENODEV as c_int);
    };
    critical_section::with(|cs| d.link.borrow_ref_mut(cs).ep.set_up(up));
    d.raise();
    0
}

/// send() entry.
pub fn send(dev: Dev, pkt: PktRef<'_>) -> c_int {
    match dev.driver() {
        Some(d) => d.send(pkt),
        None => -(sys::ENETDOWN as c_int),
    }
}
