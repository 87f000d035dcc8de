//! # ivnet-host: the host side of an ivshmem-net network
//!
//! Small pieces that compose (in the manner of smoltcp's `phy`):
//!
//! - [`server`]: an ivshmem server for QEMU's `ivshmem-doorbell` that keeps the v1 link's
//!   slot-owner table (ids only grow; a departed peer's slot is zeroed and the survivor rung);
//! - [`client`]: what QEMU's device does on the other end of that socket;
//! - [`hostile`]: a hostile peer for tests (`ivnet-hostile`): honest, then an attack, then
//!   honest again;
//! - [`link`]: one end of an ivshmem-net link (state machine and queues from `ivnet-core`);
//! - [`tap`] and [`bridge`]: a Linux TAP device and the loop that joins it to a link;
//! - [`names`]: the rule for names that become device names and paths (bridges, networks);
//! - [`size`]: parsing of sizes such as `1M` or `0x100000` for the command line;
//! - [`bench`](mod@bench): `ivnet bench-core`, a microbenchmark of the protocol core over shared memory;
//! - [`network`] and [`metrics`]: `ivnet up`/`down`/`status`/`inventory`, the supervisor of a
//!   running network, and its Prometheus metrics;
//! - [`observe`]: counting a cell<->cell link from the host, read-only;
//! - [`privs`]: least privilege for the supervisor (capabilities) and the cells' QEMUs;
//! - [`topology`]: the topology file of a network of cells (parsed and checked);
//! - [`netcfg`]: links, bridges and IPv4 addresses configured through rtnetlink;
//! - [`nft`]: one nftables table of NAT and port forwards per network, through nft's JSON API.
#![deny(missing_docs)]

pub mod bench;
pub mod bridge;
pub mod client;
pub mod hostile;
pub mod isolation;
pub mod link;
pub mod mapping;
pub mod metrics;
pub mod names;
pub mod netcfg;
pub mod network;
pub mod nft;
pub mod observe;
pub mod pcap;
pub mod privs;
pub mod proto;
pub mod server;
pub mod size;
pub mod tap;
pub mod topology;
