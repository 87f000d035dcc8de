//! # ivnet-control: the control plane of a network of Zephyr cells
//!
//! What `ivnet check`, `up`, `down`, `status` and `inventory` do, as one-way layers:
//!
//! - [`names`] and [`size`]: the rules for names that become device names and paths, and
//!   sizes such as `1M`;
//! - [`topology`]: the topology file (parsed, and checked with line numbers);
//! - [`netcfg`]: links, bridges and addresses through rtnetlink;
//! - [`nft`]: one nftables table of NAT and port forwards per network;
//! - [`isolation`]: the network's control group (cgroup v1 or v2);
//! - [`status`]: the typed status of a running network (`ivnet status --json`, the printer,
//!   metrics, inventory) and the typed [`control`] protocol of the supervisor's socket;
//! - [`metrics`]: Prometheus text from a status;
//! - [`network`]: the supervisor of a running network, split into its state directory and
//!   record/undo, the supervisor's start and reconcile, and its control and metrics servers.
//!
//! It builds on `ivnet-dataplane` (servers, host peers, observers); the `ivnet` command
//! builds on both.
#![deny(missing_docs)]

pub mod control;
pub mod isolation;
pub mod metrics;
pub mod names;
pub mod netcfg;
pub mod network;
pub mod nft;
pub mod size;
pub mod status;
pub mod topology;
