//! Prometheus text exposition of a network's status (`GET /metrics` on the supervisor's
//! metrics address): per-link counters of the host peers, link and cell states.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use ivnet_dataplane::link::Stats;

use crate::status::{Flow, Status};

/// A counter of the host peer's [`Stats`] for one metric family: (metric, the counter, help,
/// labels beyond network/link). A family's help text is given with its first entry.
type LinkCounter = (
    &'static str,
    fn(&Stats) -> u64,
    &'static str,
    &'static [(&'static str, &'static str)],
);
const LINK_COUNTERS: &[LinkCounter] = &[
    (
        "ivnet_link_drops_total",
        |s| s.rx_dropped,
        "Frames dropped: received but not delivered to the TAP, longer than the MTU, or runts not sent.",
        &[("reason", "tap")],
    ),
    (
        "ivnet_link_drops_total",
        |s| s.runts_dropped,
        "",
        &[("reason", "runt")],
    ),
    (
        "ivnet_link_drops_total",
        |s| s.rx_oversize,
        "",
        &[("reason", "oversize")],
    ),
    (
        "ivnet_link_ring_full_total",
        |s| s.ring_full,
        "Times a frame found the transmit ring full.",
        &[],
    ),
    (
        "ivnet_link_doorbells_total",
        |s| s.doorbells,
        "Doorbells the host peer rang.",
        &[],
    ),
    (
        "ivnet_link_protocol_resets_total",
        |s| s.protocol_resets,
        "Link resets because the peer broke the protocol.",
        &[],
    ),
];

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
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

/// Renders the metrics of a network from its status.
pub fn render(status: &Status) -> String {
    let mut o = Out {
        o: String::new(),
        network: &status.network,
    };
    // Frames and bytes of every link, by direction: the host peer's counts on a link to the
    // host, what the host reads from the shared memory on a cell<->cell link.
    type FlowCount = fn(&Flow) -> u64;
    let flow_families: [(&str, FlowCount, &str); 2] = [
        (
            "ivnet_link_frames_total",
            |f| f.frames,
            "Frames sent over the link, by direction.",
        ),
        (
            "ivnet_link_bytes_total",
            |f| f.bytes,
            "Bytes sent over the link, by direction.",
        ),
    ];
    for (metric, count, help) in flow_families {
        o.family(metric, "counter", help);
        for l in &status.links {
            for f in &l.flows {
                let labels = [("link", l.name.as_str()), ("from", &f.from), ("to", &f.to)];
                o.sample(metric, &labels, count(f));
            }
        }
    }
    o.family(
        "ivnet_link_state_changes_total",
        "counter",
        "Link state transitions: at the host end of a host link; seen in the shared memory (sampled) on a cell<->cell link.",
    );
    for l in &status.links {
        if let Some(v) = l.state_changes() {
            o.sample("ivnet_link_state_changes_total", &[("link", &l.name)], v);
        }
    }
    let mut last = "";
    for (metric, count, help, extra) in LINK_COUNTERS {
        if *metric != last {
            o.family(metric, "counter", help);
            last = metric;
        }
        for l in &status.links {
            let Some(c) = &l.counters else {
                continue;
            };
            let labels: Vec<(&str, &str)> = [("link", l.name.as_str())]
                .into_iter()
                .chain(extra.iter().copied())
                .collect();
            o.sample(metric, &labels, count(c));
        }
    }
    o.family(
        "ivnet_link_up",
        "gauge",
        "Whether the link runs (host links: carrier at the host end; cell links: both ends in RUN).",
    );
    for l in &status.links {
        o.sample("ivnet_link_up", &[("link", &l.name)], u64::from(l.up));
    }
    o.family("ivnet_cell_up", "gauge", "Whether the cell's QEMU runs.");
    for c in &status.cells {
        o.sample("ivnet_cell_up", &[("cell", &c.name)], u64::from(c.running));
    }
    o.family(
        "ivnet_cell_restarts_total",
        "counter",
        "Times `ivnet up` restarted the cell.",
    );
    for c in &status.cells {
        o.sample(
            "ivnet_cell_restarts_total",
            &[("cell", &c.name)],
            c.restarts,
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

    #[test]
    fn renders_counters_and_states() {
        let st = crate::status::tests::sample();
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
