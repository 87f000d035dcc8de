//! The supervisor's [`Status`] of its network.

use super::*;

impl Supervisor {
    /// The network's status: host, cells, links with their state and counters.
    pub fn status(&mut self) -> Status {
        let h = &self.topo.host;
        let cells = (0..self.topo.cells.len())
            .map(|i| self.cell_status(i))
            .collect();
        let links = (0..self.topo.links.len())
            .map(|i| self.link_status(i))
            .collect();
        let forwards = h
            .forwards
            .iter()
            .map(|f| st::ForwardStatus {
                port: f.port,
                proto: f.proto.clone(),
                cell: self.topo.cells[f.cell].name.clone(),
                to: f.to,
                active: self.applied_forwards.as_ref().is_some_and(|a| {
                    a.iter()
                        .any(|x| x.port == f.port && x.proto.as_str() == f.proto)
                }),
            })
            .collect();
        let isolation = self.record.isolation.as_ref().map(|g| st::IsolationStatus {
            cgroup_version: g.version,
            group: g.name.clone(),
            directories: g.made.iter().map(|m| m.dir.display().to_string()).collect(),
            settings: g.settings.iter().map(|(f, v)| format!("{f}={v}")).collect(),
            pids: g.pids(),
        });
        Status {
            network: h.bridge.clone(),
            state_dir: self.paths.dir.display().to_string(),
            supervisor_pid: std::process::id(),
            uptime_s: self.started.elapsed().as_secs(),
            metrics: format!("http://{}/metrics", self.metrics_addr),
            host: st::HostStatus {
                bridge: h.bridge.clone(),
                address: h.address.to_string(),
                subnet: format!("{}/{}", h.subnet.network, h.subnet.prefix),
                address6: h.subnet6.map(|p| topology::in6(p, 1).to_string()),
                subnet6: h.subnet6.map(|p| format!("{p}/64")),
                dhcp: h.dhcp.map(|(a, b)| [a.to_string(), b.to_string()]),
                uplink: h.uplink.clone(),
                dnsmasq_pid: self.dnsmasq.as_ref().map(|c| c.id()),
                forwards,
                isolation,
            },
            cells,
            links,
        }
    }

    /// The name of link `i` as the status shows it (`c1-host`).
    pub(super) fn link_name(&self, i: usize) -> String {
        let e = self.topo.links[i].ends.map(|e| self.end_name(e));
        format!("{}-{}", e[0], e[1])
    }

    fn end_name(&self, e: End) -> String {
        match e {
            End::Host => "host".to_string(),
            End::Cell(i) => self.topo.cells[i].name.clone(),
        }
    }

    fn cell_status(&self, i: usize) -> st::CellStatus {
        let c = &self.topo.cells[i];
        let h = &self.topo.host;
        let proc_ = &self.cells[i];
        let interfaces = self
            .topo
            .cell_ifaces(i)
            .iter()
            .enumerate()
            .map(|(k, f)| st::IfaceStatus {
                name: format!("ivnet{k}"),
                link: f.link,
                mac: f.mac.to_string(),
                addressing: if f.address.is_some() {
                    st::Addressing::Static
                } else {
                    st::Addressing::Dhcp
                },
                address: match f.address {
                    Some((a, p)) => Some(format!("{a}/{p}")),
                    None => self
                        .leases
                        .get(&f.mac)
                        .map(|a| format!("{a}/{}", h.subnet.prefix)),
                },
                address6: f.address6.map(|a| format!("{a}/64")),
            })
            .collect();
        let pid = proc_.child.as_ref().map(|c| c.id());
        st::CellStatus {
            name: c.name.clone(),
            running: pid.is_some(),
            pid,
            address: self.cell_address(i).map(|a| a.to_string()),
            address6: self.topo.cell_address6(i).map(|a| a.to_string()),
            mac: c.mac.to_string(),
            image: c.image.display().to_string(),
            services: c.services.clone(),
            mcumgr: format!("udp/{MCUMGR_PORT}"),
            console: self.paths.console(&c.name).display().to_string(),
            console_log: self.paths.console_log(&c.name).display().to_string(),
            restarts: proc_.restarts,
            exits: proc_.exits,
            interfaces,
        }
    }

    fn link_status(&self, i: usize) -> st::LinkStatus {
        let l = &self.topo.links[i];
        let ends = l.ends.map(|e| self.end_name(e));
        let mut v = st::LinkStatus {
            index: i,
            name: self.link_name(i),
            ends: ends.clone(),
            size: l.size,
            socket: self.paths.link(i).display().to_string(),
            subnet: l.subnet.map(|s| format!("{}/{}", s.network, s.prefix)),
            subnet6: l.subnet6.map(|p| format!("{p}/64")),
            tap: None,
            state: String::new(),
            up: false,
            counters: None,
            flows: Vec::new(),
            observed: None,
            capture: self
                .captures
                .iter()
                .find(|c| c.link == i)
                .map(|c| c.file.display().to_string()),
        };
        let flow = |from: &str, to: &str, frames, bytes| st::Flow {
            from: from.to_string(),
            to: to.to_string(),
            frames,
            bytes,
        };
        if let (Some(p), Some(c)) = (self.peers.get(&i), host_link_cell(l.ends)) {
            let g = p.view.lock().unwrap().clone();
            let s = g.stats;
            let cell = &self.topo.cells[c].name;
            v.tap = Some(tap_name(cell));
            v.state = g.state;
            v.up = g.carrier;
            v.counters = Some(s);
            v.flows = vec![
                flow("host", cell, s.tx_frames, s.tx_bytes),
                flow(cell, "host", s.rx_frames, s.rx_bytes),
            ];
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
            v.flows = (0..2)
                .map(|slot| {
                    let from = who(slot);
                    // Named only when the sender was recognised; else by slot.
                    let to = if ends.contains(&from) {
                        ends.iter()
                            .find(|n| **n != from)
                            .cloned()
                            .unwrap_or_default()
                    } else {
                        format!("slot{}", 1 - slot)
                    };
                    flow(&from, &to, c.sent[slot].frames, c.sent[slot].bytes)
                })
                .collect();
            v.up = c.states == [3, 3];
            v.state = if v.up { "Run" } else { "not running" }.to_string();
            v.observed = Some(st::Observed {
                state_changes: c.state_changes,
                states: c.states,
            });
        } else {
            // A cell<->cell link: the host is not in its data path; both cells running
            // is what the host can tell (their counters: MCUmgr stats / `net stats`).
            v.up = l.ends.iter().all(|e| match e {
                End::Cell(c) => self.cells[*c].child.is_some(),
                End::Host => false,
            });
            v.state = if v.up {
                "cells running"
            } else {
                "a cell is down"
            }
            .to_string();
        }
        v
    }
}

pub(super) fn host_link_cell(ends: [End; 2]) -> Option<usize> {
    match ends {
        [End::Cell(c), End::Host] | [End::Host, End::Cell(c)] => Some(c),
        _ => None,
    }
}
