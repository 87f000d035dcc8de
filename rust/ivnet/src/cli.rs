//! The command line: every command and option of `ivnet`, as clap parses them.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use ivnet_bench::core_bench::WaitMode;
use ivnet_control::{network, size::parse_size};

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
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) cmd: Cmd,
}

#[derive(Subcommand)]
pub(crate) enum Cmd {
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
pub(crate) fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?} is not an octal permission mode such as 600 or 660"))
}
