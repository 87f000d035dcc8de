//! The ivshmem-net Ethernet driver: device init, the link thread, receive and send.
//!
//! One [`Driver`] per devicetree instance, allocated once at init and never moved (the kernel
//! holds pointers to its poll signal and semaphore). Queue state lives in a
//! `critical_section::Mutex` shared by the link thread (state machine, receive) and the
//! network stack's TX thread (send).

use core::cell::{RefCell, UnsafeCell};
use core::ffi::{c_int, c_void};
use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU32, Ordering};

use critical_section::Mutex;
use ivnet_core::endpoint::{Effects, Endpoint, StateWords, V1Words};
use ivnet_core::liveness::{Progress, WaitBudget};
use ivnet_core::queue::{Queues, RxFrame};
use ivnet_core::ratelimit::RateLimit;
use ivnet_core::shm::Region;
use ivnet_core::state::LinkState;
use ivnet_core::v1::{V1Region, VECTOR_DATA, VECTOR_STATE};
use ivnet_core::ProtocolError;

use crate::copy;
use crate::log::{dbg, err, inf, wrn};
use crate::sys::{self, device, k_poll_event, k_poll_signal, k_sem, net_if, net_pkt};

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
    V2 { dev: *const device, id: u32 },
}

impl StateWords for Transport {
    fn peer_state(&self) -> Result<LinkState, ProtocolError> {
        match *self {
            Transport::V1(w) => w.peer_state(),
            #[cfg(ivshmem_v2)]
            Transport::V2 { dev, id } => {
                // SAFETY: dev is the ready ivshmem v2 device; the state table is read-only to us.
                let raw = unsafe { sys::ivshmem_get_state(dev, 1 - id) };
                LinkState::from_raw(raw)
            }
        }
    }

    fn set_state(&self, s: LinkState) -> Result<(), ProtocolError> {
        match *self {
            Transport::V1(w) => w.set_state(s),
            #[cfg(ivshmem_v2)]
            Transport::V2 { dev, .. } => {
                // SAFETY: dev is the ready ivshmem v2 device. The STATE register write is
                // mirrored into the state table and raises vector 0 at the peer.
                unsafe { sys::ivshmem_set_state(dev, s.raw()) };
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
    Pkt(*mut net_pkt),
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
    iface: AtomicPtr<net_if>,
    signal: UnsafeCell<k_poll_signal>,
    tx_room: UnsafeCell<k_sem>,
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

// SAFETY: the kernel objects are used only through kernel calls made for concurrent use; the
// link state is behind a critical-section mutex; the rest is immutable after init.
unsafe impl Sync for Driver {}

/// Zephyr's Ethernet statistics of `dev` (valid whether or not init succeeded).
///
/// # Safety
/// `dev` must be a device defined by the C shim (its data is a `struct ivnet_data`).
#[cfg(ivnet_eth_stats)]
pub unsafe fn eth_stats(dev: *const device) -> *mut sys::net_stats_eth {
    // SAFETY: per the contract, `data` points to this instance's ivnet_data, which lives as
    // long as the device (static); only its address is taken.
    unsafe { ptr::addr_of_mut!((*((*dev).data as *mut sys::ivnet_data)).stats) }
}

/// The driver of `dev` (null before init succeeded).
///
/// # Safety
/// `dev` must be a device defined by the C shim (its data is a `struct ivnet_data`).
unsafe fn driver_of(dev: *const device) -> Option<&'static Driver> {
    // SAFETY: per the contract, `data` points to this instance's ivnet_data, and `driver` is
    // either null or the Driver allocated in `init`, which lives forever.
    unsafe {
        let data = (*dev).data as *const sys::ivnet_data;
        ((*data).driver as *const Driver).as_ref()
    }
}

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
    // SAFETY: `r` is a valid buffer of 3 bytes.
    unsafe { sys::sys_rand_get(r.as_mut_ptr().cast(), r.len()) };
    // Locally administered, unicast; the low byte is the ivshmem id, so the two ends of a link
    // (whose ids differ) never share a MAC even if their random bytes agree.
    [0x02, 0x1e, r[0], r[1], r[2], id as u8]
}

type Attached = (Transport, Region<'static>, Region<'static>, u32, u16);

/// Finds our output section and the peer's, and how state is kept: the ivnet control page on
/// a v1 device (QEMU ivshmem-doorbell), the device's state table on a v2 device (Jailhouse).
fn attach(cfg: &sys::ivnet_config, ivshmem: *const device) -> Result<Attached, c_int> {
    // SAFETY: ivshmem is ready (checked by the caller).
    let id = unsafe { sys::ivshmem_get_id(ivshmem) };
    // SAFETY: as above.
    let vectors = unsafe { sys::ivshmem_get_vectors(ivshmem) };
    #[cfg(ivshmem_v2)]
    // SAFETY: as above; a v1 device reports 0 peers.
    if unsafe { sys::ivshmem_get_max_peers(ivshmem) } != 0 {
        return attach_v2(cfg, ivshmem, id, vectors);
    }
    let mut addr: usize = 0;
    // SAFETY: ivshmem is ready; addr is a valid out pointer.
    let size = unsafe { sys::ivshmem_get_mem(ivshmem, &mut addr) };
    if size == 0 || addr == 0 {
        err!("ivnet{}: ivshmem has no shared memory", cfg.instance);
        return Err(-(sys::ENODEV as c_int));
    }
    if vectors < 2 {
        err!(
            "ivnet{}: ivshmem has {} interrupt vectors, ivshmem-net on ivshmem-doorbell needs 2 (vectors=2)",
            cfg.instance,
            vectors
        );
        return Err(-(sys::ENOTSUP as c_int));
    }
    // SAFETY: ivshmem_get_mem returned a mapping of `size` bytes at `addr` that stays mapped
    // for the life of the system; only Region accessors touch it.
    let region = unsafe { Region::new(addr as *mut u8, size) };
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
    dev: *const device,
    id: u32,
    vectors: u16,
) -> Result<Attached, c_int> {
    // SAFETY: dev is a ready ivshmem v2 device.
    let (protocol, peers) = unsafe {
        (
            sys::ivshmem_get_protocol(dev),
            sys::ivshmem_get_max_peers(dev),
        )
    };
    if protocol as u32 != sys::IVNET_V2_PROTO_NET || peers != 2 || id > 1 || vectors == 0 {
        err!(
            "ivnet{}: ivshmem v2 device is not an ivshmem-net link (protocol {:#x}, {} peers, id {}, {} vectors)",
            cfg.instance, protocol, peers, id, vectors
        );
        return Err(-(sys::ENOTSUP as c_int));
    }
    let section = |peer: u32| -> Option<Region<'static>> {
        let mut addr: usize = 0;
        // SAFETY: dev is ready; addr is a valid out pointer.
        let size = unsafe { sys::ivshmem_get_output_mem_section(dev, peer, &mut addr) };
        // SAFETY: the device maps each output section for the life of the system (ours
        // read-write, the peer's read-only, which we only read).
        (size != 0 && addr != 0).then(|| unsafe { Region::new(addr as *mut u8, size) })
    };
    match (section(id), section(1 - id)) {
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
/// # Safety
/// `dev` must be a device defined by the C shim.
pub unsafe fn init(dev: *const device) -> c_int {
    // SAFETY: the shim defines config as a static ivnet_config.
    let cfg: &'static sys::ivnet_config = unsafe { &*((*dev).config as *const sys::ivnet_config) };
    let ivshmem = cfg.ivshmem;
    // SAFETY: ivshmem is a device pointer from DEVICE_DT_GET.
    if !unsafe { sys::device_is_ready(ivshmem) } {
        err!(
            "ivnet{}: ivshmem device not ready (no such PCI device given to QEMU, or no server): interface left down",
            cfg.instance
        );
        return -(sys::ENODEV as c_int);
    }
    let (t, own, peer, id, data_vector) = match attach(cfg, ivshmem) {
        Ok(x) => x,
        Err(e) => return e,
    };
    // The transmit bookkeeping (one u32 per queue entry) lives on the kernel heap, like the
    // driver object: neither may be built on the small init stack.
    let n = Queues::<&mut [u32]>::slots_needed(own.len());
    // SAFETY: plain allocation from the kernel heap; checked for null below.
    let table = unsafe { sys::k_aligned_alloc(4, 4 * n) } as *mut u32;
    if table.is_null() {
        err!(
            "ivnet{}: out of heap for the queue table ({} bytes)",
            cfg.instance,
            4 * n
        );
        return -(sys::ENOMEM as c_int);
    }
    // SAFETY: `table` is a fresh allocation of n u32s, zeroed here, never freed (the device
    // lives as long as the system), and only this driver instance uses it.
    let slots: &'static mut [u32] = unsafe {
        ptr::write_bytes(table, 0, n);
        core::slice::from_raw_parts_mut(table, n)
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
            // SAFETY: ivshmem is ready; ringing a peer is a register write.
            unsafe { sys::ivshmem_int_peer(ivshmem, p, VECTOR_STATE) };
        }
    }
    let qlen = ep.queues.geometry().qlen;
    let size = own.len();

    // SAFETY: plain allocation from the kernel heap; checked for null below.
    let mem = unsafe {
        sys::k_aligned_alloc(
            core::mem::align_of::<Driver>(),
            core::mem::size_of::<Driver>(),
        )
    } as *mut Driver;
    if mem.is_null() {
        err!(
            "ivnet{}: out of heap for the driver ({} bytes)",
            cfg.instance,
            core::mem::size_of::<Driver>()
        );
        return -(sys::ENOMEM as c_int);
    }
    let drv = Driver {
        cfg,
        iface: AtomicPtr::new(ptr::null_mut()),
        // SAFETY: kernel objects are plain C structs initialised below by their init calls.
        signal: UnsafeCell::new(unsafe { core::mem::zeroed() }),
        // SAFETY: as above.
        tx_room: UnsafeCell::new(unsafe { core::mem::zeroed() }),
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
        // SAFETY: dev is one of our devices.
        #[cfg(ivnet_eth_stats)]
        eth: unsafe { eth_stats(dev) },
    };
    // SAFETY: `mem` is a fresh, aligned allocation big enough for a Driver.
    unsafe { mem.write(drv) };
    // SAFETY: just initialised; it is never freed or moved.
    let d: &'static Driver = unsafe { &*mem };
    #[cfg(ivnet_stats)]
    if let Ok(n) = usize::try_from(cfg.instance) {
        d.stats.register(n);
    }
    // SAFETY: the signal and semaphore live inside the never-moving Driver; the ivshmem
    // device keeps the signal pointer for its ISR.
    unsafe {
        sys::k_poll_signal_init(d.signal.get());
        sys::k_sem_init(d.tx_room.get(), 0, 1);
        for v in [VECTOR_STATE, d.data_vector] {
            let r = sys::ivshmem_register_handler(ivshmem, d.signal.get(), v);
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
        let data = (*dev).data as *mut sys::ivnet_data;
        (*data).driver = mem as *mut c_void;
        let tid = sys::k_thread_create(
            cfg.thread,
            cfg.stack,
            cfg.stack_size,
            Some(thread_main),
            mem as *mut c_void,
            ptr::null_mut(),
            ptr::null_mut(),
            sys::IVNET_THREAD_PRIORITY as c_int,
            0,
            sys::NO_WAIT,
        );
        sys::k_thread_name_set(tid, c"ivnet".as_ptr());
        #[cfg(ivshmem_v2)]
        if let Transport::V2 { dev, .. } = t {
            sys::ivshmem_enable_interrupts(dev, true);
        }
    }
    inf!(
        "ivnet{}: ivshmem {} id {}, sections of {} KiB, queue {} entries, MAC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        cfg.instance, match t { Transport::V1(_) => "v1", #[cfg(ivshmem_v2)] Transport::V2 { .. } => "v2" },
        id, size / 1024, qlen,
        d.mac[0], d.mac[1], d.mac[2], d.mac[3], d.mac[4], d.mac[5]
    );
    0
}

impl Driver {
    fn raise(&self) {
        // SAFETY: the signal was initialised in init.
        unsafe { sys::k_poll_signal_raise(self.signal.get(), 0) };
    }

    fn ring(&self, peer: Option<u32>, vector: u16) {
        if let Some(p) = peer {
            self.doorbells.fetch_add(1, Ordering::Relaxed);
            // SAFETY: ivshmem device pointer from the config.
            unsafe { sys::ivshmem_int_peer(self.cfg.ivshmem, p, vector) };
        }
    }

    fn set_carrier(&self, iface: *mut net_if, on: bool) {
        if self.carrier.swap(on as u32, Ordering::Relaxed) == on as u32 {
            return;
        }
        // SAFETY: iface is the interface the stack gave us in iface_init.
        unsafe {
            if on {
                sys::net_eth_carrier_on(iface);
            } else {
                sys::net_eth_carrier_off(iface);
            }
        }
        inf!(
            "ivnet{}: carrier {}",
            self.cfg.instance,
            if on { "on" } else { "off" }
        );
    }

    fn apply(&self, iface: *mut net_if, fx: Effects, peer: Option<u32>) {
        if fx.ring_state {
            self.ring(peer, VECTOR_STATE);
        }
        if let Some(c) = fx.carrier {
            self.set_carrier(iface, c);
        }
    }

    /// Publishes the counters (with CONFIG_ETH_IVNET_STATS); inside the critical section.
    fn publish(&self, l: &mut Link) {
        l.stats.doorbells = self.doorbells.load(Ordering::Relaxed);
        #[cfg(ivnet_stats)]
        self.stats.publish(&l.stats);
        #[cfg(ivnet_eth_stats)]
        // SAFETY: `eth` is this device's statistics (static, aligned). The L2 increments other
        // fields of it from the RX and TX paths; these four are the driver's alone. Each is
        // stored as a relaxed atomic, since `net stats` may read it meanwhile.
        unsafe {
            let e = self.eth;
            let set = |p: *mut sys::net_stats_t, v: u32| {
                AtomicU32::from_ptr(p).store(v, Ordering::Relaxed)
            };
            set(ptr::addr_of_mut!((*e).tx_dropped), l.stats.tx_dropped);
            set(
                ptr::addr_of_mut!((*e).tx_timeout_count),
                l.stats.peer_stalls,
            );
            set(
                ptr::addr_of_mut!((*e).tx_restart_queue),
                l.stats.protocol_resets.wrapping_add(l.stats.peer_stalls),
            );
            set(
                ptr::addr_of_mut!((*e).error_details.rx_no_buffer_count),
                l.stats.rx_dropped,
            );
        }
    }

    /// One round of the link thread: follow the state, receive, wake a waiting sender. Also
    /// says whether the round achieved anything (see `Link::work`).
    fn round(&self, iface: *mut net_if) -> (RoundResult, bool) {
        let mut work_before = 0;
        let (fx, peer, running) = critical_section::with(|cs| {
            let mut l = self.link.borrow_ref_mut(cs);
            work_before = l.work;
            self.publish(&mut l);
            let pending = core::mem::take(&mut l.reset_pending);
            let mut fx = l.update();
            if pending && fx.carrier.is_none() {
                // A reset in send(): its effects are applied here.
                fx.carrier = Some(false);
                fx.ring_state |= l.ep.words().rings_on_state_change();
            }
            if l.ep.running() && l.ep.queues.tx.in_flight() > 0 {
                // Liveness: is the peer still completing what we sent?
                match l.reclaim() {
                    Ok(()) if l.progress.stuck(now(), l.ep.queues.tx.in_flight()) => {
                        fx = l.stall_reset();
                    }
                    Ok(()) => {}
                    Err(reset) => fx = reset,
                }
            }
            (fx, l.ep.peer_id(), l.ep.running())
        });
        let entered = fx.entered_run;
        self.apply(iface, fx, peer);
        if !running {
            self.wake_sender();
            return (RoundResult::Idle, false);
        }
        let r = self.receive(iface);
        self.wake_sender();
        // The counters as they stand after this round: the thread may now sleep for long, and
        // what it just received must not stay unpublished meanwhile.
        let worked = critical_section::with(|cs| {
            let mut l = self.link.borrow_ref_mut(cs);
            self.publish(&mut l);
            l.work != work_before
        });
        if entered && r == RoundResult::Idle {
            return (RoundResult::More, true);
        }
        (r, worked)
    }

    /// How long the link thread may sleep before it must look at the peer's progress: set
    /// while frames are in flight on a running link.
    fn liveness_timeout(&self) -> Option<u32> {
        critical_section::with(|cs| {
            let l = self.link.borrow_ref(cs);
            if !l.ep.running() {
                return None;
            }
            l.progress.next_check(now(), l.ep.queues.tx.in_flight())
        })
    }

    fn wake_sender(&self) {
        let wake = critical_section::with(|cs| {
            let mut l = self.link.borrow_ref_mut(cs);
            if !l.tx_waiting {
                return None;
            }
            if l.ep.running() && l.reclaim().is_err() {
                // The link was reset: the woken sender sees it down, and the next round (the
                // signal is raised below) turns the carrier off and rings the peer.
                return Some(true);
            }
            Some(false)
        });
        let (wake, reset) = match wake {
            Some(r) => (true, r),
            None => (false, false),
        };
        if reset {
            self.raise();
        }
        if wake {
            // SAFETY: initialised in init.
            unsafe { sys::k_sem_give(self.tx_room.get()) };
        }
    }

    /// Receives up to the budget; says whether more frames are waiting.
    fn receive(&self, iface: *mut net_if) -> RoundResult {
        let budget = sys::IVNET_RX_BUDGET;
        for _ in 0..budget {
            let polled = critical_section::with(|cs| {
                let mut l = self.link.borrow_ref_mut(cs);
                if !l.ep.running() {
                    return Ok(None);
                }
                match l.ep.queues.rx.poll() {
                    Ok(Some(f)) => Ok(Some((
                        f,
                        l.ep.queues.rx.region().ptr_range(f.offset, f.len),
                        l.ep.generation(),
                    ))),
                    Ok(None) => Ok(None),
                    Err(e) => Err((l.protocol_reset(e), l.ep.peer_id())),
                }
            });
            let (frame, ptr, generation) = match polled {
                Ok(Some(x)) => x,
                Ok(None) => return self.finish_rx(iface, false).into(),
                Err((fx, peer)) => {
                    self.apply(iface, fx, peer);
                    return RoundResult::Idle;
                }
            };
            let pkt = match ptr {
                Ok(p) => match self.to_pkt(iface, frame, p) {
                    Rx::Pkt(p) => Some(p),
                    Rx::Drop => None,
                    Rx::NoBuffer => {
                        // Leave the frame in the peer's ring (back-pressure: the peer stops
                        // when its ring is full) and come back when the stack freed buffers.
                        self.finish_rx(iface, false);
                        return RoundResult::NoBuffer;
                    }
                },
                Err(_) => None,
            };
            let completed = critical_section::with(|cs| {
                let mut l = self.link.borrow_ref_mut(cs);
                if l.ep.generation() != generation || !l.ep.running() {
                    return false;
                }
                if l.ep.queues.rx.complete(frame).is_err() {
                    return false;
                }
                l.work = l.work.wrapping_add(1);
                if pkt.is_some() {
                    l.stats.rx_frames += 1;
                    l.stats.rx_bytes = l.stats.rx_bytes.wrapping_add(frame.len as u32);
                } else {
                    l.stats.rx_dropped += 1;
                }
                true
            });
            if let Some(pkt) = pkt {
                if !completed {
                    // SAFETY: we own pkt; the link was reset under it.
                    unsafe { sys::net_pkt_unref(pkt) };
                    return RoundResult::Idle;
                }
                // SAFETY: iface and pkt are valid; on error we still own pkt.
                if unsafe { sys::net_recv_data(iface, pkt) } < 0 {
                    // SAFETY: see above.
                    unsafe { sys::net_pkt_unref(pkt) };
                }
            }
        }
        self.finish_rx(iface, true).into()
    }

    /// Publishes completions (ringing the peer if it asked); re-arms the doorbell when the
    /// ring is empty. Returns whether frames are waiting.
    fn finish_rx(&self, iface: *mut net_if, budget_used: bool) -> bool {
        let (ring, more, fx, peer) = critical_section::with(|cs| {
            let mut l = self.link.borrow_ref_mut(cs);
            let peer = l.ep.peer_id();
            match l.ep.finish_rx(budget_used) {
                Ok(done) => (done.ring_data, done.more, None, peer),
                Err(e) => (false, false, Some(l.protocol_reset(e)), peer),
            }
        });
        if ring {
            self.ring(peer, self.data_vector);
        }
        if let Some(fx) = fx {
            self.apply(iface, fx, peer);
        }
        more
    }

    /// Copies one frame out of shared memory into a fresh net_pkt, or says why not.
    fn to_pkt(&self, iface: *mut net_if, f: RxFrame, src: *mut u8) -> Rx {
        if f.len > max_frame() {
            let log = critical_section::with(|cs| self.link.borrow_ref_mut(cs).errors.check(now()));
            if let Some(n) = log {
                wrn!(
                    "ivnet{}: dropping a {}-byte frame (MTU 1500){}",
                    self.cfg.instance,
                    f.len,
                    Suppressed(n)
                );
            }
            return Rx::Drop;
        }
        // First without waiting (no clock read per packet). When the pools are empty, wait in
        // the allocator, which wakes us as soon as the stack frees a buffer; if that takes
        // too long the frame stays in the ring (back-pressure to the peer).
        // Buffers for the frame plus its alignment padding (see write_pkt).
        let alloc = |t| {
            // SAFETY: iface is valid; the allocation may fail (null), which we handle.
            let pkt = unsafe { sys::net_pkt_rx_alloc_on_iface(iface, t) };
            if pkt.is_null() {
                return pkt;
            }
            // SAFETY: pkt is ours and has no buffer yet.
            if unsafe { sys::net_pkt_alloc_buffer_raw(pkt, f.len + RX_PAD_MAX, t) } < 0 {
                // SAFETY: we own pkt.
                unsafe { sys::net_pkt_unref(pkt) };
                return ptr::null_mut();
            }
            pkt
        };
        let mut pkt = alloc(sys::NO_WAIT);
        if pkt.is_null() {
            pkt = alloc(sys::msec(20));
        }
        if pkt.is_null() {
            return Rx::NoBuffer;
        }
        // SAFETY: `src` is a checked range of f.len bytes in the peer's section, which the
        // peer may not reuse before we complete the frame; pkt is ours and was allocated
        // with room for f.len bytes.
        if unsafe { write_pkt(pkt, src, f.len) } {
            Rx::Pkt(pkt)
        } else {
            // SAFETY: we own pkt.
            unsafe { sys::net_pkt_unref(pkt) };
            Rx::Drop
        }
    }

    /// send(): copies the frame into a ring slot.
    ///
    /// When the ring is full it waits for room (back-pressure) only while the peer keeps
    /// completing frames: at most CONFIG_ETH_IVNET_TX_WAIT_MS after the peer's last
    /// completion. This runs on the stack's TX thread, which every interface shares: a peer
    /// that stopped costs it one such wait, later frames for that peer are dropped at once,
    /// and the link thread resets the link after CONFIG_ETH_IVNET_PEER_TIMEOUT_MS.
    fn send(&self, pkt: *mut net_pkt) -> c_int {
        // SAFETY: pkt is valid for the call (the stack owns it).
        let len = unsafe { sys::net_pkt_get_len(pkt) };
        if len < ivnet_core::queue::MIN_FRAME as usize || len > max_frame() {
            return -(sys::EMSGSIZE as c_int);
        }
        loop {
            let r = critical_section::with(|cs| {
                let mut l = self.link.borrow_ref_mut(cs);
                let peer = l.ep.peer_id();
                if !l.ep.running() {
                    return Tx::Fail(-(sys::ENETDOWN as c_int));
                }
                if l.reclaim().is_err() {
                    return Tx::Fail(-(sys::EIO as c_int));
                }
                let Some(slot) = l.ep.queues.tx.reserve(len) else {
                    let t = now();
                    let left = l.progress.wait_left(t).min(l.wait_budget.left(t));
                    if left == 0 {
                        // The peer completed nothing lately, or this link has had its share
                        // of the TX thread: drop rather than hold up every other interface.
                        l.tx_waiting = false;
                        l.stats.tx_dropped += 1;
                        return Tx::Fail(-(sys::ENOBUFS as c_int));
                    }
                    l.tx_waiting = true;
                    l.stats.tx_waits += 1;
                    let _ = l.ep.queues.tx.request_completion_notify();
                    return Tx::Wait(left);
                };
                let Ok(dst) = l.ep.queues.tx.region().ptr_range(slot.offset(), len) else {
                    return Tx::Fail(-(sys::EIO as c_int));
                };
                // SAFETY: dst is a checked range of `len` bytes in our own section, reserved
                // for this frame; pkt holds `len` bytes.
                if !unsafe { read_pkt(pkt, dst, len) } {
                    return Tx::Fail(-(sys::EIO as c_int));
                }
                if let Err(e) = l.ep.queues.tx.push(slot) {
                    let _ = l.protocol_reset(e);
                    return Tx::Fail(-(sys::EIO as c_int));
                }
                l.tx_waiting = false;
                l.stats.tx_frames += 1;
                l.stats.tx_bytes = l.stats.tx_bytes.wrapping_add(len as u32);
                self.publish(&mut l);
                match l.ep.queues.tx.publish() {
                    Ok(ring) => Tx::Sent(if ring { peer } else { None }),
                    Err(e) => {
                        let _ = l.protocol_reset(e);
                        Tx::Fail(-(sys::EIO as c_int))
                    }
                }
            });
            match r {
                Tx::Sent(peer) => {
                    self.ring(peer, self.data_vector);
                    return 0;
                }
                Tx::Wait(left) => {
                    // The link thread gives the semaphore after the peer's completion
                    // doorbell; look again at least every 10 ms.
                    let t = now();
                    // SAFETY: initialised in init.
                    unsafe { sys::k_sem_take(self.tx_room.get(), sys::msec(left.min(10))) };
                    let waited = now().saturating_sub(t).max(1);
                    critical_section::with(|cs| {
                        let mut l = self.link.borrow_ref_mut(cs);
                        l.wait_budget
                            .charge(u32::try_from(waited).unwrap_or(u32::MAX));
                    });
                }
                Tx::Fail(e) => {
                    if e == -(sys::EIO as c_int) {
                        // The link was reset: the link thread turns the carrier off.
                        self.raise();
                    }
                    return e;
                }
            }
        }
    }
}

/// What one attempt of send() came to.
enum Tx {
    /// Queued; ring this peer (if any).
    Sent(Option<u32>),
    /// The ring is full and the peer is making progress: wait up to this many ms.
    Wait(u32),
    /// Give up with this error.
    Fail(c_int),
}

/// " (N more suppressed)" after a rate-limited message, when N > 0.
struct Suppressed(u32);

impl core::fmt::Display for Suppressed {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if self.0 > 0 {
            write!(f, " ({} more suppressed)", self.0)
        } else {
            Ok(())
        }
    }
}

/// The window of send()'s wait budget (CONFIG_ETH_IVNET_TX_WAIT_BUDGET_PCT of it per link).
const WAIT_WINDOW_MS: u32 = 100;

/// Milliseconds since boot (the liveness clock).
fn now() -> u64 {
    // SAFETY: reads the system uptime; callable from any thread.
    let t = unsafe { sys::k_uptime_get() };
    t.max(0) as u64
}

/// Most padding `write_pkt` puts in front of a received frame.
const RX_PAD_MAX: usize = 7;

/// Where the transport payload of an Ethernet frame starts (TCP or UDP over IPv4 or IPv6;
/// else the network header). Only chooses padding: a wrong answer from a bad peer costs
/// speed, nothing else.
fn payload_offset(b: impl Fn(usize) -> u8, len: usize) -> usize {
    let at = |i: usize| if i < len { b(i) as usize } else { 0 };
    let (l3, proto) = match (at(12) << 8) | at(13) {
        0x0800 => (14 + (at(14) & 0xf) * 4, at(23)),
        0x86dd => (14 + 40, at(20)),
        _ => return 14,
    };
    match proto {
        6 => l3 + (at(l3 + 12) >> 4) * 4,
        17 => l3 + 8,
        _ => l3,
    }
}

/// Appends `len` bytes from `src` to a fresh packet's buffer chain; false if the chain is
/// too short.
///
/// The frame starts up to `RX_PAD_MAX` bytes into the first buffer, so that its TCP or UDP
/// payload is 8-byte aligned (the idea of Linux's NET_IP_ALIGN, one layer up). The
/// application's copy out of the packet then shares the alignment of its receive buffer; with
/// Zephyr's minimal libc, a copy between differently aligned buffers runs byte by byte.
///
/// # Safety
/// `pkt` is a packet we own whose buffers hold no data yet and have room for
/// `len + RX_PAD_MAX` bytes (as `to_pkt` allocates); `src` is readable for `len` bytes.
unsafe fn write_pkt(pkt: *mut net_pkt, mut src: *const u8, len: usize) -> bool {
    let mut left = len;
    // SAFETY: a packet's buffer chain is a list of valid net_bufs ending in null.
    let mut buf = unsafe { (*pkt).__bindgen_anon_1.buffer };
    if !buf.is_null() {
        // SAFETY: `src` is readable for `len` bytes (the closure never reads past them);
        // the peer may change them meanwhile, which only changes the padding chosen.
        let off = payload_offset(|i| unsafe { copy::load_byte(src.add(i)) }, len);
        // SAFETY: buf is valid and empty; `b` is its net_buf_simple view.
        let sb = unsafe { &mut (*buf).__bindgen_anon_1.b };
        let pad = (8 - (sb.data as usize + off) % 8) % 8;
        // SAFETY: sb is valid.
        if unsafe { sys::net_buf_simple_tailroom(sb) } > pad + off {
            // SAFETY: the buffer is empty; this moves its data pointer `pad` <= RX_PAD_MAX
            // bytes in, and the chain holds `len + RX_PAD_MAX` bytes.
            unsafe { sys::net_buf_simple_reserve(sb, pad) };
        }
    }
    while left > 0 && !buf.is_null() {
        // SAFETY: buf is a valid net_buf; `b` is its net_buf_simple view.
        let sb = unsafe { &mut (*buf).__bindgen_anon_1.b };
        // SAFETY: sb is valid.
        let n = left.min(unsafe { sys::net_buf_simple_tailroom(sb) });
        // SAFETY: add returns the old tail and grows len by n <= tailroom.
        let dst = unsafe { sys::net_buf_simple_add(sb, n) } as *mut u8;
        // SAFETY: dst has n bytes of tailroom just claimed; src has `left` >= n bytes left.
        unsafe { copy::copy(dst, src, n) };
        // SAFETY: within the caller's range.
        src = unsafe { src.add(n) };
        left -= n;
        // SAFETY: see above.
        buf = unsafe { (*buf).frags };
    }
    left == 0
}

/// Copies a packet's `len` bytes (its whole buffer chain) to `dst`; false if the chain does
/// not hold exactly `len` bytes.
///
/// # Safety
/// `pkt` is a valid packet; `dst` is writable for `len` bytes.
unsafe fn read_pkt(pkt: *mut net_pkt, mut dst: *mut u8, len: usize) -> bool {
    let mut left = len;
    // SAFETY: a packet's buffer chain is a list of valid net_bufs ending in null.
    let mut buf = unsafe { (*pkt).__bindgen_anon_1.buffer };
    while !buf.is_null() {
        // SAFETY: buf is valid; `b` is its net_buf_simple view (data, len).
        let sb = unsafe { &(*buf).__bindgen_anon_1.b };
        let n = sb.len as usize;
        if n > left {
            return false;
        }
        // SAFETY: sb.data holds n bytes; dst has `left` >= n bytes left.
        unsafe { copy::copy(dst, sb.data, n) };
        // SAFETY: within the caller's range.
        dst = unsafe { dst.add(n) };
        left -= n;
        // SAFETY: see above.
        buf = unsafe { (*buf).frags };
    }
    left == 0
}

unsafe extern "C" fn thread_main(p1: *mut c_void, _: *mut c_void, _: *mut c_void) {
    // SAFETY: p1 is the Driver allocated in init, which lives forever.
    let d: &'static Driver = unsafe { &*(p1 as *const Driver) };
    // SAFETY: k_poll_event is a plain C struct initialised by k_poll_event_init.
    let mut ev: k_poll_event = unsafe { core::mem::zeroed() };
    // SAFETY: ev and the signal outlive the loop (forever).
    unsafe {
        sys::k_poll_event_init(
            &mut ev,
            sys::IVNET_POLL_TYPE_SIGNAL,
            sys::IVNET_POLL_MODE_NOTIFY_ONLY,
            d.signal.get() as *mut c_void,
        )
    };
    let mut more = false;
    let mut no_buffer_logged = false;
    let mut idle_wakeups = 0u32;
    // Since when the thread has received full budgets back to back (None: it went idle).
    let mut busy_since: Option<u64> = None;
    loop {
        let iface = d.iface.load(Ordering::Acquire);
        if !more {
            // While the link is down, look again every 100 ms (a doorbell rung before the
            // ringer knew our vectors is lost). While it runs, doorbells are reliable and any
            // change of the peer's state rings us: wait without a timeout (no timer armed and
            // cancelled on every wake-up), unless frames are in flight.
            // Frames in flight: wake up in time to judge the peer's progress.
            let running = d.carrier.load(Ordering::Relaxed) != 0;
            let t = if !running {
                sys::msec(100)
            } else {
                match d.liveness_timeout() {
                    Some(ms) => sys::msec(ms.max(1)),
                    None => sys::FOREVER,
                }
            };
            // SAFETY: ev is initialised and refers to our signal.
            unsafe { sys::k_poll(&mut ev, 1, t) };
        }
        // Clear before processing: a doorbell during the round raises the signal again.
        // SAFETY: the signal is initialised.
        unsafe { sys::k_poll_signal_reset(d.signal.get()) };
        ev.set_state(sys::IVNET_POLL_STATE_NOT_READY);
        if iface.is_null() {
            more = false;
            continue;
        }
        let (result, worked) = d.round(iface);
        // Woken twice in a row for nothing: a peer is ringing without a reason (a doorbell
        // flood). Let the doorbells pile up for a millisecond: they are level-like (the
        // signal stays raised), so nothing is lost, and the thread no longer runs once per
        // doorbell.
        idle_wakeups = if worked { 0 } else { idle_wakeups + 1 };
        if idle_wakeups >= 2 {
            idle_wakeups = 0;
            // SAFETY: plain sleep of the link thread.
            unsafe { sys::k_sleep(sys::msec(1)) };
        }
        if !matches!(result, RoundResult::More) {
            busy_since = None;
        }
        more = match result {
            RoundResult::Idle => false,
            RoundResult::More => {
                // A full budget and more waiting: let threads of our priority (the
                // application's, when it shares it) take what we delivered before the next
                // batch. A streak longer than ETH_IVNET_RX_BUSY_MS (a peer flooding the link
                // with frames the stack drops) also lets lower priorities run: one tick off
                // (frames wait in the ring).
                let t = now();
                let since = *busy_since.get_or_insert(t);
                if t.saturating_sub(since) >= u64::from(sys::IVNET_RX_BUSY_MS) {
                    busy_since = None;
                    // SAFETY: plain sleep of the link thread.
                    unsafe { sys::k_sleep(sys::msec(1)) };
                } else {
                    // SAFETY: plain yield of the link thread.
                    unsafe { sys::k_yield() };
                }
                true
            }
            RoundResult::NoBuffer => {
                if !no_buffer_logged {
                    dbg!(
                        "ivnet{}: network buffers exhausted, holding frames in the ring",
                        d.cfg.instance
                    );
                    no_buffer_logged = true;
                }
                // SAFETY: plain sleep of the link thread; the stack frees buffers meanwhile.
                unsafe { sys::k_sleep(sys::msec(1)) };
                true
            }
        };
    }
}

/// iface init: MAC, L2 init, carrier off until the link runs.
///
/// # Safety
/// `iface` is the interface of one of our devices.
pub unsafe fn iface_init(iface: *mut net_if) {
    // SAFETY: the stack passes an interface created by our device definition.
    let dev = unsafe { sys::net_if_get_device(iface) };
    // SAFETY: ethernet_init is safe to call for any Ethernet interface.
    unsafe { sys::ethernet_init(iface) };
    // SAFETY: dev is one of our devices.
    let Some(d) = (unsafe { driver_of(dev) }) else {
        // SAFETY: iface is valid.
        unsafe { sys::net_if_carrier_off(iface) };
        return;
    };
    let mut mac = d.mac;
    // SAFETY: iface is valid; the stack copies the address.
    unsafe {
        sys::net_if_set_link_addr(
            iface,
            mac.as_mut_ptr(),
            6,
            sys::net_link_type_NET_LINK_ETHERNET as _,
        );
        sys::net_if_carrier_off(iface);
    }
    d.iface.store(iface, Ordering::Release);
    #[cfg(ivnet_cell_config)]
    if let Ok(n) = usize::try_from(d.cfg.instance) {
        crate::cellcfg::register_iface(n, iface);
    }
    d.raise();
}

/// start/stop: the interface went administratively up or down.
///
/// # Safety
/// `dev` must be one of our devices.
pub unsafe fn set_up(dev: *const device, up: bool) -> c_int {
    // SAFETY: per contract.
    let Some(d) = (unsafe { driver_of(dev) }) else {
        return -(sys::ENODEV as c_int);
    };
    critical_section::with(|cs| d.link.borrow_ref_mut(cs).ep.set_up(up));
    d.raise();
    0
}

/// send() entry.
///
/// # Safety
/// `dev` must be one of our devices, `pkt` a valid packet.
pub unsafe fn send(dev: *const device, pkt: *mut net_pkt) -> c_int {
    // SAFETY: per contract.
    match unsafe { driver_of(dev) } {
        Some(d) => d.send(pkt),
        None => -(sys::ENETDOWN as c_int),
    }
}
