//! Prometheus text exposition of a network's status (`GET /metrics` on the supervisor's
//! metrics address): per-link counters of the host peers, link and cell states.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;

/// (metric, counter key in the status, help, labels beyond network/link): the host peer's
/// counters of a link to the host. A help text is given with a family's first entry.
type LinkCounter = (
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);
const LINK_COUNTERS: &[LinkCounter] = &[
    (
        "ivnet_link_drops_total",
        "rx_dropped",
        "Frames dropped: received but not delivered to the TAP, longer than the MTU, or runts not sent.",
        &[("reason", "tap")],
    ),
    (
        "ivnet_link_drops_total",
        "runts_dropped",
        "",
        &[("reason", "runt")],
    ),
    (
        "ivnet_link_drops_total",
        "rx_oversize",
        "",
        &[("reason", "oversize")],
    ),
    (
        "ivnet_link_ring_full_total",
        "ring_full",
        "Times a frame found the transmit ring full.",
        &[],
    ),
    (
        "ivnet_link_doorbells_total",
        "doorbells",
        "Doorbells the host peer rang.",
        &[],
    ),
    (
        "ivnet_link_protocol_resets_total",
        "protocol_resets",
        "Link resets because the peer broke the protocol.",
        &[],
    ),
];

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn b(v: &Value) -> u64 {
    u64::from(v.as_bool().unwrap_or(false))
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// The text of one network's metrics.
struct Out<'a> {
    o: String,
    network: &'a str,
}

impl Out<'_> {
    /// A family's HELP and TYPE lines.
    fn family(&mut self, metric: &str, kind: &str, help: &str) {
        let _ = writeln!(self.o, "# HELP {metric} {help}\n# TYPE {metric} {kind}");
    }

    /// One sample: `metric{network="..",label="value",...} v`, label values escaped.
    fn sample(&mut self, metric: &str, labels: &[(&str, &str)], v: u64) {
        let _ = write!(self.o, "{metric}{{network=\"{}\"", esc(self.network));
        for (k, val) in labels {
            let _ = write!(self.o, ",{k}=\"{}\"", esc(val));
        }
        let _ = writeln!(self.o, "}} {v}");
    }
}

/// Renders the metrics of a network from its status JSON (as `ivnet status --json` prints).
pub fn render(status: &Value) -> String {
    let empty = Vec::new();
    let links = status["links"].as_array().unwrap_or(&empty);
    let cells = status["cells"].as_array().unwrap_or(&empty);
    let mut o = Out {
        o: String::new(),
        network: text(&status["network"]),
    };
    // Frames and bytes of every link, by direction: the host peer's counts on a link to the
    // host, what the host reads from the shared memory on a cell<->cell link.
    for (metric, key, help) in [
        (
            "ivnet_link_frames_total",
            "frames",
            "Frames sent over the link, by direction.",
        ),
        (
            "ivnet_link_bytes_total",
            "bytes",
            "Bytes sent over the link, by direction.",
        ),
    ] {
        o.family(metric, "counter", help);
        for l in links {
            for f in l["flows"].as_array().into_iter().flatten() {
                let labels = [
                    ("link", text(&l["name"])),
                    ("from", text(&f["from"])),
                    ("to", text(&f["to"])),
                ];
                o.sample(metric, &labels, f[key].as_u64().unwrap_or(0));
            }
        }
    }
    o.family(
        "ivnet_link_state_changes_total",
        "counter",
        "Link state transitions: at the host end of a host link; seen in the shared memory (sampled) on a cell<->cell link.",
    );
    for l in links {
        let v = l["counters"]["state_changes"]
            .as_u64()
            .or_else(|| l["observed"]["state_changes"].as_u64());
        if let Some(v) = v {
            o.sample(
                "ivnet_link_state_changes_total",
                &[("link", text(&l["name"]))],
                v,
            );
        }
    }
    let mut last = "";
    for (metric, key, help, extra) in LINK_COUNTERS {
        if *metric != last {
            o.family(metric, "counter", help);
            last = metric;
        }
        for l in links {
            let Some(v) = l["counters"][*key].as_u64() else {
                continue;
            };
            let labels: Vec<(&str, &str)> = [("link", text(&l["name"]))]
                .into_iter()
                .chain(extra.iter().copied())
                .collect();
            o.sample(metric, &labels, v);
        }
    }
    o.family(
        "ivnet_link_up",
        "gauge",
        "Whether the link runs (host links: carrier at the host end; cell links: both ends in RUN).",
    );
    for l in links {
        o.sample("ivnet_link_up", &[("link", text(&l["name"]))], b(&l["up"]));
    }
    o.family("ivnet_cell_up", "gauge", "Whether the cell's QEMU runs.");
    for c in cells {
        o.sample(
            "ivnet_cell_up",
            &[("cell", text(&c["name"]))],
            b(&c["running"]),
        );
    }
    o.family(
        "ivnet_cell_restarts_total",
        "counter",
        "Times `ivnet up` restarted the cell.",
    );
    for c in cells {
        let v = c["restarts"].as_u64().unwrap_or(0);
        o.sample(
            "ivnet_cell_restarts_total",
            &[("cell", text(&c["name"]))],
            v,
        );
    }
    o.o
}

/// Answers one HTTP request on `s`: the metrics for `GET /metrics`, 404 otherwise.
pub fn respond(mut s: TcpStream, metrics: &str) -> io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 2048];
    let n = s.read(&mut buf)?;
    let req = String::from_utf8_lossy(&buf[..n]);
    let path = req.split_whitespace().nth(1).unwrap_or("");
    let (status, body) = if req.starts_with("GET ") && (path == "/metrics" || path == "/") {
        ("200 OK", metrics)
    } else {
        ("404 Not Found", "not found: try /metrics\n")
    };
    write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_counters_and_states() {
        let st = json!({
            "network": "ivbr0",
            "links": [
                {"name": "c1-host", "up": true, "counters": {"tx_frames": 5, "rx_frames": 7, "tx_bytes": 500, "rx_bytes": 700, "rx_dropped": 0, "runts_dropped": 1, "ring_full": 2, "doorbells": 9, "state_changes": 3, "protocol_resets": 0},
                 "flows": [{"from": "host", "to": "c1", "frames": 5, "bytes": 500}, {"from": "c1", "to": "host", "frames": 7, "bytes": 700}]},
                {"name": "c1-c2", "up": false, "observed": {"state_changes": 4},
                 "flows": [{"from": "c1", "to": "c2", "frames": 11, "bytes": 1100}, {"from": "c2", "to": "c1", "frames": 0, "bytes": 0}]}
            ],
            "cells": [{"name": "c1", "running": true, "restarts": 1}]
        });
        let m = render(&st);
        let has = |line: &str| assert!(m.contains(line), "{line} missing in:\n{m}");
        has(
            "ivnet_link_frames_total{network=\"ivbr0\",link=\"c1-host\",from=\"c1\",to=\"host\"} 7",
        );
        has("ivnet_link_bytes_total{network=\"ivbr0\",link=\"c1-host\",from=\"host\",to=\"c1\"} 500");
        has("ivnet_link_frames_total{network=\"ivbr0\",link=\"c1-c2\",from=\"c1\",to=\"c2\"} 11");
        has("ivnet_link_bytes_total{network=\"ivbr0\",link=\"c1-c2\",from=\"c1\",to=\"c2\"} 1100");
        has("ivnet_link_state_changes_total{network=\"ivbr0\",link=\"c1-c2\"} 4");
        has("ivnet_link_state_changes_total{network=\"ivbr0\",link=\"c1-host\"} 3");
        assert!(m.contains(
            "ivnet_link_drops_total{network=\"ivbr0\",link=\"c1-host\",reason=\"runt\"} 1"
        ));
        assert!(m.contains("ivnet_link_ring_full_total{network=\"ivbr0\",link=\"c1-host\"} 2"));
        assert!(m.contains("ivnet_link_up{network=\"ivbr0\",link=\"c1-c2\"} 0"));
        assert!(m.contains("ivnet_cell_up{network=\"ivbr0\",cell=\"c1\"} 1"));
        assert!(m.contains("ivnet_cell_restarts_total{network=\"ivbr0\",cell=\"c1\"} 1"));
        // One HELP/TYPE per metric family.
        assert_eq!(m.matches("# TYPE ivnet_link_frames_total").count(), 1);
    }
}
