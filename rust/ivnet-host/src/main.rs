//! `ivnet`: the host-side command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use ivnet_host::bench::{self, WaitMode};
use ivnet_host::{bridge, client::Client, link::Link, server, size::parse_size, tap::Tap};
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
    },
    /// Join a link as the host peer and bridge it to a TAP device.
    Peer {
        /// The server's UNIX socket.
        #[arg(long, short)]
        socket: PathBuf,
        /// TAP device to create or attach to.
        #[arg(long, short)]
        tap: String,
        /// Interrupt vectors per peer (must match the server's).
        #[arg(long, default_value_t = 2)]
        vectors: u16,
    },
    /// Check a topology file (cells, links, host bridge, DHCP, forwards) and summarise it;
    /// the first problem is reported with its line.
    Check {
        /// The topology file (TOML).
        file: PathBuf,
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
    use ivnet_host::topology::{Addressing, End, Topology};
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let base = file.parent().unwrap_or(std::path::Path::new("."));
    let t = Topology::parse(&text, base).map_err(|e| format!("{}: {e}", file.display()))?;
    let h = &t.host;
    println!(
        "host: bridge {} at {}/{}{}{}",
        h.bridge,
        h.address,
        h.subnet.prefix,
        h.dhcp
            .map(|(a, b)| format!(", DHCP {a} - {b}"))
            .unwrap_or_default(),
        h.uplink
            .as_ref()
            .map(|u| format!(", NAT to {u}"))
            .unwrap_or_default()
    );
    for c in &t.cells {
        let a = match c.address {
            Addressing::Dhcp => "DHCP".to_string(),
            Addressing::Static(ip) => ip.to_string(),
        };
        println!("cell {}: {a}, image {}", c.name, c.image.display());
    }
    let name = |e: End| match e {
        End::Host => "host".to_string(),
        End::Cell(i) => t.cells[i].name.clone(),
    };
    for l in &t.links {
        println!(
            "link {} - {} ({} bytes)",
            name(l.ends[0]),
            name(l.ends[1]),
            l.size
        );
    }
    for f in &h.forwards {
        println!(
            "forward host:{}/{} -> {}:{}",
            f.port, f.proto, t.cells[f.cell].name, f.to
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let stop = stop_flag();
    let r: Result<(), String> = match cli.cmd {
        Cmd::Server {
            socket,
            size,
            vectors,
        } => server::Server::new(server::ServerConfig {
            socket,
            size,
            vectors,
        })
        .map_err(|e| e.to_string())
        .and_then(|mut s| s.run(&stop).map_err(|e| e.to_string())),
        Cmd::Peer {
            socket,
            tap,
            vectors,
        } => (|| {
            if vectors < 2 {
                return Err(format!(
                    "--vectors {vectors}: ivshmem-net needs 2 (state, data)"
                ));
            }
            let tap = Tap::open(&tap).map_err(|e| e.to_string())?;
            let client = Client::connect(&socket, vectors).map_err(|e| e.to_string())?;
            let mut link = Link::new(client).map_err(|e| e.to_string())?;
            bridge::run(&mut link, &tap, &stop).map_err(|e| e.to_string())
        })(),
        Cmd::Check { file } => check(&file),
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
