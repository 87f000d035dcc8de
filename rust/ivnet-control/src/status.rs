//! The status of a running network, as one typed schema.
//!
//! The supervisor builds a [`Status`]; `ivnet status --json` prints it as JSON (the field names
//! below are the JSON keys, spelled only here); `ivnet status` prints it for people
//! ([`Status::print`]); the metrics endpoint renders it ([`crate::metrics::render`]); `ivnet
//! inventory` turns it into an Ansible inventory ([`Status::inventory_list`],
//! [`CellStatus::inventory_host`]). A link's counters are the host peer's own
//! [`Stats`](ivnet_dataplane::link::Stats), serialised as they are.
//!
//! Every field is always present (`null` when unknown) except those a kind of link does not
//! have, which are left out: `tap` and `counters` (links to the host), `observed` (cell<->cell
//! links the host reads), and `capture` while no `ivnet capture` runs on the link.

use std::fmt::Write as _;

use ivnet_dataplane::link::Stats;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The UDP port of a cell's MCUmgr SMP server (cell images built with `-S ivnet-cell`).
pub const MCUMGR_PORT: u16 = 1337;

/// A running network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The network's name (its bridge).
    pub network: String,
    /// Its state directory.
    pub state_dir: String,
    /// The supervisor's process id.
    pub supervisor_pid: u32,
    /// Seconds since the supervisor started.
    pub uptime_s: u64,
    /// The metrics endpoint's URL.
    pub metrics: String,
    /// The host's side.
    pub host: HostStatus,
    /// The cells, in topology order.
    pub cells: Vec<CellStatus>,
    /// The links, in topology order.
    pub links: Vec<LinkStatus>,
}

/// The host's side of a network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostStatus {
    /// The bridge device.
    pub bridge: String,
    /// The host's IPv4 address on it.
    pub address: String,
    /// The network's IPv4 subnet, `a.b.c.d/p`.
    pub subnet: String,
    /// The host's IPv6 address, when the network has a /64.
    pub address6: Option<String>,
    /// The network's IPv6 /64.
    pub subnet6: Option<String>,
    /// The DHCP range, first and last address.
    pub dhcp: Option<[String; 2]>,
    /// The uplink for NAT, if any.
    pub uplink: Option<String>,
    /// dnsmasq's process id while it runs.
    pub dnsmasq_pid: Option<u32>,
    /// Port forwards.
    pub forwards: Vec<ForwardStatus>,
    /// The network's control group, when the topology asks for isolation.
    pub isolation: Option<IsolationStatus>,
}

/// One port forward from the host to a cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForwardStatus {
    /// Host port.
    pub port: u16,
    /// `tcp` or `udp`.
    pub proto: String,
    /// The cell's name.
    pub cell: String,
    /// The cell's port.
    pub to: u16,
    /// Whether the rule is loaded (the cell's address is known).
    pub active: bool,
}

/// The network's control group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IsolationStatus {
    /// 1 or 2.
    pub cgroup_version: u8,
    /// The group's name.
    pub group: String,
    /// The directories made for it (one per v1 hierarchy).
    pub directories: Vec<String>,
    /// `file=value` as written.
    pub settings: Vec<String>,
    /// The processes in it.
    pub pids: Vec<u32>,
}

/// How an interface gets its IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Addressing {
    /// Given in the topology.
    Static,
    /// From the network's dnsmasq.
    Dhcp,
}

/// One cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellStatus {
    /// Its name.
    pub name: String,
    /// Whether its QEMU runs.
    pub running: bool,
    /// Its QEMU's process id.
    pub pid: Option<u32>,
    /// Its IPv4 address on the bridge (static, or the DHCP lease once there is one).
    pub address: Option<String>,
    /// Its IPv6 address on the bridge.
    pub address6: Option<String>,
    /// Its MAC on the bridge.
    pub mac: String,
    /// The image it boots.
    pub image: String,
    /// The ports of the services the topology names.
    pub services: Vec<u16>,
    /// Where its MCUmgr server listens, `udp/PORT`.
    pub mcumgr: String,
    /// Its console's UNIX socket.
    pub console: String,
    /// Its console's log.
    pub console_log: String,
    /// Times the supervisor restarted it.
    pub restarts: u64,
    /// Times its QEMU exited.
    pub exits: u64,
    /// Its interfaces, `ivnet0` first.
    pub interfaces: Vec<IfaceStatus>,
}

/// One interface of a cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IfaceStatus {
    /// Its name in the cell (`ivnet0`, ...).
    pub name: String,
    /// The index of its link.
    pub link: usize,
    /// Its MAC.
    pub mac: String,
    /// Static or DHCP.
    pub addressing: Addressing,
    /// Its IPv4 address and prefix, when known.
    pub address: Option<String>,
    /// Its IPv6 address and prefix.
    pub address6: Option<String>,
}

/// Frames and bytes one end sent over a link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    /// The sender: a cell, `host`, or `slotN` when the host could not tell.
    pub from: String,
    /// The receiver.
    pub to: String,
    /// Frames.
    pub frames: u64,
    /// Bytes.
    pub bytes: u64,
}

/// What the host reads from a cell<->cell link's memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    /// State word changes seen.
    pub state_changes: u64,
    /// The last state words seen, per slot.
    pub states: [u32; 2],
}

/// One link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkStatus {
    /// Its index in the topology.
    pub index: usize,
    /// `end0-end1`.
    pub name: String,
    /// Its ends' names (`host` or a cell).
    pub ends: [String; 2],
    /// Its shared memory's size.
    pub size: usize,
    /// Its ivshmem server's socket.
    pub socket: String,
    /// Its IPv4 subnet, on a routed link.
    pub subnet: Option<String>,
    /// Its IPv6 /64, on a routed link.
    pub subnet6: Option<String>,
    /// The host peer's TAP (links to the host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    /// In words: the host end's state, or what the host can tell of a cell<->cell link.
    pub state: String,
    /// Whether it carries frames.
    pub up: bool,
    /// The host peer's counters (links to the host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters: Option<Stats>,
    /// Frames and bytes by direction, when the host knows them.
    #[serde(default)]
    pub flows: Vec<Flow>,
    /// What the host reads from a cell<->cell link's memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<Observed>,
    /// The pcap file of the `ivnet capture` that runs on the link, if one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<String>,
}

impl LinkStatus {
    /// State changes: the host peer's, or those seen in a cell<->cell link's memory.
    pub fn state_changes(&self) -> Option<u64> {
        self.counters
            .map(|c| c.state_changes)
            .or(self.observed.as_ref().map(|o| o.state_changes))
    }
}

fn or_none(v: &Option<impl std::fmt::Display>) -> String {
    v.as_ref().map_or("none".to_string(), |x| x.to_string())
}

impl Status {
    /// The status for people, as `ivnet status` prints it.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let h = &self.host;
        let _ = writeln!(
            o,
            "network {} (supervisor pid {}, up {} s), metrics {}",
            self.network, self.supervisor_pid, self.uptime_s, self.metrics
        );
        let six = match (&h.address6, &h.subnet6) {
            (Some(a), s) => format!(" and {a} ({})", s.as_deref().unwrap_or_default()),
            _ => String::new(),
        };
        let _ = writeln!(
            o,
            "  host: bridge {} at {} ({}){six}, dnsmasq pid {}",
            h.bridge,
            h.address,
            h.subnet,
            or_none(&h.dnsmasq_pid)
        );
        if let Some(iso) = &h.isolation {
            let _ = writeln!(
                o,
                "  isolation: cgroup v{} {} ({}), {} processes",
                iso.cgroup_version,
                iso.group,
                iso.settings.join(" "),
                iso.pids.len()
            );
        }
        for c in &self.cells {
            let _ = writeln!(
                o,
                "  cell {:<10} {:<8} {:<15}{} pid {} restarts {}",
                c.name,
                if c.running { "running" } else { "DOWN" },
                c.address.as_deref().unwrap_or("(no lease yet)"),
                c.address6
                    .as_deref()
                    .map(|a| format!(" {a:<24}"))
                    .unwrap_or_default(),
                or_none(&c.pid),
                c.restarts
            );
        }
        for l in &self.links {
            let detail = match &l.counters {
                Some(c) => format!(
                    "tx {} frames/{} B, rx {} frames/{} B, ring full {}, drops {}",
                    c.tx_frames, c.tx_bytes, c.rx_frames, c.rx_bytes, c.ring_full, c.rx_dropped
                ),
                None => l
                    .flows
                    .iter()
                    .map(|f| format!("{}->{} {} frames/{} B", f.from, f.to, f.frames, f.bytes))
                    .collect::<Vec<_>>()
                    .join(", "),
            };
            let capture = l
                .capture
                .as_deref()
                .map(|f| format!(" (capturing into {f})"))
                .unwrap_or_default();
            let _ = writeln!(o, "  link {:<16} {:<14} {detail}{capture}", l.name, l.state);
        }
        o
    }

    /// Prints [`Status::render`] to stdout.
    pub fn print(&self) {
        print!("{}", self.render());
    }

    /// An Ansible dynamic inventory: `--list` (all groups and host variables).
    pub fn inventory_list(&self) -> Value {
        let names: Vec<&str> = self.cells.iter().map(|c| c.name.as_str()).collect();
        let hostvars: serde_json::Map<String, Value> = self
            .cells
            .iter()
            .map(|c| (c.name.clone(), c.inventory_host()))
            .collect();
        json!({
            "all": { "children": ["ungrouped", "ivnet_cells", &self.network] },
            "ivnet_cells": { "hosts": names },
            &self.network: { "hosts": names },
            "_meta": { "hostvars": hostvars },
        })
    }

    /// The cell named `name`.
    pub fn cell(&self, name: &str) -> Option<&CellStatus> {
        self.cells.iter().find(|c| c.name == name)
    }
}

impl CellStatus {
    /// The cell's Ansible host variables (`ivnet inventory --host NAME`).
    pub fn inventory_host(&self) -> Value {
        json!({
            "ansible_host": self.address,
            // Cells run no SSH or Python: their tasks run on the ivnet host (and reach the
            // cell over the network), with the Python that runs Ansible.
            "ansible_connection": "local",
            "ansible_python_interpreter": "{{ ansible_playbook_python }}",
            "ivnet_running": self.running,
            "ivnet_mac": self.mac,
            "ivnet_console": self.console,
            "ivnet_mcumgr_port": MCUMGR_PORT,
            "ivnet_services": self.services,
            "ivnet_interfaces": self.interfaces,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A network of one cell with a link to the host and one cell<->cell link.
    pub(crate) fn sample() -> Status {
        let counters = Stats {
            tx_frames: 5,
            rx_frames: 7,
            tx_bytes: 500,
            rx_bytes: 700,
            runts_dropped: 1,
            ring_full: 2,
            doorbells: 9,
            state_changes: 3,
            ..Stats::default()
        };
        let flow = |from: &str, to: &str, frames, bytes| Flow {
            from: from.into(),
            to: to.into(),
            frames,
            bytes,
        };
        let link = |index, name: &str, ends: [&str; 2]| LinkStatus {
            index,
            name: name.into(),
            ends: ends.map(String::from),
            size: 1 << 20,
            socket: format!("/run/ivnet/ivbr0/link{index}.sock"),
            subnet: None,
            subnet6: None,
            tap: None,
            state: "Run".into(),
            up: true,
            counters: None,
            flows: vec![],
            observed: None,
            capture: None,
        };
        Status {
            network: "ivbr0".into(),
            state_dir: "/run/ivnet/ivbr0".into(),
            supervisor_pid: 42,
            uptime_s: 9,
            metrics: "http://127.0.0.1:9477/metrics".into(),
            host: HostStatus {
                bridge: "ivbr0".into(),
                address: "10.0.0.1".into(),
                subnet: "10.0.0.0/24".into(),
                address6: None,
                subnet6: None,
                dhcp: Some(["10.0.0.100".into(), "10.0.0.200".into()]),
                uplink: None,
                dnsmasq_pid: Some(43),
                forwards: vec![],
                isolation: None,
            },
            cells: vec![CellStatus {
                name: "c1".into(),
                running: true,
                pid: Some(44),
                address: Some("10.0.0.100".into()),
                address6: None,
                mac: "02:00:00:00:00:01".into(),
                image: "/x/zephyr.elf".into(),
                services: vec![7],
                mcumgr: format!("udp/{MCUMGR_PORT}"),
                console: "/run/ivnet/ivbr0/c1.console".into(),
                console_log: "/run/ivnet/ivbr0/c1.console.log".into(),
                restarts: 1,
                exits: 1,
                interfaces: vec![IfaceStatus {
                    name: "ivnet0".into(),
                    link: 0,
                    mac: "02:00:00:00:00:01".into(),
                    addressing: Addressing::Dhcp,
                    address: Some("10.0.0.100/24".into()),
                    address6: None,
                }],
            }],
            links: vec![
                LinkStatus {
                    tap: Some("ivtc1".into()),
                    counters: Some(counters),
                    flows: vec![flow("host", "c1", 5, 500), flow("c1", "host", 7, 700)],
                    ..link(0, "c1-host", ["c1", "host"])
                },
                LinkStatus {
                    state: "not running".into(),
                    up: false,
                    flows: vec![flow("c1", "c2", 11, 1100), flow("c2", "c1", 0, 0)],
                    observed: Some(Observed {
                        state_changes: 4,
                        states: [3, 0],
                    }),
                    ..link(1, "c1-c2", ["c1", "c2"])
                },
            ],
        }
    }

    #[test]
    fn json_round_trips_and_leaves_out_what_a_link_kind_lacks() {
        let st = sample();
        let text = serde_json::to_string(&st).unwrap();
        assert_eq!(serde_json::from_str::<Status>(&text).unwrap(), st);
        let v: Value = serde_json::from_str(&text).unwrap();
        assert!(v["links"][1].get("counters").is_none());
        assert!(v["links"][1].get("tap").is_none());
        assert!(v["links"][0].get("observed").is_none());
        assert_eq!(v["links"][0]["counters"]["runts_dropped"], 1);
        assert_eq!(v["cells"][0]["interfaces"][0]["addressing"], "dhcp");
        assert!(v["host"]["isolation"].is_null());
    }

    #[test]
    fn printer_and_inventory_read_the_same_fields() {
        let st = sample();
        let text = st.render();
        assert!(text.contains("dnsmasq pid 43"), "{text}");
        assert!(text.contains("tx 5 frames/500 B, rx 7 frames/700 B, ring full 2, drops 0"));
        assert!(text.contains("c1->c2 11 frames/1100 B, c2->c1 0 frames/0 B"));
        let inv = st.inventory_list();
        assert_eq!(inv["ivbr0"]["hosts"], json!(["c1"]));
        assert_eq!(inv["_meta"]["hostvars"]["c1"]["ansible_host"], "10.0.0.100");
        assert_eq!(
            st.cell("c1").unwrap().inventory_host()["ivnet_mcumgr_port"],
            MCUMGR_PORT
        );
    }
}
