//! `ivnet`: the host-side command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use ivnet_bench::core_bench::{self as bench, WaitMode};
use ivnet_control::control::{CaptureRequest, Reply, Request};
use ivnet_control::{network, size::parse_size};
use ivnet_dataplane::device::Captured;
use ivnet_dataplane::{bridge, client::Client, link::Link, server, tap::Tap};
use log::error;

#[derive(Parser)]
#[command(
    name = "ivnet",
    version,
    about = "Host side of ivnet: Ethernet between VMs over ivshmem shared memory",
    long_about = "Host side of ivnet: an ivshmem server for QEMU's ivshmem-doorbell device that \
                  manages ivshmem-net links, and a host peer that bridges a link to a Linux TAP \
                  device.\n\nA link: `ivnet server --socket /tmp/l0.sock --size 1M`, QEMU with \
                  `-chardev socket,path=/tmp/l0.sock,id=ivs -device ivshmem-doorbell,vectors=2,chardev=ivs`, \
                  and `ivnet peer --socket /tmp/l0.sock --tap ivtap0` on the host end."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve one ivshmem-net link (two slots) on a UNIX socket.
    Server {
        /// UNIX socket path to listen on.
        #[arg(long, short)]
        socket: PathBuf,
        /// Shared memory size: a power of two, at least 64K (1M gives Jailhouse's layout).
        #[arg(long, default_value = "1M", value_parser = parse_size)]
        size: usize,
        /// Interrupt vectors per peer (ivshmem-net needs 2: state and data).
        #[arg(long, default_value_t = 2)]
        vectors: u16,
        /// Permission bits of the socket, in octal: who may connect (QEMU and the host peer
        /// must be able to). 600: only the user running the server.
        #[arg(long, default_value = "600", value_parser = parse_mode)]
        socket_mode: u32,
        /// The ivshmem device generation of the peers: 1 for upstream QEMU's
        /// ivshmem-doorbell, 2 for ivshmem 2.0 (the project's QEMU device `ivshmem2`).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
        ivshmem: u8,
    },
    /// Join a link as the host peer and bridge it to a TAP device. SIGUSR1 logs its counters.
    Peer {
        /// The server's UNIX socket.
        #[arg(long, short)]
        socket: PathBuf,
        /// TAP device to create or attach to.
        #[arg(long, short)]
        tap: String,
        /// Interrupt vectors per peer (must match the server's; an ivshmem 2.0 server says
        /// how many itself).
        #[arg(long, default_value_t = 2)]
        vectors: u16,
        /// Record every frame moved, both ways, in this pcap file (tcpdump -r, tshark,
        /// Wireshark); it must not exist.
        #[arg(long)]
        pcap: Option<PathBuf>,
        /// The most the pcap file may grow to; the capture stops there, the link goes on.
        #[arg(long, default_value = "64M", value_parser = parse_size)]
        pcap_max: usize,
    },
    /// Check a topology file (cells, links, host bridge, DHCP, forwards) and summarise it;
    /// the first problem is reported with its line.
    Check {
        /// The topology file (TOML).
        file: PathBuf,
    },
    /// Bring up the network a topology file describes: bridge, NAT and forwards, DHCP,
    /// ivshmem servers and host peers, and the cells in QEMU. On a running network, restart
    /// what died (a cell, dnsmasq) and change nothing else.
    Up {
        /// The topology file (TOML).
        file: PathBuf,
        /// Where networks keep their state (one directory per network, named after its bridge).
        #[arg(long, default_value = network::STATE_ROOT)]
        state_root: PathBuf,
        /// Address of the Prometheus metrics endpoint.
        #[arg(long, default_value = network::DEFAULT_METRICS)]
        metrics: String,
    },
    /// Stop a network and remove everything it created (processes, TAPs, bridge, nftables
    /// table, files), also after its supervisor died.
    Down {
        /// The network: its topology file, or its bridge name; the only running one if omitted.
        network: Option<String>,
        #[arg(long, default_value = network::STATE_ROOT)]
        state_root: PathBuf,
    },
    /// Show a running network: cells, addresses, links, states and counters.
    Status {
        /// The network: its topology file, or its bridge name; the only running one if omitted.
        network: Option<String>,
        #[arg(long, default_value = network::STATE_ROOT)]
        state_root: PathBuf,
        /// Print JSON (for orchestrators) instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// Record the frames of one link of a running network in a new pcap file (tcpdump,
    /// tshark, Wireshark) for a while. A link to the host: every frame, both ways. A
    /// cell<->cell link: what a read-only look at its memory every millisecond sees.
    Capture {
        /// The network: its topology file, or its bridge name; the only running one if omitted.
        network: Option<String>,
        /// The link, as `ivnet status` names it (`c1-host`, `c2-c3`).
        #[arg(long)]
        link: String,
        /// The pcap file to create (never overwritten).
        #[arg(long, short = 'w')]
        write: PathBuf,
        /// How long, in seconds (1 to 3600).
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// At most this much file (the capture stops there; the link goes on).
        #[arg(long, default_value = "64M", value_parser = parse_size)]
        max: usize,
        #[arg(long, default_value = network::STATE_ROOT)]
        state_root: PathBuf,
    },
    /// Ansible dynamic inventory of a running network's cells (`--list` or `--host NAME`).
    /// The network is $IVNET_NETWORK, or the only running one.
    Inventory {
        /// All groups and host variables.
        #[arg(long)]
        list: bool,
        /// One cell's variables.
        #[arg(long)]
        host: Option<String>,
        #[arg(long, default_value = network::STATE_ROOT)]
        state_root: PathBuf,
    },
    /// Run a command in a control group of its own, `ivnet-<name>`, with ivnet's isolation
    /// settings (those of a topology's `[host] isolation`); the group is removed when the
    /// command ends. SIGTERM and SIGINT are passed on to the command.
    Isolate {
        /// The group's name (it becomes `ivnet-<name>`, which must not exist).
        #[arg(long)]
        name: String,
        /// CPU weight, 1..10000 (100 is every process's default).
        #[arg(long)]
        cpu_weight: Option<u32>,
        /// CPUs the command may run on, like `0-1` or `1`.
        #[arg(long)]
        cpus: Option<String>,
        /// Memory protected from reclaim (`memory.min`; on cgroup v1 a soft limit).
        #[arg(long, value_parser = parse_size)]
        memory_min: Option<usize>,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, required = true, allow_hyphen_values = true)]
        command: Vec<std::ffi::OsString>,
    },
    /// The supervisor of a network (started by `ivnet up`).
    #[command(hide = true)]
    Supervise {
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long)]
        metrics: String,
    },
    /// Microbenchmark of the protocol core: two threads, one shared region, the real TX and
    /// RX queues, every frame verified; also measures memcpy bandwidth for comparison.
    ///
    /// Prints human-readable lines and one `RESULT metric=<m> size=<bytes> value=<v>
    /// unit=<u>` line per figure.
    BenchCore {
        /// Seconds of traffic for each frame size.
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
        /// Frame sizes in bytes, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "64,1500")]
        sizes: Vec<usize>,
        /// Shared memory size, as for `ivnet server --size`.
        #[arg(long, default_value = "1M", value_parser = parse_size)]
        size: usize,
        /// How a peer waits for the other's doorbell: `eventfd` (blocks in poll) or `spin`.
        #[arg(long, default_value = "eventfd")]
        wait: WaitMode,
    },
}

/// An octal permission mode such as `600` or `0660`.
fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?} is not an octal permission mode such as 600 or 660"))
}

fn stop_flag() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let _ = signal_hook_register(sig, stop.clone());
    }
    stop
}

fn signal_hook_register(sig: libc::c_int, flag: Arc<AtomicBool>) -> std::io::Result<()> {
    use std::sync::OnceLock;
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    let _ = FLAG.set(flag);
    extern "C" fn on_signal(_: libc::c_int) {
        if let Some(f) = FLAG.get() {
            f.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    // SAFETY: installs an async-signal-safe handler that only stores to an atomic.
    let r = unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    if r == libc::SIG_ERR {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn check(file: &std::path::Path) -> Result<(), String> {
    use ivnet_control::topology::{Addressing, End, Topology};
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let base = file.parent().unwrap_or(std::path::Path::new("."));
    let t = Topology::parse(&text, base).map_err(|e| format!("{}: {e}", file.display()))?;
    let h = &t.host;
    println!(
        "host: bridge {} at {}/{}{}{}{}",
        h.bridge,
        h.address,
        h.subnet.prefix,
        h.subnet6
            .map(|p| format!(
                " and {}/64 (router advertisements of {p}/64)",
                ivnet_control::topology::in6(p, 1)
            ))
            .unwrap_or_default(),
        h.dhcp
            .map(|(a, b)| format!(", DHCP {a} - {b}"))
            .unwrap_or_default(),
        h.uplink
            .as_ref()
            .map(|u| format!(", NAT to {u}"))
            .unwrap_or_default()
    );
    for (i, c) in t.cells.iter().enumerate() {
        let a = match c.address {
            Addressing::Dhcp => "DHCP".to_string(),
            Addressing::Static(ip) => ip.to_string(),
            Addressing::None => "no host link".to_string(),
        };
        let a6 = t
            .cell_address6(i)
            .map(|a| format!(" and {a} (SLAAC)"))
            .unwrap_or_default();
        println!("cell {}: {a}{a6}, image {}", c.name, c.image.display());
    }
    let name = |e: End| match e {
        End::Host => "host".to_string(),
        End::Cell(i) => t.cells[i].name.clone(),
    };
    for l in &t.links {
        let subnets = [
            l.subnet.map(|s| format!("{}/{}", s.network, s.prefix)),
            l.subnet6.map(|p| format!("{p}/64")),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(", ");
        println!(
            "link {} - {} ({} bytes{}{})",
            name(l.ends[0]),
            name(l.ends[1]),
            l.size,
            if subnets.is_empty() { "" } else { ", " },
            subnets
        );
    }
    for f in &h.forwards {
        println!(
            "forward host:{}/{} -> {}:{}",
            f.port, f.proto, t.cells[f.cell].name, f.to
        );
    }
    if let Some(iso) = &h.isolation {
        println!(
            "isolation: control group ivnet-{}{}{}{}",
            h.bridge,
            iso.cpu_weight
                .map(|w| format!(", CPU weight {w}"))
                .unwrap_or_default(),
            iso.cpus
                .as_ref()
                .map(|c| format!(", CPUs {c}"))
                .unwrap_or_default(),
            iso.memory_min
                .map(|m| format!(", {} MiB of memory protected", m >> 20))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// The state directory of a network named by its topology file or its bridge, else by
/// `$IVNET_NETWORK`, else the only one; every name is checked before it becomes a path.
fn network_paths(root: &std::path::Path, network: Option<&str>) -> Result<network::Paths, String> {
    let env = std::env::var_os("IVNET_NETWORK")
        .map(|v| {
            v.into_string()
                .map_err(|v| format!("IVNET_NETWORK {v:?} is not valid UTF-8"))
        })
        .transpose()?;
    network::resolve(root, network, env.as_deref())
}

/// `ivnet isolate`: the command in a group of its own, removed afterwards.
fn isolate(
    name: &str,
    cpu_weight: Option<u32>,
    cpus: Option<&str>,
    memory_min: Option<usize>,
    command: &[std::ffi::OsString],
    stop: &AtomicBool,
) -> Result<(), String> {
    use ivnet_control::isolation::{Group, Spec, CGROUP_ROOT};
    use std::sync::atomic::Ordering;
    ivnet_control::names::check_ifname("group name", name)?;
    let spec = Spec {
        cpu_weight,
        cpus: cpus.map(str::parse).transpose()?,
        memory_min: memory_min.map(|m| m as u64),
    };
    // Group::create checks the spec before it touches anything.
    let own = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
    let g = Group::create(std::path::Path::new(CGROUP_ROOT), &own, name, &spec)
        .map_err(|e| e.to_string())?;
    let run = || -> Result<std::process::ExitStatus, String> {
        g.add(std::process::id()).map_err(|e| e.to_string())?;
        let mut child = std::process::Command::new(&command[0])
            .args(&command[1..])
            .spawn()
            .map_err(|e| format!("{}: {e}", command[0].to_string_lossy()))?;
        let mut asked = None;
        loop {
            if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
                return Ok(st);
            }
            if stop.load(Ordering::Relaxed) {
                let t = *asked.get_or_insert_with(|| {
                    let p = nix::unistd::Pid::from_raw(child.id() as i32);
                    let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGTERM);
                    std::time::Instant::now()
                });
                if t.elapsed() > std::time::Duration::from_secs(10) {
                    let _ = child.kill();
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    let r = run();
    g.remove();
    match r? {
        st if st.success() => Ok(()),
        st => Err(format!("{}: {st}", command[0].to_string_lossy())),
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    // Only the long-running commands stop on SIGINT/SIGTERM through the flag; the others keep
    // the default (Ctrl-C ends them at once).
    let long_running = matches!(
        cli.cmd,
        Cmd::Server { .. }
            | Cmd::Peer { .. }
            | Cmd::Supervise { .. }
            | Cmd::BenchCore { .. }
            | Cmd::Isolate { .. }
    );
    let stop = if long_running {
        stop_flag()
    } else {
        Arc::new(AtomicBool::new(false))
    };
    let r: Result<(), String> = match cli.cmd {
        Cmd::Server {
            socket,
            size,
            vectors,
            socket_mode,
            ivshmem,
        } => server::Server::new(server::ServerConfig {
            ivshmem: if ivshmem == 2 {
                server::Ivshmem::V2
            } else {
                server::Ivshmem::V1
            },
            socket,
            size,
            vectors,
            socket_mode,
        })
        .map_err(|e| e.to_string())
        .and_then(|mut s| {
            // The socket is bound: nothing else needs privileges.
            ivnet_dataplane::privs::drop_all_in_thread().map_err(|e| e.to_string())?;
            s.run(&stop).map_err(|e| e.to_string())
        }),
        Cmd::Peer {
            socket,
            tap,
            vectors,
            pcap,
            pcap_max,
        } => (|| {
            if vectors < 2 {
                return Err(format!(
                    "--vectors {vectors}: ivshmem-net needs 2 (state, data)"
                ));
            }
            let tap = Tap::open(&tap).map_err(|e| e.to_string())?;
            let capture = pcap
                .map(|p| ivnet_dataplane::pcap::Capture::create(&p, pcap_max as u64))
                .transpose()
                .map_err(|e| e.to_string())?;
            let client = Client::connect(&socket, vectors).map_err(|e| e.to_string())?;
            // The TAP is open and the link joined: nothing else needs privileges.
            ivnet_dataplane::privs::drop_all_in_thread().map_err(|e| e.to_string())?;
            let mut link = Link::new(client).map_err(|e| e.to_string())?;
            static STATS: AtomicBool = AtomicBool::new(false);
            extern "C" fn on_usr1(_: libc::c_int) {
                STATS.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            // SAFETY: installs an async-signal-safe handler that only stores to an atomic.
            unsafe { libc::signal(libc::SIGUSR1, on_usr1 as *const () as libc::sighandler_t) };
            let tick = |l: &Link| {
                if STATS.swap(false, std::sync::atomic::Ordering::Relaxed) {
                    log::info!("stats: {:?}", l.stats);
                }
            };
            // The TAP, or the TAP with every frame through it recorded.
            let r = match capture {
                None => bridge::run_full(&mut link, &mut { tap }, &stop, true, tick),
                Some(c) => {
                    let mut port = Captured::new(tap, c);
                    bridge::run_full(&mut link, &mut port, &stop, true, tick)
                }
            };
            log::info!("stats at exit: {:?}", link.stats);
            r.map_err(|e| e.to_string())
        })(),
        Cmd::Check { file } => check(&file),
        Cmd::Up {
            file,
            state_root,
            metrics,
        } => (|| {
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            match network::up(&file, &state_root, &metrics, &exe).map_err(|e| e.to_string())? {
                Reply::Reconciled { restarted } => {
                    let r = serde_json::to_string(&restarted).unwrap_or_default();
                    println!("network already up; restarted: {r}");
                }
                Reply::Status(st) => st.print(),
                other => return Err(format!("unexpected answer from the supervisor: {other:?}")),
            }
            Ok(())
        })(),
        Cmd::Down {
            network: n,
            state_root,
        } => network_paths(&state_root, n.as_deref())
            .and_then(|p| network::down(&p).map_err(|e| e.to_string())),
        Cmd::Status {
            network: n,
            state_root,
            json,
        } => network_paths(&state_root, n.as_deref()).and_then(|p| {
            let st = network::status(&p, std::time::Duration::from_secs(10))
                .map_err(|e| format!("network at {}: {e}", p.dir.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&st).unwrap());
            } else {
                st.print();
            }
            Ok(())
        }),
        Cmd::Capture {
            network: n,
            link,
            write,
            seconds,
            max,
            state_root,
        } => network_paths(&state_root, n.as_deref()).and_then(|p| {
            // The supervisor runs elsewhere: it is given an absolute path.
            let file = if write.is_absolute() {
                write
            } else {
                std::env::current_dir()
                    .map_err(|e| format!("the current directory: {e}"))?
                    .join(write)
            };
            let req = CaptureRequest {
                link,
                file,
                seconds,
                max_bytes: max as u64,
            };
            req.check()?;
            let reply = network::request(
                &p,
                Request::Capture(req.clone()),
                std::time::Duration::from_secs(10),
            )
            .map_err(|e| format!("network at {}: {e}", p.dir.display()))?;
            let Reply::Capturing { file, sampled } = reply else {
                return Err(format!("unexpected answer from the supervisor: {reply:?}"));
            };
            println!(
                "capturing link {} into {} for {seconds} s ({})",
                req.link,
                file.display(),
                if sampled {
                    "sampled from its memory every millisecond"
                } else {
                    "every frame"
                }
            );
            // The supervisor closes the file at the end; wait for it, plus a margin.
            let end = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
            while std::time::Instant::now() < end
                && !stop.load(std::sync::atomic::Ordering::Relaxed)
            {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
            let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
            println!("{}: {size} bytes", file.display());
            Ok(())
        }),
        Cmd::Inventory {
            list,
            host,
            state_root,
        } => network_paths(&state_root, None).and_then(|p| {
            let st = network::status(&p, std::time::Duration::from_secs(10))
                .map_err(|e| format!("network at {}: {e}", p.dir.display()))?;
            let out = match (list, host) {
                (_, Some(h)) => st
                    .cell(&h)
                    .map(|c| c.inventory_host())
                    .ok_or_else(|| format!("no cell {h:?} in network {}", st.network))?,
                (true, None) => st.inventory_list(),
                (false, None) => return Err("inventory: give --list or --host NAME".into()),
            };
            println!("{}", serde_json::to_string_pretty(&out).unwrap());
            Ok(())
        }),
        Cmd::Supervise { state_dir, metrics } => {
            network::supervise(&state_dir, &metrics, &stop).map_err(|e| e.to_string())
        }
        Cmd::Isolate {
            name,
            cpu_weight,
            cpus,
            memory_min,
            command,
        } => isolate(
            &name,
            cpu_weight,
            cpus.as_deref(),
            memory_min,
            &command,
            &stop,
        ),
        Cmd::BenchCore {
            seconds,
            sizes,
            size,
            wait,
        } => bench::run(
            &bench::Config {
                seconds,
                sizes,
                shm_size: size,
                wait,
            },
            &stop,
            &mut std::io::stdout().lock(),
        ),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            eprintln!("ivnet: error: {e}");
            ExitCode::FAILURE
        }
    }
}
