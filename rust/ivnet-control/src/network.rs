//! A running network of cells: `ivnet up` / `down` / `status` / `inventory` and the supervisor
//! process behind them.
//!
//! `ivnet up <topology>` starts one supervisor per network (named after its bridge), detached,
//! with its state in `/run/ivnet/<bridge>/`. The supervisor
//!
//! 1. creates the bridge and the host's address (netlink), turns on IPv4 forwarding when there
//!    is NAT or a forward, and loads the network's nftables table (masquerade, DNAT);
//! 2. runs one ivshmem server per link and, for each cell<->host link, a host peer on a TAP
//!    enslaved to the bridge;
//! 3. starts dnsmasq for DHCP on the bridge;
//! 4. boots each cell in QEMU with its configuration (MACs, addresses) passed by fw_cfg;
//! 5. answers `status`, `reconcile` and `down` on a UNIX socket, and serves Prometheus
//!    metrics over HTTP.
//!
//! Every step that changes the machine is recorded (in memory and in `state.json`) so that a
//! failure half-way, `down`, or the next `up` after a crash undoes exactly what was created.
//! `up` on a running network is idempotent: it asks the supervisor to restart what died (a
//! cell's QEMU, dnsmasq) and changes nothing else.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{error, info, warn};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::isolation::{Group, CGROUP_ROOT};
use crate::names::check_ifname;
use crate::netcfg;
use crate::nft;
use crate::topology::{self, Addressing, End, Topology};
use ivnet_core::mac::Mac;
use ivnet_dataplane::bridge;
use ivnet_dataplane::client::Client;
use ivnet_dataplane::link::{Link, Stats};
use ivnet_dataplane::observe::{Counts, LinkObserver};
use ivnet_dataplane::server::{Ivshmem, Server, ServerConfig};
use ivnet_dataplane::tap::Tap;

/// Where networks keep their state by default (one directory per network).
pub const STATE_ROOT: &str = "/run/ivnet";
/// Default address of the Prometheus metrics endpoint.
pub const DEFAULT_METRICS: &str = "127.0.0.1:9477";
/// The MCUmgr (SMP over UDP) port of a cell.
pub const MCUMGR_PORT: u16 = 1337;

/// A file in a state root that `ivnet` created: the root is removed with the last network
/// only when it holds this mark (a state root the user made stays).
const ROOT_MARK: &str = ".ivnet-root";

/// What a supervisor created, written to `state.json` so that `down` can undo it even when
/// the supervisor is gone.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Record {
    /// The network (its bridge) this record belongs to. A state directory is only ever
    /// removed when it holds a record naming its own network.
    pub network: Option<String>,
    /// The supervisor's pid.
    pub supervisor: Option<u32>,
    /// Links (bridge and TAPs) created.
    pub links: Vec<String>,
    /// nftables table created.
    pub nft_table: Option<String>,
    /// `ip_forward` before we turned it on.
    pub ip_forward_before: Option<bool>,
    /// `net.ipv6.conf.all.forwarding` before we turned it on.
    pub ipv6_forwarding_before: Option<bool>,
    /// Child processes: (what, pid).
    pub processes: Vec<(String, u32)>,
    /// The control group made for `[host] isolation` (removed last).
    #[serde(default)]
    pub isolation: Option<Group>,
}

fn err(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

/// The files of one network's state directory, `<root>/<name>`.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The state root (one directory per network).
    pub root: PathBuf,
    /// The network's name (its bridge), checked by [`check_ifname`].
    pub name: String,
    /// The directory: `root/name`.
    pub dir: PathBuf,
}

impl Paths {
    /// The state directory of network `name` under `root`. `name` must pass
    /// [`check_ifname`], so the directory is always directly under the root.
    pub fn new(root: &Path, name: &str) -> io::Result<Paths> {
        check_ifname("network", name).map_err(err)?;
        if root.as_os_str().is_empty() {
            return Err(err("the state root is an empty path"));
        }
        // One spelling for one directory (`..`, `//`, symlinked parents): processes are
        // recognised by the paths in their command lines.
        let root = match root.canonicalize() {
            Ok(r) => r,
            Err(_) if root.is_absolute() => root.to_path_buf(),
            Err(_) => std::env::current_dir()?.join(root),
        };
        Ok(Paths {
            dir: root.join(name),
            root,
            name: name.to_string(),
        })
    }

    /// The paths of the state directory `dir` (its parent is the root, its name the network).
    pub fn of_dir(dir: &Path) -> io::Result<Paths> {
        let name = dir.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
            err(format!(
                "{}: not a network's state directory",
                dir.display()
            ))
        })?;
        Paths::new(dir.parent().unwrap_or(Path::new("")), name)
    }

    fn f(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
    /// The copy of the topology the network runs.
    pub fn topology(&self) -> PathBuf {
        self.f("topology.toml")
    }
    /// The directory the topology's relative image paths are taken from.
    pub fn base(&self) -> PathBuf {
        self.f("base")
    }
    /// The supervisor's control socket.
    pub fn control(&self) -> PathBuf {
        self.f("control.sock")
    }
    /// What was created.
    pub fn record(&self) -> PathBuf {
        self.f("state.json")
    }
    /// The supervisor's log.
    pub fn log(&self) -> PathBuf {
        self.f("supervisor.log")
    }
    /// The ivshmem server socket of link `i`.
    pub fn link(&self, i: usize) -> PathBuf {
        self.f(&format!("link{i}.sock"))
    }
    /// A cell's serial console (a UNIX socket; `socat - UNIX-CONNECT:<path>`).
    pub fn console(&self, cell: &str) -> PathBuf {
        self.f(&format!("{cell}.console.sock"))
    }
    /// A cell's console output.
    pub fn console_log(&self, cell: &str) -> PathBuf {
        self.f(&format!("{cell}.console.log"))
    }
    fn qemu_log(&self, cell: &str) -> PathBuf {
        self.f(&format!("{cell}.qemu.log"))
    }
    fn cell_config(&self, cell: &str) -> PathBuf {
        self.f(&format!("{cell}.cfg"))
    }
    /// The copy of a cell's image that its QEMU boots (see `Supervisor::copy_images`).
    fn image(&self, cell: &str) -> PathBuf {
        self.f(&format!("{cell}.elf"))
    }
    /// dnsmasq's lease file.
    pub fn leases(&self) -> PathBuf {
        self.f("dnsmasq.leases")
    }
    fn dnsmasq_conf(&self) -> PathBuf {
        self.f("dnsmasq.conf")
    }
    fn dnsmasq_log(&self) -> PathBuf {
        self.f("dnsmasq.log")
    }
}

/// The TAP of the host end of a cell's link.
pub fn tap_name(cell: &str) -> String {
    format!("ivt-{cell}")
}

/// Leases from dnsmasq's lease file: MAC -> address.
pub fn read_leases(path: &Path) -> BTreeMap<Mac, Ipv4Addr> {
    let mut out = BTreeMap::new();
    let Ok(text) = fs::read_to_string(path) else {
        return out;
    };
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 3 {
            continue;
        }
        if let (Ok(m), Ok(ip)) = (f[1].parse::<Mac>(), f[2].parse::<Ipv4Addr>()) {
            out.insert(m, ip);
        }
    }
    out
}

/// What a host peer thread publishes.
#[derive(Debug, Default, Clone)]
struct PeerView {
    stats: Stats,
    state: String,
    carrier: bool,
    connected: bool,
}

struct HostPeer {
    view: Arc<Mutex<PeerView>>,
    thread: JoinHandle<()>,
}

struct CellProc {
    child: Option<Child>,
    restarts: u64,
    exits: u64,
}

/// The QEMU with the project's ivshmem 2.0 device: $IVNET_QEMU_V2, else the newest build of
/// scripts/qemu-build.sh in the invoking user's cache (~/.cache/ivnet/qemu, also when run with
/// sudo), else none.
fn qemu_v2() -> Option<String> {
    if let Ok(q) = std::env::var("IVNET_QEMU_V2") {
        return Some(q);
    }
    let mut homes: Vec<PathBuf> = std::env::var_os("HOME")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    if let Ok(u) = std::env::var("SUDO_USER") {
        if let Ok(Some(user)) = nix::unistd::User::from_name(&u) {
            homes.push(user.dir);
        }
    }
    for h in homes {
        let cache = h.join(".cache/ivnet/qemu");
        let Ok(rd) = fs::read_dir(&cache) else {
            continue;
        };
        let mut builds: Vec<PathBuf> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("qemu-system-aarch64"))
            .filter(|p| {
                p.parent()
                    .and_then(|d| d.file_name())
                    .is_some_and(|n| n.to_string_lossy().starts_with("build-"))
                    && p.is_file()
            })
            .collect();
        builds.sort();
        if let Some(b) = builds.pop() {
            return Some(b.to_string_lossy().into_owned());
        }
    }
    None
}

/// The supervisor of one network.
pub struct Supervisor {
    topo: Topology,
    paths: Paths,
    metrics_addr: String,
    qemu: String,
    /// The QEMU with the project's ivshmem 2.0 device, for cells on `ivshmem = 2` links.
    qemu_v2: Option<String>,
    /// The user the cells' QEMUs drop to (when the supervisor runs as root).
    qemu_user: Option<String>,
    stop: Arc<AtomicBool>,
    record: Record,
    servers: Vec<JoinHandle<io::Result<()>>>,
    peers: BTreeMap<usize, HostPeer>,
    dnsmasq: Option<Child>,
    cells: Vec<CellProc>,
    leases: BTreeMap<Mac, Ipv4Addr>,
    applied_forwards: Option<Vec<nft::Forward>>,
    started: Instant,
    /// What the host sees of each cell<->cell link (by link index), sampled every 20 ms.
    observed: BTreeMap<usize, Arc<Mutex<Counts>>>,
    observer: Option<JoinHandle<()>>,
}

fn kill(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let end = Instant::now() + grace;
    while Instant::now() < end {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
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
        }
    }

    fn save_record(&self) {
        // Written aside and renamed: `down` may read it at any moment.
        let text = serde_json::to_string_pretty(&self.record).expect("serialisable");
        let tmp = self.paths.record().with_extension("json.new");
        if let Err(e) = fs::write(&tmp, text).and_then(|_| fs::rename(&tmp, self.paths.record())) {
            warn!("cannot write {}: {e}", self.paths.record().display());
        }
    }

    fn note_process(&mut self, what: String, pid: u32) {
        self.record.processes.retain(|(w, _)| *w != what);
        self.record.processes.push((what, pid));
        self.save_record();
    }

    fn needs_forwarding(&self) -> bool {
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

    /// Copies every cell's image into the state directory while the supervisor still has all
    /// of root's rights: a cell restarted later (by a supervisor that no longer may read what
    /// root can read only by overriding permissions, say an image under a user's private home)
    /// boots the same image it was started with.
    fn copy_images(&self) -> io::Result<()> {
        for c in &self.topo.cells {
            fs::copy(&c.image, self.paths.image(&c.name))
                .map_err(|e| err(format!("cell {}: image {}: {e}", c.name, c.image.display())))?;
        }
        Ok(())
    }

    fn try_up(&mut self) -> io::Result<()> {
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

    fn start_peer(&self, link: usize, tap_name: &str) -> io::Result<HostPeer> {
        let tap = Tap::open(tap_name).map_err(|e| err(format!("TAP {tap_name}: {e}")))?;
        netcfg::set_master(tap_name, &self.topo.host.bridge)?;
        netcfg::set_up(tap_name)?;
        let view = Arc::new(Mutex::new(PeerView::default()));
        let (v, stop, sock) = (view.clone(), self.stop.clone(), self.paths.link(link));
        let name = format!("peer-{tap_name}");
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            // What the peer writes is handled here: with no capabilities (see privs), or not
            // at all.
            if let Err(e) = ivnet_dataplane::privs::drop_all_in_thread() {
                error!("host peer on {}: {e}: not serving the link", tap.name());
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
                        let r = bridge::run_with(&mut link, &tap, &stop, |l| {
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
                        warn!("host peer on {}: {e}; retrying in {backoff:?}", tap.name());
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
        Ok(HostPeer { view, thread })
    }

    /// One thread samples every cell<->cell link's region every 20 ms.
    fn start_observers(&mut self, observers: Vec<(usize, LinkObserver)>) -> io::Result<()> {
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

    fn start_dnsmasq(&mut self) -> io::Result<()> {
        let h = &self.topo.host;
        let mut conf = format!(
            "# Written by ivnet up for network {b}.\n\
             interface={b}\nbind-interfaces\nexcept-interface=lo\nport=0\nno-resolv\nno-hosts\n\
             dhcp-leasefile={l}\ndhcp-authoritative\nlog-dhcp\nlog-facility={log}\n",
            b = h.bridge,
            l = self.paths.leases().display(),
            log = self.paths.dnsmasq_log().display(),
        );
        let mut serves = Vec::new();
        if let Some((lo, hi)) = h.dhcp {
            let mask = Ipv4Addr::from(ivnet_core::cell::netmask(h.subnet.prefix));
            conf += &format!(
                "dhcp-range={lo},{hi},{mask},1h\ndhcp-option=option:router,{r}\n",
                r = h.address
            );
            serves.push(format!("DHCP {lo} - {hi}"));
        }
        if let Some(p6) = h.subnet6 {
            // Router advertisements of the bridge's /64 (SLAAC, the host as default router);
            // no DHCPv6.
            conf += &format!("enable-ra\ndhcp-range={p6},ra-only,64,1h\n");
            serves.push(format!("router advertisements of {p6}/64"));
        }
        for c in &self.topo.cells {
            if c.address == Addressing::Dhcp {
                conf += &format!("dhcp-host={},{}\n", c.mac, c.name);
            }
        }
        fs::write(self.paths.dnsmasq_conf(), conf)?;
        let child = Command::new("dnsmasq")
            .arg("--keep-in-foreground")
            .arg(format!(
                "--conf-file={}",
                self.paths.dnsmasq_conf().display()
            ))
            .arg("--pid-file")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(
                self.paths.dnsmasq_log().with_extension("err"),
            )?)
            .process_group(0)
            .spawn()
            .map_err(|e| err(format!("dnsmasq: {e} (is dnsmasq installed?)")))?;
        let pid = child.id();
        self.dnsmasq = Some(child);
        self.note_process("dnsmasq".into(), pid);
        std::thread::sleep(Duration::from_millis(300));
        if let Some(st) = self
            .dnsmasq
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            let msg = fs::read_to_string(self.paths.dnsmasq_log().with_extension("err"))
                .unwrap_or_default();
            return Err(err(format!("dnsmasq exited ({st}): {}", msg.trim())));
        }
        info!("dnsmasq (pid {pid}) serves {}", serves.join(", "));
        Ok(())
    }

    fn qemu_command(&self, i: usize) -> io::Result<Command> {
        let c = &self.topo.cells[i];
        fs::write(
            self.paths.cell_config(&c.name),
            format!("name={}\n{}", c.name, self.topo.cell_config(i)),
        )?;
        let con = self.paths.console(&c.name);
        let _ = fs::remove_file(&con);
        let ifaces = self.topo.cell_ifaces(i);
        let v2 = ifaces
            .first()
            .is_some_and(|f| self.topo.links[f.link].ivshmem == 2);
        let mut cmd = Command::new(self.qemu_for(v2));
        cmd.args([
            "-cpu",
            "cortex-a53",
            "-nographic",
            "-machine",
            "virt,gic-version=3",
        ])
        .args(["-net", "none", "-monitor", "none", "-name", &c.name])
        .arg("-chardev")
        .arg(format!(
            "socket,id=con,path={},server=on,wait=off,logfile={},logappend=on",
            con.display(),
            self.paths.console_log(&c.name).display()
        ))
        .args(["-serial", "chardev:con"]);
        for (k, f) in ifaces.iter().enumerate() {
            cmd.arg("-chardev")
                .arg(format!(
                    "socket,path={},id=ivs{k}",
                    self.paths.link(f.link).display()
                ))
                .arg("-device")
                .arg(if self.topo.links[f.link].ivshmem == 2 {
                    format!("ivshmem2,chardev=ivs{k}")
                } else {
                    format!("ivshmem-doorbell,vectors=2,chardev=ivs{k}")
                });
        }
        cmd.arg("-fw_cfg").arg(format!(
            "name={},file={}",
            ivnet_core::cell::FW_CFG_NAME,
            self.paths.cell_config(&c.name).display()
        ));
        cmd.arg("-kernel").arg(self.paths.image(&c.name));
        if let Some(user) = &self.qemu_user {
            cmd.args(ivnet_dataplane::privs::qemu_args(user));
        }
        // One file in append mode for both streams: a restart keeps why the cell died.
        let log = fs::File::options()
            .create(true)
            .append(true)
            .open(self.paths.qemu_log(&c.name))?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        Ok(cmd)
    }

    /// The QEMU binary for a cell (on ivshmem 2.0 links or not).
    fn qemu_for(&self, v2: bool) -> &str {
        match (&self.qemu_v2, v2) {
            (Some(q), true) => q,
            _ => &self.qemu,
        }
    }

    fn start_cell(&mut self, i: usize) -> io::Result<()> {
        let name = self.topo.cells[i].name.clone();
        let mut cmd = self.qemu_command(i)?;
        let mut child = cmd.spawn().map_err(|e| {
            let prog = cmd.get_program().to_string_lossy().into_owned();
            err(format!("cell {name}: {prog}: {e}"))
        })?;
        let pid = child.id();
        // Recorded at once, so that no path (a kill of the supervisor included) leaks it.
        self.note_process(format!("cell {name}"), pid);
        std::thread::sleep(Duration::from_millis(300));
        if let Ok(Some(st)) = child.try_wait() {
            let log = fs::read_to_string(self.paths.qemu_log(&name)).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            return Err(err(format!(
                "cell {name}: QEMU exited at once ({st}): {}",
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            )));
        }
        info!("cell {name}: QEMU pid {pid}");
        self.cells[i].child = Some(child);
        Ok(())
    }

    /// The forwards whose cell has an address now (DHCP cells once they have a lease).
    fn resolved_forwards(&self) -> Vec<nft::Forward> {
        self.topo
            .host
            .forwards
            .iter()
            .filter_map(|f| {
                let addr = self.cell_address(f.cell)?;
                Some(nft::Forward {
                    port: f.port,
                    proto: f.proto.parse().ok()?,
                    to_addr: addr,
                    to_addr6: self.topo.cell_address6(f.cell),
                    to_port: f.to,
                })
            })
            .collect()
    }

    /// The address of a cell on the host bridge (static, or its DHCP lease).
    fn cell_address(&self, i: usize) -> Option<Ipv4Addr> {
        let c = &self.topo.cells[i];
        match c.address {
            Addressing::Static(a) => Some(a),
            Addressing::Dhcp => self.leases.get(&c.mac).copied(),
            Addressing::None => None,
        }
    }

    fn apply_nat(&mut self) -> io::Result<()> {
        let forwards = self.resolved_forwards();
        if self.applied_forwards.as_ref() == Some(&forwards) {
            return Ok(());
        }
        let h = &self.topo.host;
        nft::apply(&nft::NatConfig {
            table: nft::table_name(&h.bridge),
            bridge: h.bridge.clone(),
            subnet: (h.subnet.network, h.subnet.prefix),
            subnet6: h.subnet6,
            uplink: h.uplink.clone(),
            forwards: forwards.clone(),
        })?;
        info!("nftables: {} forward(s) in place", forwards.len());
        self.applied_forwards = Some(forwards);
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

    fn poll(&mut self) {
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

    /// The network as JSON: host, cells, links with their state and counters.
    pub fn status(&mut self) -> Value {
        let h = &self.topo.host;
        let name_of = |e: End| match e {
            End::Host => "host".to_string(),
            End::Cell(i) => self.topo.cells[i].name.clone(),
        };
        let mut cells = Vec::new();
        for (i, c) in self.topo.cells.iter().enumerate() {
            let proc_ = &self.cells[i];
            let pid = proc_.child.as_ref().map(|c| c.id());
            let ifaces: Vec<Value> = self
                .topo
                .cell_ifaces(i)
                .iter()
                .enumerate()
                .map(|(k, f)| {
                    let addr = match f.address {
                        Some((a, p)) => Some(format!("{a}/{p}")),
                        None => self
                            .leases
                            .get(&f.mac)
                            .map(|a| format!("{a}/{}", h.subnet.prefix)),
                    };
                    json!({
                        "name": format!("ivnet{k}"),
                        "link": f.link,
                        "mac": f.mac.to_string(),
                        "addressing": if f.address.is_some() { "static" } else { "dhcp" },
                        "address": addr,
                        "address6": f.address6.map(|a| format!("{a}/64")),
                    })
                })
                .collect();
            cells.push(json!({
                "name": c.name,
                "running": pid.is_some(),
                "pid": pid,
                "address": self.cell_address(i).map(|a| a.to_string()),
                "address6": self.topo.cell_address6(i).map(|a| a.to_string()),
                "mac": c.mac.to_string(),
                "image": c.image.display().to_string(),
                "services": c.services,
                "mcumgr": format!("udp/{MCUMGR_PORT}"),
                "console": self.paths.console(&c.name).display().to_string(),
                "console_log": self.paths.console_log(&c.name).display().to_string(),
                "restarts": proc_.restarts,
                "exits": proc_.exits,
                "interfaces": ifaces,
            }));
        }
        let mut links = Vec::new();
        for (i, l) in self.topo.links.iter().enumerate() {
            let mut v = json!({
                "index": i,
                "name": format!("{}-{}", name_of(l.ends[0]), name_of(l.ends[1])),
                "ends": [name_of(l.ends[0]), name_of(l.ends[1])],
                "size": l.size,
                "socket": self.paths.link(i).display().to_string(),
                "subnet": l.subnet.map(|s| format!("{}/{}", s.network, s.prefix)),
                "subnet6": l.subnet6.map(|p| format!("{p}/64")),
            });
            if let (Some(p), Some(c)) = (self.peers.get(&i), host_link_cell(l.ends)) {
                let g = p.view.lock().unwrap().clone();
                let s = g.stats;
                v["tap"] = json!(tap_name(&self.topo.cells[c].name));
                v["state"] = json!(g.state);
                v["up"] = json!(g.carrier);
                v["counters"] = json!({
                    "tx_frames": s.tx_frames, "rx_frames": s.rx_frames,
                    "tx_bytes": s.tx_bytes, "rx_bytes": s.rx_bytes,
                    "rx_dropped": s.rx_dropped, "rx_oversize": s.rx_oversize,
                    "runts_dropped": s.runts_dropped,
                    "ring_full": s.ring_full, "doorbells": s.doorbells,
                    "state_changes": s.state_changes, "carrier_ups": s.carrier_ups,
                    "protocol_resets": s.protocol_resets,
                });
                let cell = &self.topo.cells[c].name;
                v["flows"] = json!([
                    {"from": "host", "to": cell, "frames": s.tx_frames, "bytes": s.tx_bytes},
                    {"from": cell, "to": "host", "frames": s.rx_frames, "bytes": s.rx_bytes},
                ]);
            } else if let Some(o) = self.observed.get(&i) {
                // A cell<->cell link: the host is not on its data path, but reads what each
                // end publishes (see observe.rs); the sender is known by its source MAC.
                let c = *o.lock().unwrap();
                let who = |slot: usize| -> String {
                    c.src_macs[slot]
                        .and_then(|m| {
                            l.ends.iter().find_map(|e| match e {
                                End::Cell(ci) => self
                                    .topo
                                    .cell_ifaces(*ci)
                                    .iter()
                                    .any(|f| f.link == i && f.mac.octets() == m)
                                    .then(|| self.topo.cells[*ci].name.clone()),
                                End::Host => None,
                            })
                        })
                        .unwrap_or_else(|| format!("slot{slot}"))
                };
                let flows: Vec<Value> = (0..2)
                    .map(|slot| {
                        let from = who(slot);
                        let ends = [name_of(l.ends[0]), name_of(l.ends[1])];
                        // Named only when the sender was recognised; else by slot.
                        let to = if ends.contains(&from) {
                            ends.into_iter().find(|n| *n != from).unwrap_or_default()
                        } else {
                            format!("slot{}", 1 - slot)
                        };
                        json!({"from": from, "to": to, "frames": c.sent[slot].frames, "bytes": c.sent[slot].bytes})
                    })
                    .collect();
                let up = c.states == [3, 3];
                v["state"] = json!(if up { "Run" } else { "not running" });
                v["up"] = json!(up);
                v["flows"] = json!(flows);
                v["observed"] = json!({"state_changes": c.state_changes, "states": c.states});
            } else {
                // A cell<->cell link: the host is not in its data path; both cells running
                // is what the host can tell (their counters: MCUmgr stats / `net stats`).
                let up = l.ends.iter().all(|e| match e {
                    End::Cell(c) => self.cells[*c].child.is_some(),
                    End::Host => false,
                });
                v["state"] = json!(if up {
                    "cells running"
                } else {
                    "a cell is down"
                });
                v["up"] = json!(up);
            }
            links.push(v);
        }
        json!({
            "network": h.bridge,
            "state_dir": self.paths.dir.display().to_string(),
            "supervisor_pid": std::process::id(),
            "uptime_s": self.started.elapsed().as_secs(),
            "metrics": format!("http://{}/metrics", self.metrics_addr),
            "host": {
                "bridge": h.bridge,
                "address": h.address.to_string(),
                "subnet": format!("{}/{}", h.subnet.network, h.subnet.prefix),
                "address6": h.subnet6.map(|p| topology::in6(p, 1).to_string()),
                "subnet6": h.subnet6.map(|p| format!("{p}/64")),
                "dhcp": h.dhcp.map(|(a, b)| [a.to_string(), b.to_string()]),
                "uplink": h.uplink,
                "dnsmasq_pid": self.dnsmasq.as_ref().map(|c| c.id()),
                "forwards": h.forwards.iter().map(|f| json!({
                    "port": f.port, "proto": f.proto, "cell": self.topo.cells[f.cell].name,
                    "to": f.to,
                    "active": self.applied_forwards.as_ref().is_some_and(|a| a.iter().any(|x| x.port == f.port && x.proto.as_str() == f.proto)),
                })).collect::<Vec<_>>(),
                "isolation": self.record.isolation.as_ref().map(|g| json!({
                    "cgroup_version": g.version,
                    "group": g.name,
                    "directories": g.made.iter().map(|m| m.dir.display().to_string()).collect::<Vec<_>>(),
                    "settings": g.settings.iter().map(|(f, v)| format!("{f}={v}")).collect::<Vec<_>>(),
                    "pids": g.pids(),
                })),
            },
            "cells": cells,
            "links": links,
        })
    }

    /// Runs until `down` (or SIGTERM via `term`): serves the control socket, and metrics from
    /// a snapshot of the status on a thread of their own (a slow HTTP client cannot stall
    /// the supervisor).
    pub fn serve(&mut self, control: UnixListener, metrics: TcpListener, term: &AtomicBool) {
        control.set_nonblocking(true).expect("nonblocking");
        let snapshot = Arc::new(Mutex::new(self.status()));
        let (snap, stop) = (snapshot.clone(), self.stop.clone());
        let metrics_thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || serve_metrics(metrics, snap, &stop));
        // Built, and every thread started (each dropped all of its capabilities, which needs
        // CAP_SETPCAP): from here on the main thread keeps only what running and tearing down
        // the network needs.
        if nix::unistd::geteuid().is_root() {
            match ivnet_dataplane::privs::keep_only(
                &ivnet_dataplane::privs::SUPERVISOR_CAPS,
                &ivnet_dataplane::privs::SUPERVISOR_EFFECTIVE,
            ) {
                Ok(()) => info!(
                    "privileges dropped: capabilities {:#x} permitted, {:#x} effective, no new \
                     privileges; cells run as {}",
                    ivnet_dataplane::privs::mask(&ivnet_dataplane::privs::SUPERVISOR_CAPS),
                    ivnet_dataplane::privs::mask(&ivnet_dataplane::privs::SUPERVISOR_EFFECTIVE),
                    self.qemu_user.as_deref().unwrap_or("?")
                ),
                Err(e) => error!("could not drop privileges ({e}): the supervisor keeps full root"),
            }
        }
        let mut last_snapshot = Instant::now();
        loop {
            if term.load(Ordering::Relaxed) {
                info!("terminated: tearing down");
                break;
            }
            self.poll();
            if let Ok((s, _)) = control.accept() {
                if self.handle_control(s) {
                    break;
                }
            }
            if last_snapshot.elapsed() >= Duration::from_millis(200) {
                *snapshot.lock().unwrap() = self.status();
                last_snapshot = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.teardown();
        let _ = fs::remove_file(self.paths.control());
        if let Ok(t) = metrics_thread {
            let _ = t.join();
        }
    }

    /// One control request; true when it asked to go down. The socket is root's (the state
    /// directory is 0700); a client that sends nothing is dropped after 500 ms.
    fn handle_control(&mut self, s: UnixStream) -> bool {
        let _ = s.set_nonblocking(false);
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut line = String::new();
        let mut r = BufReader::new((&s).take(4096));
        if r.read_line(&mut line).is_err() {
            return false;
        }
        let mut w = &s;
        match line.trim() {
            "status" => {
                let _ = writeln!(w, "{}", self.status());
                false
            }
            "reconcile" => {
                let done = self.reconcile();
                let _ = writeln!(w, "{}", json!({ "restarted": done }));
                false
            }
            "down" => {
                info!("down requested");
                self.teardown();
                let _ = fs::remove_file(self.paths.control());
                let _ = writeln!(w, "{}", json!({ "down": true }));
                true
            }
            other => {
                let _ = writeln!(
                    w,
                    "{}",
                    json!({ "error": format!("unknown request {other:?}") })
                );
                false
            }
        }
    }
}

/// Clients of the metrics endpoint served at once; more are turned away.
const METRICS_CLIENTS: usize = 8;

/// One of the [`METRICS_CLIENTS`] places, given back when dropped.
struct Slot(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Answers metrics requests from `snapshot` until `stop`, each client on a thread of its own
/// (at most [`METRICS_CLIENTS`] at once), so that a client that is slow to send its request
/// cannot keep the others waiting.
fn serve_metrics(listener: TcpListener, snapshot: Arc<Mutex<Value>>, stop: &AtomicBool) {
    // HTTP from anyone who can reach the address: handled with no capabilities (see privs),
    // or not at all.
    if let Err(e) = ivnet_dataplane::privs::drop_all_in_thread() {
        error!("metrics: {e}: not serving metrics");
        return;
    }
    listener.set_nonblocking(true).expect("nonblocking");
    let busy = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((s, _)) => {
                if busy.fetch_add(1, Ordering::AcqRel) >= METRICS_CLIENTS {
                    busy.fetch_sub(1, Ordering::AcqRel);
                    continue; // dropped: closed at once
                }
                let slot = Slot(busy.clone());
                let snap = snapshot.clone();
                // The slot is given back when the thread ends, however it ends (or when it
                // could not be started).
                let _ = std::thread::Builder::new()
                    .name("metrics-client".into())
                    .spawn(move || {
                        let _slot = slot;
                        let text = crate::metrics::render(&snap.lock().unwrap());
                        let _ = crate::metrics::respond(s, &text);
                    });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn host_link_cell(ends: [End; 2]) -> Option<usize> {
    match ends {
        [End::Cell(c), End::Host] | [End::Host, End::Cell(c)] => Some(c),
        _ => None,
    }
}

/// Whether process `pid` is still one we started: its command line names the state directory
/// `dir` or a file in it, so a recycled pid is never signalled.
fn pid_is_ours(pid: u32, dir: &Path) -> bool {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| names_dir(&String::from_utf8_lossy(&c), dir))
        .unwrap_or(false)
}

/// Whether a command line (NUL-separated arguments) names `dir` or a file in it: an argument
/// that is the directory, starts with `dir/`, or holds `=dir/` (QEMU's `path=`, dnsmasq's
/// `--conf-file=`). A path that merely ends like `dir` (another state root) does not count.
fn names_dir(cmdline: &str, dir: &Path) -> bool {
    let dir = dir.display().to_string();
    let in_dir = format!("{dir}/");
    let after_eq = format!("={in_dir}");
    cmdline
        .split('\0')
        .any(|a| a == dir || a.starts_with(&in_dir) || a.contains(&after_eq))
}

/// Undoes what a record says was created: kills its processes (those whose command line
/// still names `dir`), removes its links and its nftables tables, restores `ip_forward` and IPv6
/// forwarding. Each
/// step is tried even when another fails.
pub fn undo(r: &Record, dir: &Path) {
    for (what, pid) in &r.processes {
        if pid_is_ours(*pid, dir) {
            info!("stopping {what} (pid {pid})");
            let p = nix::unistd::Pid::from_raw(*pid as i32);
            let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGTERM);
            for _ in 0..100 {
                if !pid_is_ours(*pid, dir) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if pid_is_ours(*pid, dir) {
                let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
    if let Some(t) = &r.nft_table {
        if let Err(e) = nft::delete(t) {
            error!("nftables table {t}: {e}");
        }
    }
    for l in r.links.iter().rev() {
        if let Err(e) = netcfg::delete_link(l) {
            error!("{l}: {e}");
        }
    }
    if let Some(before) = r.ipv6_forwarding_before {
        if let Err(e) = netcfg::set_ipv6_forwarding(before) {
            error!("ipv6 forwarding: {e}");
        }
    }
    if let Some(before) = r.ip_forward_before {
        if let Err(e) = netcfg::set_ip_forward(before) {
            error!("ip_forward: {e}");
        }
    }
    if let Some(g) = &r.isolation {
        g.remove();
    }
}

/// Sends one request to a network's supervisor and returns its JSON answer.
pub fn request(paths: &Paths, what: &str, timeout: Duration) -> io::Result<Value> {
    let mut s = UnixStream::connect(paths.control())?;
    s.set_read_timeout(Some(timeout))?;
    writeln!(s, "{what}")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    serde_json::from_str(&text).map_err(|e| err(format!("bad answer from the supervisor: {e}")))
}

/// Whether a live supervisor answers on the control socket.
pub fn running(paths: &Paths) -> bool {
    request(paths, "status", Duration::from_secs(5)).is_ok()
}

fn read_record(paths: &Paths) -> io::Result<Option<Record>> {
    match fs::read_to_string(paths.record()) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| err(format!("{}: {e}", paths.record().display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The pid of the network's supervisor, if that process still runs.
fn live_supervisor(paths: &Paths) -> Option<u32> {
    let pid = read_record(paths).ok().flatten()?.supervisor?;
    pid_is_ours(pid, &paths.dir).then_some(pid)
}

/// Holds the state root locked: one `up` or `down` at a time under it.
pub struct NetworkLock(#[allow(dead_code)] fs::File);

/// Locks the state root of `paths` (waits for another `up`/`down`). The lock is on the
/// directory itself. With `create`, a root that does not exist yet is created with a mark
/// saying so ([`ROOT_MARK`]), so that the last `down` removes it again; without, a missing root
/// means there is nothing to lock (`Ok(None)`). The root must be the user's own and writable by
/// nobody else: records in it are trusted to say what to remove.
pub fn lock(paths: &Paths, create: bool) -> io::Result<Option<NetworkLock>> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    let root = &paths.root;
    loop {
        match fs::symlink_metadata(root) {
            Ok(m) if m.is_dir() => check_private(root, &m, "state root")?,
            Ok(_) => {
                return Err(err(format!(
                    "state root {} exists and is not a directory",
                    root.display()
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && !create => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(root)
                    .map_err(|e| err(format!("state root {}: {e}", root.display())))?;
                fs::write(
                    root.join(ROOT_MARK),
                    "made by ivnet; removed with its last network\n",
                )?;
            }
            Err(e) => return Err(err(format!("state root {}: {e}", root.display()))),
        }
        let f = fs::File::open(root)?;
        // SAFETY: flock on a file descriptor we own; released when the file is closed.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // The last `down` may have removed the root while we waited for it: then lock the
        // one that is there now.
        let held = f.metadata()?;
        match fs::symlink_metadata(root) {
            Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => {
                return Ok(Some(NetworkLock(f)))
            }
            _ => continue,
        }
    }
}

/// Refuses a directory or file of the state that is not the user's own, or that others may
/// write (they could forge a record that tells `down` what to remove).
fn check_private(path: &Path, m: &fs::Metadata, what: &str) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    if m.uid() != me {
        return Err(err(format!(
            "{what} {} belongs to uid {}, not to this user (uid {me}): choose a directory of \
             your own (--state-root)",
            path.display(),
            m.uid()
        )));
    }
    if m.mode() & 0o022 != 0 {
        return Err(err(format!(
            "{what} {} is writable by others (mode {:o}): choose a private directory \
             (--state-root)",
            path.display(),
            m.mode() & 0o7777
        )));
    }
    Ok(())
}

/// Removes the state root when `ivnet` made it and no network is left in it (its only entry
/// is the mark). Called with the root locked.
fn remove_root_if_unused(root: &Path) {
    let Ok(rd) = fs::read_dir(root) else { return };
    let names: Vec<_> = rd.flatten().map(|e| e.file_name()).collect();
    if names.len() == 1 && names[0] == ROOT_MARK {
        let _ = fs::remove_file(root.join(ROOT_MARK));
        let _ = fs::remove_dir(root);
    }
}

/// Whether the network's state directory exists and is its own: a real directory (not a
/// symlink) directly under the state root, holding a record that names this network.
/// `Ok(false)`: nothing is there. An error: something else is there, which ivnet leaves alone.
pub fn owned(paths: &Paths) -> io::Result<bool> {
    let meta = match fs::symlink_metadata(&paths.dir) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(err(format!("{}: {e}", paths.dir.display()))),
    };
    let not_ours = |why: String| {
        err(format!(
            "{} {why}: it is not the state directory of network {}, so ivnet leaves it alone",
            paths.dir.display(),
            paths.name
        ))
    };
    if meta.file_type().is_symlink() {
        return Err(not_ours("is a symbolic link".into()));
    }
    if !meta.is_dir() {
        return Err(not_ours("is not a directory".into()));
    }
    check_private(&paths.dir, &meta, "state directory")?;
    match fs::symlink_metadata(paths.record()) {
        Ok(m) if m.is_file() => check_private(&paths.record(), &m, "record")?,
        Ok(_) => {
            return Err(not_ours(
                "has a state.json that is not a regular file".into(),
            ))
        }
        Err(_) => return Err(not_ours("holds no ivnet record (state.json)".into())),
    }
    match read_record(paths) {
        Ok(Some(r)) if r.network.as_deref() == Some(paths.name.as_str()) => Ok(true),
        Ok(Some(r)) => Err(not_ours(format!(
            "holds the record of {}",
            r.network
                .map(|n| format!("network {n:?}"))
                .unwrap_or_else(|| "no named network".into())
        ))),
        Ok(None) => Err(not_ours("holds no ivnet record (state.json)".into())),
        Err(e) => Err(not_ours(format!("has a record ivnet cannot read ({e})"))),
    }
}

/// `ivnet down`: stops the network and removes everything it created, also when its
/// supervisor died. Ok when the network is not up; an error, touching nothing, when its
/// state directory is not its own (see [`owned`]).
pub fn down(paths: &Paths) -> io::Result<()> {
    let Some(_lock) = lock(paths, false)? else {
        warn!(
            "network {} is not up (no state root {}): nothing to do",
            paths.name,
            paths.root.display()
        );
        return Ok(());
    };
    if !owned(paths)? {
        warn!(
            "network {} is not up (nothing in {}): nothing to do",
            paths.name,
            paths.root.display()
        );
    } else {
        down_locked(paths)?;
    }
    remove_root_if_unused(&paths.root);
    Ok(())
}

/// Takes the network down and removes its state directory; only on a directory that
/// [`owned`] accepted.
fn down_locked(paths: &Paths) -> io::Result<()> {
    if paths.control().exists() {
        match request(paths, "down", Duration::from_secs(60)) {
            Ok(_) => info!("supervisor stopped the network"),
            Err(e) => warn!("supervisor did not answer ({e})"),
        }
    }
    // The supervisor must be gone before its record is read: it records what it creates
    // until its last moment. One that does not answer (still coming up) gets SIGTERM, which
    // it handles by tearing down; SIGKILL after 30 s.
    if let Some(pid) = live_supervisor(paths) {
        let p = nix::unistd::Pid::from_raw(pid as i32);
        let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..1500 {
            if !pid_is_ours(pid, &paths.dir) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if pid_is_ours(pid, &paths.dir) {
            warn!("supervisor {pid} did not stop: killing it");
            let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // Checked again right before removal: the directory must still be this network's.
    if owned(paths)? {
        if let Some(r) = read_record(paths)? {
            undo(&only_ours(r, &paths.name), &paths.dir);
        }
        fs::remove_dir_all(&paths.dir)?;
    }
    Ok(())
}

/// A record read from disk, keeping only what network `name` can have created: its bridge,
/// TAPs named `ivt-<cell>`, its own nftables table. Anything else in it (a damaged or forged
/// record) is reported and left alone.
fn only_ours(mut r: Record, name: &str) -> Record {
    r.links.retain(|l| {
        let ours = l == name
            || l.strip_prefix("ivt-")
                .is_some_and(|c| !c.is_empty() && check_ifname("TAP", l).is_ok());
        if !ours {
            error!("the record of network {name} names link {l:?}, which it cannot have created: left alone");
        }
        ours
    });
    if let Some(g) = &r.isolation {
        if !g.is_plausible(Path::new(CGROUP_ROOT), name) {
            error!("the record of network {name} names control group {g:?}, which it cannot have created: left alone");
            r.isolation = None;
        }
    }
    if let Some(t) = &r.nft_table {
        if *t != nft::table_name(name) {
            error!(
                "the record of network {name} names nftables table {t:?}, not its own: left alone"
            );
            r.nft_table = None;
        }
    }
    r
}

/// `ivnet up`: starts the network described by `file` (or, when it runs, restarts what died).
/// `exe` is this program (the supervisor is `exe supervise`).
pub fn up(file: &Path, root: &Path, metrics: &str, exe: &Path) -> io::Result<Value> {
    let text = fs::read_to_string(file).map_err(|e| err(format!("{}: {e}", file.display())))?;
    let base = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .canonicalize()?;
    let topo =
        Topology::parse(&text, &base).map_err(|e| err(format!("{}: {e}", file.display())))?;
    let paths = Paths::new(root, &topo.host.bridge)?;
    let _lock = lock(&paths, true)?;
    let r = up_locked(&paths, &topo, &text, &base, metrics, exe);
    if r.is_err() {
        remove_root_if_unused(&paths.root);
    }
    r
}

fn up_locked(
    paths: &Paths,
    topo: &Topology,
    text: &str,
    base: &Path,
    metrics: &str,
    exe: &Path,
) -> io::Result<Value> {
    // Something in the way that is not this network's: refuse before touching anything.
    let exists = owned(paths)?;
    if exists && running(paths) {
        let old = fs::read_to_string(paths.topology()).unwrap_or_default();
        let old_base = fs::read_to_string(paths.base()).unwrap_or_default();
        if old != text || Path::new(old_base.trim()) != base {
            return Err(err(format!(
                "network {} runs a different topology: `ivnet down` it first",
                topo.host.bridge
            )));
        }
        return request(paths, "reconcile", Duration::from_secs(60));
    }
    if let Some(pid) = live_supervisor(paths) {
        // Alive but not answering: never tear down a network because it was slow.
        return Err(err(format!(
            "network {}: its supervisor (pid {pid}) does not answer; try again, or `ivnet down` it",
            topo.host.bridge
        )));
    }
    // A leftover of a supervisor that died: clean it up first.
    if exists {
        warn!(
            "{} is left from an earlier run: cleaning up",
            paths.dir.display()
        );
        down_locked(paths)?;
    }
    {
        use std::os::unix::fs::DirBuilderExt;
        // The control socket and consoles are root's business. `create`, not `create_all`:
        // the directory is new, and ours.
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&paths.dir)
            .map_err(|e| err(format!("{}: {e}", paths.dir.display())))?;
    }
    // The record first: from here on the directory is known as this network's.
    let record = Record {
        network: Some(paths.name.clone()),
        ..Record::default()
    };
    fs::write(
        paths.record(),
        serde_json::to_string_pretty(&record).expect("serialisable"),
    )?;
    fs::write(paths.topology(), text)?;
    fs::write(paths.base(), base.display().to_string())?;
    let log = fs::File::create(paths.log())?;
    let mut child = Command::new(exe)
        .arg("supervise")
        .arg("--state-dir")
        .arg(&paths.dir)
        .arg("--metrics")
        .arg(metrics)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()?;
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(st) = child.try_wait()? {
            let log = fs::read_to_string(paths.log()).unwrap_or_default();
            // Whatever it left (it may have died without tearing down) goes by its record.
            down_locked(paths)?;
            // The supervisor's last words name the cause.
            let cause = log
                .lines()
                .rev()
                .find_map(|l| l.strip_prefix("ivnet: error: "))
                .unwrap_or("(no error logged)");
            return Err(err(format!(
                "the network did not come up ({st}): {cause}; everything it created was removed"
            )));
        }
        if let Ok(v) = request(paths, "status", Duration::from_secs(5)) {
            return Ok(v);
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            down_locked(paths)?;
            return Err(err(
                "the supervisor did not answer within 120 s; everything it created was removed",
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `ivnet supervise`: the supervisor process (started by `up`).
pub fn supervise(dir: &Path, metrics: &str, term: &AtomicBool) -> io::Result<()> {
    // Everything the supervisor and its children create (sockets, consoles, logs) is private.
    // SAFETY: umask only sets this process's file mode mask.
    unsafe { libc::umask(0o077) };
    let root = nix::unistd::geteuid().is_root();
    let paths = Paths::of_dir(dir)?;
    if !owned(&paths)? {
        return Err(err(format!("{}: no such network", dir.display())));
    }
    let text = fs::read_to_string(paths.topology())?;
    let base = PathBuf::from(fs::read_to_string(paths.base())?.trim());
    let topo = Topology::parse(&text, &base).map_err(|e| err(e.to_string()))?;
    if topo.host.bridge != paths.name {
        return Err(err(format!(
            "{}: the topology's bridge is {}",
            dir.display(),
            topo.host.bridge
        )));
    }
    let metrics_listener =
        TcpListener::bind(metrics).map_err(|e| err(format!("metrics endpoint {metrics}: {e}")))?;
    let mut sup = Supervisor::new(topo, paths.clone(), metrics.to_string());
    if root {
        sup.qemu_user = Some(ivnet_dataplane::privs::qemu_user()?);
    }
    sup.save_record();
    sup.up()?;
    let _ = fs::remove_file(paths.control());
    let control = match UnixListener::bind(paths.control()).and_then(|c| {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(paths.control(), fs::Permissions::from_mode(0o600))?;
        Ok(c)
    }) {
        Ok(c) => c,
        Err(e) => {
            sup.teardown();
            return Err(err(format!("control socket: {e}")));
        }
    };

    info!(
        "network {} is up; metrics on http://{metrics}/metrics",
        sup.topo.host.bridge
    );
    // Returns after teardown; what is left of the state directory is `down`'s to remove.
    sup.serve(control, metrics_listener, term);
    Ok(())
}

/// The network a command names. `arg` is a topology file (the network is its bridge) or a
/// network's name; without it, `env` (the value of `$IVNET_NETWORK`), else the only network
/// under `root`. Every name is checked ([`check_ifname`]) before it becomes a path.
pub fn resolve(root: &Path, arg: Option<&str>, env: Option<&str>) -> Result<Paths, String> {
    let name = match (arg, env) {
        (Some(a), _) if a.ends_with(".toml") || Path::new(a).is_file() => {
            let text = fs::read_to_string(a).map_err(|e| format!("{a}: {e}"))?;
            let v: toml::Value = toml::from_str(&text).map_err(|e| format!("{a}: {e}"))?;
            let bridge = v
                .get("host")
                .and_then(|h| h.get("bridge"))
                .and_then(|b| b.as_str())
                .ok_or_else(|| format!("{a}: no [host] bridge"))?;
            check_ifname("bridge", bridge).map_err(|e| format!("{a}: {e}"))?;
            Some(bridge.to_string())
        }
        (Some(a), _) => {
            check_ifname("network", a).map_err(|e| {
                if Path::new(a).is_dir() {
                    format!(
                        "{e}; {a:?} is a directory: give a topology file (.toml) or a \
                         network's bridge name"
                    )
                } else {
                    e
                }
            })?;
            Some(a.to_string())
        }
        (None, Some(e)) => {
            check_ifname("IVNET_NETWORK", e)?;
            Some(e.to_string())
        }
        (None, None) => None,
    };
    match name {
        Some(n) => Paths::new(root, &n).map_err(|e| e.to_string()),
        None => find(root).map_err(|e| e.to_string()),
    }
}

/// The only network running under `root`: its directory holds its own record or control
/// socket (entries that are not valid network names are ignored).
pub fn find(root: &Path) -> io::Result<Paths> {
    let mut found = Vec::new();
    if let Ok(rd) = fs::read_dir(root) {
        for e in rd.flatten() {
            let Some(name) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let Ok(p) = Paths::new(root, &name) else {
                continue;
            };
            if owned(&p).unwrap_or(false) {
                found.push(p);
            }
        }
    }
    match found.len() {
        1 => Ok(found.pop().expect("one")),
        0 => Err(err(format!(
            "no network is up (nothing in {})",
            root.display()
        ))),
        _ => Err(err(format!(
            "several networks are up ({}): name one",
            found
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// An Ansible dynamic inventory from a status: `--list` (all groups and host variables).
pub fn inventory_list(status: &Value) -> Value {
    let mut hostvars = serde_json::Map::new();
    let mut names = Vec::new();
    for c in status["cells"].as_array().into_iter().flatten() {
        let name = c["name"].as_str().unwrap_or_default().to_string();
        hostvars.insert(name.clone(), inventory_host(c));
        names.push(name);
    }
    let group = status["network"].as_str().unwrap_or("ivnet").to_string();
    json!({
        "all": { "children": ["ungrouped", "ivnet_cells", group] },
        "ivnet_cells": { "hosts": names },
        group: { "hosts": names },
        "_meta": { "hostvars": hostvars },
    })
}

/// The host variables of one cell (its status entry).
pub fn inventory_host(c: &Value) -> Value {
    json!({
        "ansible_host": c["address"],
        // Cells run no SSH or Python: their tasks run on the ivnet host (and reach the cell
        // over the network), with the Python that runs Ansible.
        "ansible_connection": "local",
        "ansible_python_interpreter": "{{ ansible_playbook_python }}",
        "ivnet_running": c["running"],
        "ivnet_mac": c["mac"],
        "ivnet_console": c["console"],
        "ivnet_mcumgr_port": MCUMGR_PORT,
        "ivnet_services": c["services"],
        "ivnet_interfaces": c["interfaces"],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_from_disk_keeps_only_what_its_network_can_have_made() {
        let r = Record {
            network: Some("ivbr0".into()),
            links: vec![
                "ivbr0".into(),
                "ivt-c1".into(),
                "eth0".into(),
                "ivbr1".into(),
                "ivt-".into(),
                "ivt-a/b".into(),
            ],
            nft_table: Some("inet_filter".into()),
            ..Record::default()
        };
        let k = only_ours(r, "ivbr0");
        assert_eq!(k.links, ["ivbr0", "ivt-c1"]);
        assert_eq!(k.nft_table, None);
        let r = Record {
            nft_table: Some(nft::table_name("ivbr0")),
            ..Record::default()
        };
        assert_eq!(
            only_ours(r, "ivbr0").nft_table,
            Some(nft::table_name("ivbr0"))
        );
    }

    #[test]
    fn processes_are_recognised_by_the_exact_state_directory() {
        let dir = Path::new("/run/ivnet/ivbr0");
        let cmd = |args: &[&str]| args.join("\0");
        assert!(names_dir(
            &cmd(&["ivnet", "supervise", "--state-dir", "/run/ivnet/ivbr0"]),
            dir
        ));
        assert!(names_dir(
            &cmd(&["qemu", "-kernel", "/run/ivnet/ivbr0/c1.elf"]),
            dir
        ));
        assert!(names_dir(
            &cmd(&[
                "qemu",
                "-chardev",
                "socket,id=con,path=/run/ivnet/ivbr0/c1.console.sock"
            ]),
            dir
        ));
        assert!(names_dir(
            &cmd(&["dnsmasq", "--conf-file=/run/ivnet/ivbr0/dnsmasq.conf"]),
            dir
        ));
        // Another state root that merely ends the same way, or another network.
        assert!(!names_dir(
            &cmd(&["qemu", "-kernel", "/tmp/x/run/ivnet/ivbr0/c1.elf"]),
            dir
        ));
        assert!(!names_dir(
            &cmd(&["qemu", "path=/srv/run/ivnet/ivbr0/c1"]),
            dir
        ));
        assert!(!names_dir(
            &cmd(&["qemu", "-kernel", "/run/ivnet/ivbr01/c1.elf"]),
            dir
        ));
    }
}
