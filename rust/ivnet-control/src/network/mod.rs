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
//! 5. answers `status`, `reconcile`, `down`, `capture` and `end-capture` on a UNIX socket
//!    ([`crate::control`]), and serves Prometheus
//!    metrics over HTTP.
//!
//! Every step that changes the machine is recorded (in memory and in `state.json`) so that a
//! failure half-way, `down`, or the next `up` after a crash undoes exactly what was created.
//! `up` on a running network is idempotent: it asks the supervisor to restart what died (a
//! cell's QEMU, dnsmasq) and changes nothing else.
//!
//! The parts: [`paths`] (the state directory), [`record`] (what was created, undoing it,
//! `down`), [`supervisor`] (start, reconcile, teardown), [`children`] (dnsmasq, the cells'
//! QEMUs, NAT), [`view`] (the typed [`Status`]), [`serve`] (control socket and metrics),
//! [`capture`] (`ivnet capture`), and [`lifecycle`] (`up`, `supervise`, finding a network).

mod capture;
mod children;
pub mod lifecycle;
pub mod paths;
pub mod record;
mod serve;
mod supervisor;
mod view;

pub use crate::status::MCUMGR_PORT;
use capture::*;
use children::*;
pub use lifecycle::*;
pub use paths::*;
pub use record::*;
pub use supervisor::Supervisor;
use view::*;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::{AsRawFd, OwnedFd};
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

use crate::control::{self, CaptureRequest, Reply, Request};
use crate::isolation::{Group, CGROUP_ROOT};
use crate::names::check_ifname;
use crate::netcfg;
use crate::nft;
use crate::status::{self as st, Status};
use crate::topology::{self, Addressing, End, Topology};
use ivnet_core::mac::Mac;
use ivnet_dataplane::bridge;
use ivnet_dataplane::client::Client;
use ivnet_dataplane::device::{CaptureSlot, Device, Tee};
use ivnet_dataplane::link::{Link, Stats};
use ivnet_dataplane::observe::{Counts, LinkObserver};
use ivnet_dataplane::pcap::Capture;
use ivnet_dataplane::server::{Ivshmem, Server, ServerConfig};
use ivnet_dataplane::tap::Tap;

/// Where networks keep their state by default (one directory per network).
pub const STATE_ROOT: &str = "/run/ivnet";
/// Default address of the Prometheus metrics endpoint.
pub const DEFAULT_METRICS: &str = "127.0.0.1:9477";
fn err(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}
