//! The supervisor of one network: its start (`try_up`, undone step by step when it fails),
//! the host peers and observers of its links, `reconcile` and `teardown`.

use super::*;

/// What a host peer thread publishes.
#[derive(Debug, Default, Clone)]
pub(super) struct PeerView {
    pub(super) stats: Stats,
    pub(super) state: String,
    pub(super) carrier: bool,
    pub(super) connected: bool,
}

pub(super) struct HostPeer {
    pub(super) view: Arc<Mutex<PeerView>>,
    /// Where `ivnet capture` attaches a capture of the link (see [`Tee`]).
    pub(super) capture: Arc<CaptureSlot>,
    pub(super) thread: JoinHandle<()>,
}

pub(super) struct CellProc {
    pub(super) child: Option<Child>,
    pub(super) restarts: u64,
    pub(super) exits: u64,
}

/// The supervisor of one network.
pub struct Supervisor {
    pub(super) topo: Topology,
    pub(super) paths: Paths,
    pub(super) metrics_addr: String,
    pub(super) qemu: String,
    /// The QEMU with the project's ivshmem 2.0 device, for cells on `ivshmem = 2` links.
    pub(super) qemu_v2: Option<String>,
    /// The user the cells' QEMUs drop to (when the supervisor runs as root).
    pub(super) qemu_user: Option<String>,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) record: Record,
    pub(super) servers: Vec<JoinHandle<io::Result<()>>>,
    pub(super) peers: BTreeMap<usize, HostPeer>,
    pub(super) dnsmasq: Option<Child>,
    pub(super) cells: Vec<CellProc>,
    pub(super) leases: BTreeMap<Mac, Ipv4Addr>,
    pub(super) applied_forwards: Option<Vec<nft::Forward>>,
    pub(super) started: Instant,
    /// What the host sees of each cell<->cell link (by link index), sampled every 20 ms.
    pub(super) observed: BTreeMap<usize, Arc<Mutex<Counts>>>,
    pub(super) observer: Option<JoinHandle<()>>,
    /// A second observer of each cell<->cell link, for `ivnet capture` (one capture at a time).
    pub(super) capture_observers: BTreeMap<usize, Arc<Mutex<LinkObserver>>>,
    /// The captures that run.
    pub(super) captures: Vec<RunningCapture>,
}

impl Supervisor {
    /// A supervisor for `topo` with its state in `paths` (not started).
    pub fn new(topo: Topology, paths: Paths, metrics_addr: String) -> Supervisor {
        let network = paths.name.clone();
        let cells = topo
            .cells
            .iter()
            .map(|_| CellProc {
                child: None,
                restarts: 0,
                exits: 0,
            })
            .collect();
        Supervisor {
            topo,
            paths,
            metrics_addr,
            qemu: std::env::var("IVNET_QEMU").unwrap_or_else(|_| "qemu-system-aarch64".into()),
            qemu_v2: qemu_v2(),
            qemu_user: None,
            stop: Arc::new(AtomicBool::new(false)),
            record: Record {
                network: Some(network),
                supervisor: Some(std::process::id()),
                ..Record::default()
            },
            servers: Vec::new(),
            peers: BTreeMap::new(),
            dnsmasq: None,
            cells,
            leases: BTreeMap::new(),
            applied_forwards: None,
            started: Instant::now(),
            observed: BTreeMap::new(),
            observer: None,
            capture_observers: BTreeMap::new(),
            captures: Vec::new(),
        }
    }

    pub(super) fn save_record(&self) {
        // Written aside and renamed: `down` may read it at any moment.
        let text = serde_json::to_string_pretty(&self.record).expect("serialisable");
        let tmp = self.paths.record().with_extension("json.new");
        if let Err(e) = fs::write(&tmp, text).and_then(|_| fs::rename(&tmp, self.paths.record())) {
            warn!("cannot write {}: {e}", self.paths.record().display());
        }
    }

    pub(super) fn note_process(&mut self, what: String, pid: u32) {
        self.record.processes.retain(|(w, _)| *w != what);
        self.record.processes.push((what, pid));
        self.save_record();
    }

    pub(super) fn needs_forwarding(&self) -> bool {
        self.topo.host.uplink.is_some() || !self.topo.host.forwards.is_empty()
    }

    /// Brings everything up; on error, undoes what it did and returns the error.
    pub fn up(&mut self) -> io::Result<()> {
        let r = self.try_up();
        if let Err(e) = &r {
            error!("up failed, rolling back: {e}");
            self.teardown();
        }
        r
    }

    pub(super) fn try_up(&mut self) -> io::Result<()> {
        if let Some(i) = self.topo.links.iter().position(|l| l.ivshmem == 2) {
            if self.qemu_v2.is_none() {
                return Err(err(format!(
                    "link {i} is ivshmem 2.0: that needs the project's QEMU with the ivshmem2 \
                     device (scripts/qemu-build.sh builds it into ~/.cache/ivnet/qemu; or set \
                     IVNET_QEMU_V2 to its qemu-system-aarch64)"
                )));
            }
        }
        self.copy_images()?;
        if let Some(spec) = &self.topo.host.isolation {
            // The supervisor goes in first: its threads (ivshmem servers, host peers) and
            // every process it starts from now on (dnsmasq, QEMUs) are born in the group.
            let own = fs::read_to_string("/proc/self/cgroup")?;
            let g = Group::create(Path::new(CGROUP_ROOT), &own, &self.paths.name, spec)
                .map_err(|e| err(format!("[host] isolation: {e}")))?;
            self.record.isolation = Some(g.clone());
            self.save_record();
            g.add(std::process::id())
                .map_err(|e| err(format!("[host] isolation: {e}")))?;
        }
        let h = self.topo.host.clone();
        // Names we are about to create must be free: never take over someone else's device.
        let mut names = vec![h.bridge.clone()];
        for l in &self.topo.links {
            if let Some(c) = host_link_cell(l.ends) {
                names.push(tap_name(&self.topo.cells[c].name));
            }
        }
        for n in &names {
            if netcfg::link_index(n)?.is_some() {
                return Err(err(format!(
                    "network device {n} already exists: another network, or a leftover (ivnet down)"
                )));
            }
        }
        if let Some(u) = &h.uplink {
            if netcfg::link_index(u)?.is_none() {
                return Err(err(format!("uplink {u} does not exist")));
            }
        }
        // The bridge.
        netcfg::create_bridge(&h.bridge)?;
        self.record.links.push(h.bridge.clone());
        self.save_record();
        netcfg::add_ipv4(&h.bridge, h.address, h.subnet.prefix)?;
        if let Some(p6) = h.subnet6 {
            netcfg::add_ipv6(&h.bridge, topology::in6(p6, 1), 64)?;
        }
        netcfg::set_up(&h.bridge)?;
        info!("bridge {} at {}/{}", h.bridge, h.address, h.subnet.prefix);
        // Forwarding and NAT.
        if self.needs_forwarding() {
            let before = netcfg::set_ip_forward(true)?;
            self.record.ip_forward_before = Some(before);
            self.save_record();
            if h.subnet6.is_some() {
                // Turning IPv6 forwarding on makes the kernel drop the routes an interface
                // learned from router advertisements, and take no more, unless its accept_ra
                // is 2. That is the machine's own configuration: refuse rather than break it.
                if !netcfg::ipv6_conf("all", "forwarding").is_ok_and(|v| v == "1") {
                    let mut at_risk = Vec::new();
                    for i in netcfg::ra_route_interfaces()? {
                        if netcfg::ipv6_conf(&i, "accept_ra")? != "2" {
                            at_risk.push(i);
                        }
                    }
                    if let Some(first) = at_risk.first() {
                        return Err(err(format!(
                            "IPv6 forwarding (NAT66 and forwards with subnet6) would make {} lose the IPv6 routes learned from router advertisements: set accept_ra to 2 there first (sysctl -w net.ipv6.conf.{first}.accept_ra=2), or drop subnet6, or the uplink and forwards",
                            at_risk.join(", ")
                        )));
                    }
                }
                let before = netcfg::set_ipv6_forwarding(true)?;
                self.record.ipv6_forwarding_before = Some(before);
                self.save_record();
            }
        }
        self.record.nft_table = Some(nft::table_name(&h.bridge));
        self.save_record();
        self.apply_nat()?;
        // Links: servers, then host peers; cell<->cell links get an observer.
        let mut observers = Vec::new();
        for (i, l) in self.topo.links.clone().iter().enumerate() {
            let server = Server::new(ServerConfig {
                ivshmem: if l.ivshmem == 2 {
                    Ivshmem::V2
                } else {
                    Ivshmem::V1
                },
                socket: self.paths.link(i),
                size: l.size,
                vectors: 2,
                socket_mode: 0o600,
            })
            .map_err(|e| err(format!("link {i}: {e}")))?;
            if host_link_cell(l.ends).is_none() {
                observers.push((i, server.observer()?));
                self.capture_observers
                    .insert(i, Arc::new(Mutex::new(server.observer()?)));
            }
            self.servers.push(server.spawn(self.stop.clone()));
            if let Some(c) = host_link_cell(l.ends) {
                let tap = tap_name(&self.topo.cells[c].name);
                let peer = self.start_peer(i, &tap)?;
                self.peers.insert(i, peer);
                self.record.links.push(tap);
                self.save_record();
            }
        }
        if !observers.is_empty() {
            self.start_observers(observers)?;
        }
        // DHCP, router advertisements.
        if h.dhcp.is_some() || h.subnet6.is_some() {
            self.start_dnsmasq()?;
        }
        // Cells.
        for i in 0..self.topo.cells.len() {
            self.start_cell(i)?;
        }
        Ok(())
    }

    pub(super) fn start_peer(&self, link: usize, tap_name: &str) -> io::Result<HostPeer> {
        let tap = Tap::open(tap_name).map_err(|e| err(format!("TAP {tap_name}: {e}")))?;
        netcfg::set_master(tap_name, &self.topo.host.bridge)?;
        netcfg::set_up(tap_name)?;
        let view = Arc::new(Mutex::new(PeerView::default()));
        let capture = Arc::new(CaptureSlot::default());
        let (v, stop, sock) = (view.clone(), self.stop.clone(), self.paths.link(link));
        let mut port = Tee::new(tap, capture.clone());
        let name = format!("peer-{tap_name}");
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            // What the peer writes is handled here: with no capabilities (see privs), or not
            // at all.
            if let Err(e) = ivnet_dataplane::privs::drop_all_in_thread() {
                error!("host peer on {}: {e}: not serving the link", port.name());
                return;
            }
            // The peer stays for the network's life: when its link breaks (the server is
            // being stopped) it tries again until told to stop.
            let mut backoff = Duration::from_secs(1);
            while !stop.load(Ordering::Relaxed) {
                let r = Client::connect(&sock, 2)
                    .and_then(Link::new)
                    .and_then(|mut link| {
                        v.lock().unwrap().connected = true;
                        let r = bridge::run_with(&mut link, &mut port, &stop, |l| {
                            let mut g = v.lock().unwrap();
                            g.stats = l.stats;
                            g.state = format!("{:?}", l.state());
                            g.carrier = l.carrier();
                        });
                        let mut g = v.lock().unwrap();
                        g.connected = false;
                        g.carrier = false;
                        r
                    });
                match r {
                    Err(e) if !stop.load(Ordering::Relaxed) => {
                        // Each attempt takes an id of the link's server: back off (1 s,
                        // doubling up to 30 s) while it keeps failing.
                        warn!("host peer on {}: {e}; retrying in {backoff:?}", port.name());
                        let end = Instant::now() + backoff;
                        while Instant::now() < end && !stop.load(Ordering::Relaxed) {
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                    _ => backoff = Duration::from_secs(1),
                }
            }
        })?;
        Ok(HostPeer {
            view,
            capture,
            thread,
        })
    }

    /// One thread samples every cell<->cell link's region every 20 ms.
    pub(super) fn start_observers(
        &mut self,
        observers: Vec<(usize, LinkObserver)>,
    ) -> io::Result<()> {
        let mut obs = Vec::new();
        for (i, o) in observers {
            let shared = Arc::new(Mutex::new(Counts::default()));
            self.observed.insert(i, shared.clone());
            obs.push((o, shared));
        }
        let stop = self.stop.clone();
        self.observer = Some(std::thread::Builder::new().name("observer".into()).spawn(
            move || {
                if let Err(e) = ivnet_dataplane::privs::drop_all_in_thread() {
                    error!("observer: {e}: not observing");
                    return;
                }
                while !stop.load(Ordering::Relaxed) {
                    for (o, shared) in obs.iter_mut() {
                        o.sample();
                        *shared.lock().unwrap() = o.counts;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            },
        )?);
        Ok(())
    }

    /// Restarts what died (cells, dnsmasq); returns what it restarted.
    pub fn reconcile(&mut self) -> Vec<String> {
        let mut done = Vec::new();
        if self.topo.host.dhcp.is_some() || self.topo.host.subnet6.is_some() {
            let dead = match self.dnsmasq.as_mut() {
                Some(c) => c.try_wait().ok().flatten().is_some(),
                None => true,
            };
            if dead {
                match self.start_dnsmasq() {
                    Ok(()) => done.push("dnsmasq".to_string()),
                    Err(e) => error!("restarting dnsmasq: {e}"),
                }
            }
        }
        for i in 0..self.cells.len() {
            let alive = self.cells[i]
                .child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
            if !alive {
                match self.start_cell(i) {
                    Ok(()) => {
                        self.cells[i].restarts += 1;
                        done.push(format!("cell {}", self.topo.cells[i].name));
                    }
                    Err(e) => error!("{e}"),
                }
            }
        }
        done
    }

    /// Stops everything and undoes every change (also after a failed `up`).
    pub fn teardown(&mut self) {
        for (i, c) in self.cells.iter_mut().enumerate() {
            if let Some(mut child) = c.child.take() {
                info!("stopping cell {}", self.topo.cells[i].name);
                kill(&mut child, Duration::from_secs(2));
            }
        }
        if let Some(mut d) = self.dnsmasq.take() {
            kill(&mut d, Duration::from_secs(2));
        }
        self.stop.store(true, Ordering::Relaxed);
        self.end_captures(true);
        for s in self.servers.drain(..) {
            let _ = s.join();
        }
        for (_, p) in std::mem::take(&mut self.peers) {
            let _ = p.thread.join();
        }
        if let Some(t) = self.observer.take() {
            let _ = t.join();
        }
        self.record.processes.clear();
        undo(&self.record, &self.paths.dir);
        // Undone: the record on disk must say so, or a later `down`/`up` would undo it again
        // (and could take a device of another network that reuses a name).
        self.record = Record {
            network: Some(self.paths.name.clone()),
            supervisor: Some(std::process::id()),
            ..Record::default()
        };
        self.save_record();
    }

    pub(super) fn poll(&mut self) {
        self.end_captures(false);
        for (i, c) in self.cells.iter_mut().enumerate() {
            if let Some(child) = c.child.as_mut() {
                if let Ok(Some(st)) = child.try_wait() {
                    warn!(
                        "cell {}: QEMU exited ({st}); `ivnet up` restarts it",
                        self.topo.cells[i].name
                    );
                    c.child = None;
                    c.exits += 1;
                }
            }
        }
        if let Some(d) = self.dnsmasq.as_mut() {
            if let Ok(Some(st)) = d.try_wait() {
                error!("dnsmasq exited ({st}); `ivnet up` restarts it");
                self.dnsmasq = None;
            }
        }
        let leases = read_leases(&self.paths.leases());
        if leases != self.leases {
            let old = std::mem::replace(&mut self.leases, leases);
            if let Err(e) = self.apply_nat() {
                // Keep the old view: the next round tries again.
                error!("nftables: {e}");
                self.leases = old;
            }
        }
    }
}
