//! `ivnet`: the host-side command line.

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::Parser;
use ivnet_bench::core_bench as bench;
use std::os::fd::AsFd;

use ivnet_control::control::{self, CaptureRequest, Reply, Request};
use ivnet_control::network;
use ivnet_dataplane::device::Captured;
use ivnet_dataplane::pcap::Capture;
use ivnet_dataplane::{bridge, client::Client, link::Link, server, tap::Tap};
use log::error;

mod cli;
use cli::{Cli, Cmd};

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

/// `ivnet capture`: creates the file (new, owner-only, as whoever runs this), hands it to the
/// supervisor with the request, waits for the capture to end (or ends it on SIGINT/SIGTERM),
/// and says how big the file is. The file is removed again when the supervisor refuses.
fn capture(
    p: &network::Paths,
    link: String,
    write: std::path::PathBuf,
    seconds: u64,
    max_bytes: u64,
    stop: &AtomicBool,
) -> Result<(), String> {
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};
    // The supervisor names it in its status and logs: an absolute path.
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
        max_bytes,
    };
    req.check()?;
    let f = Capture::create_file(&req.file).map_err(|e| e.to_string())?;
    let reply = control::call_with(
        &p.control(),
        Request::Capture(req.clone()),
        Some(f.as_fd()),
        Duration::from_secs(10),
    );
    drop(f);
    let sampled = match reply {
        Ok(Reply::Capturing { sampled, .. }) => sampled,
        other => {
            // Nothing was written: the file is ours, new and empty.
            let _ = std::fs::remove_file(&req.file);
            return Err(match other {
                Err(e) => format!("network at {}: {e}", p.dir.display()),
                Ok(r) => format!("unexpected answer from the supervisor: {r:?}"),
            });
        }
    };
    println!(
        "capturing link {} into {} for {seconds} s ({})",
        req.link,
        req.file.display(),
        if sampled {
            "sampled from its memory every millisecond"
        } else {
            "every frame"
        }
    );
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
    if stop.load(Ordering::Relaxed) {
        let r = network::request(
            p,
            Request::EndCapture {
                link: req.link.clone(),
            },
            Duration::from_secs(10),
        );
        if let Err(e) = r {
            error!("ending the capture: {e}");
        }
    }
    // The file is complete once the status no longer shows the capture.
    let give_up = Instant::now() + Duration::from_secs(10);
    loop {
        let st = network::status(p, Duration::from_secs(5))
            .map_err(|e| format!("network at {}: {e}", p.dir.display()))?;
        let running = st
            .links
            .iter()
            .any(|l| l.name == req.link && l.capture.is_some());
        if !running {
            break;
        }
        if Instant::now() > give_up {
            return Err(format!("the capture of link {} did not end", req.link));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let size = std::fs::metadata(&req.file).map(|m| m.len()).unwrap_or(0);
    println!("{}: {size} bytes", req.file.display());
    Ok(())
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
            | Cmd::Capture { .. }
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
        } => network_paths(&state_root, n.as_deref())
            .and_then(|p| capture(&p, link, write, seconds, max as u64, &stop)),
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
