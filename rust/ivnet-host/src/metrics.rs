//! Prometheus text exposition of a network's status (`GET /metrics` on the supervisor's
//! metrics address): per-link counters of the host peers, link and cell states.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;

/// (metric, counter key in the status, help, labels beyond network/link): the host peer's
/// counters of a link to the host.
const LINK_COUNTERS: &[(&str, &str, &str, &str)] = &[
    (
        "ivnet_link_drops_total",
        "rx_dropped",
        "Frames dropped: received but not delivered to the TAP, or runts not sent.",
        "reason=\"tap\"",
    ),
    (
        "ivnet_link_drops_total",
        "runts_dropped",
        "",
        "reason=\"runt\"",
    ),
    (
        "ivnet_link_ring_full_total",
        "ring_full",
        "Times a frame found the transmit ring full.",
        "",
    ),
    (
        "ivnet_link_doorbells_total",
        "doorbells",
        "Doorbells the host peer rang.",
        "",
    ),
    (
        "ivnet_link_protocol_resets_total",
        "protocol_resets",
        "Link resets because the peer broke the protocol.",
        "",
    ),
];

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn b(v: &Value) -> u8 {
    u8::from(v.as_bool().unwrap_or(false))
}

/// Renders the metrics of a network from its status JSON (as `ivnet status --json` prints).
pub fn render(status: &Value) -> String {
    let net = esc(status["network"].as_str().unwrap_or_default());
    let empty = Vec::new();
    let links = status["links"].as_array().unwrap_or(&empty);
    let cells = status["cells"].as_array().unwrap_or(&empty);
    let mut o = String::new();
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
        let _ = writeln!(o, "# HELP {metric} {help}\n# TYPE {metric} counter");
        for l in links {
            for f in l["flows"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    o,
                    "{metric}{{network=\"{net}\",link=\"{}\",from=\"{}\",to=\"{}\"}} {}",
                    esc(l["name"].as_str().unwrap_or_default()),
                    esc(f["from"].as_str().unwrap_or_default()),
                    esc(f["to"].as_str().unwrap_or_default()),
                    f[key].as_u64().unwrap_or(0)
                );
            }
        }
    }
    let _ = writeln!(
        o,
        "# HELP ivnet_link_state_changes_total Link state transitions: at the host end of a host link; seen in the shared memory (sampled) on a cell<->cell link.\n# TYPE ivnet_link_state_changes_total counter"
    );
    for l in links {
        let v = l["counters"]["state_changes"]
            .as_u64()
            .or_else(|| l["observed"]["state_changes"].as_u64());
        if let Some(v) = v {
            let _ = writeln!(
                o,
                "ivnet_link_state_changes_total{{network=\"{net}\",link=\"{}\"}} {v}",
                esc(l["name"].as_str().unwrap_or_default())
            );
        }
    }
    let mut last = "";
    for (metric, key, help, extra) in LINK_COUNTERS {
        if *metric != last {
            let _ = writeln!(o, "# HELP {metric} {help}\n# TYPE {metric} counter");
            last = metric;
        }
        for l in links {
            let Some(v) = l["counters"][*key].as_u64() else {
                continue;
            };
            let sep = if extra.is_empty() { "" } else { "," };
            let _ = writeln!(
                o,
                "{metric}{{network=\"{net}\",link=\"{}\"{sep}{extra}}} {v}",
                esc(l["name"].as_str().unwrap_or_default())
            );
        }
    }
    let _ = writeln!(
        o,
        "# HELP ivnet_link_up Whether the link runs (host links: carrier at the host end; cell links: both ends in RUN).\n# TYPE ivnet_link_up gauge"
    );
    for l in links {
        let _ = writeln!(
            o,
            "ivnet_link_up{{network=\"{net}\",link=\"{}\"}} {}",
            esc(l["name"].as_str().unwrap_or_default()),
            b(&l["up"])
        );
    }
    let _ = writeln!(
        o,
        "# HELP ivnet_cell_up Whether the cell's QEMU runs.\n# TYPE ivnet_cell_up gauge"
    );
    for c in cells {
        let _ = writeln!(
            o,
            "ivnet_cell_up{{network=\"{net}\",cell=\"{}\"}} {}",
            esc(c["name"].as_str().unwrap_or_default()),
            b(&c["running"])
        );
    }
    let _ = writeln!(
        o,
        "# HELP ivnet_cell_restarts_total Times `ivnet up` restarted the cell.\n# TYPE ivnet_cell_restarts_total counter"
    );
    for c in cells {
        let _ = writeln!(
            o,
            "ivnet_cell_restarts_total{{network=\"{net}\",cell=\"{}\"}} {}",
            esc(c["name"].as_str().unwrap_or_default()),
            c["restarts"].as_u64().unwrap_or(0)
        );
    }
    o
}

/// Answers one HTTP request on `s`: the metrics for `GET /metrics`, 404 otherwise.
pub fn respond(mut s: TcpStream, metrics: &str) -> io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
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
