//! # ivnet-dataplane: the host's data plane of an ivshmem-net network
//!
//! Everything that moves or watches frames on the host, as small pieces that compose (in the
//! manner of smoltcp's `phy`):
//!
//! - [`server`]: an ivshmem server for QEMU's `ivshmem-doorbell` (v1, which keeps the link's
//!   slot-owner table) and for the ivshmem 2.0 device, with [`proto`] its wire messages;
//! - [`client`]: what QEMU's device does on the other end of that socket;
//! - [`mapping`]: the shared memory (sealed memfd) and its mapping;
//! - [`link`]: one end of an ivshmem-net link (state machine and queues from `ivnet-core`);
//! - [`device`]: the frame-device trait that a link end and a TAP implement, and wrappers that
//!   compose with any of them (a pcap [`Capture`](pcap::Capture) of what passes);
//! - [`tap`] and [`bridge`]: a Linux TAP device and the loop that joins it to a link;
//! - [`observe`]: counting a cell<->cell link from the host, read-only;
//! - [`pcap`]: a bounded pcap file that tcpdump and Wireshark open;
//! - [`privs`]: least privilege for data-plane threads and the processes the host starts.
//!
//! It depends on `ivnet-core` only; the control plane (`ivnet-control`) and the tools
//! (`ivnet-bench`) build on it, never the other way round.
#![deny(missing_docs)]

pub mod bridge;
pub mod client;
pub mod device;
pub mod link;
pub mod mapping;
pub mod observe;
pub mod pcap;
pub mod privs;
pub mod proto;
pub mod server;
pub mod tap;
