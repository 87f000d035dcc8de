//! One nftables table per network: NAT to an uplink and port forwards to cells.
//!
//! The table is written as a document of nft's JSON API (`libnftables-json(5)`), built with
//! `serde_json` and fed to `nft -j -f -` on its standard input, so that no rule text is ever
//! pieced together from strings and the whole replacement is one transaction: either the new
//! table is in place or the old one is untouched. `nft` runs in the network namespace of the
//! calling thread (a child process inherits the namespaces of the thread that forks it), which
//! the tests use to work in namespaces of their own.
//!
//! The table (family `ip`, see [`FAMILY`]) of a [`NatConfig`] has four base chains, and when
//! the network has IPv6 (`subnet6`) a table of the same name in family `ip6` has the same four
//! with the same rules for IPv6 (NAT66 to the uplink, forwards to the cells' IPv6 addresses);
//! both are replaced in one transaction:
//!
//! - `prerouting` (nat, priority dstnat): for each [`Forward`], a connection arriving on any
//!   interface for one of the host's own addresses (`fib daddr type local`) on the forwarded
//!   port is DNATed to the cell. That includes connections from other hosts or namespaces, and
//!   from the cells themselves to the bridge's address (hairpin: while `br_netfilter` is active,
//!   the default, this also needs the hairpin mode of the cell's bridge port, see
//!   [`crate::netcfg::set_hairpin`]).
//! - `output` (nat, priority -100): the same DNAT for connections the host itself opens to one
//!   of its own addresses, except loopback ones (127.0.0.0/8: a packet from 127.0.0.1 cannot be
//!   routed out to a cell without `route_localnet`), so `curl http://<host address>:<port>`
//!   works on the host but `curl localhost:<port>` does not.
//! - `postrouting` (nat, priority srcnat): masquerade of the subnet's traffic leaving through the
//!   uplink (if there is one); and masquerade of forwarded connections going to the bridge when
//!   their source is in the subnet (hairpin) or is one of the host's own addresses, so that the
//!   cell's replies come back through the host. Connections from elsewhere keep their source
//!   address (the cell answers through its default route, the host).
//! - `forward` (filter, policy accept): accepts bridge -> uplink, uplink -> bridge and DNATed
//!   traffic. With policy accept this only counts and documents; another table's drop (e.g. a
//!   host firewall with a drop policy on forward) still applies.

use std::fmt;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::{Command, Stdio};
use std::str::FromStr;

use serde_json::{json, Value};

/// The nftables family of the tables made here (the IPv4 one; the IPv6 one is [`FAMILY6`]).
pub const FAMILY: &str = "ip";
/// The family of a network's IPv6 table (same name as its IPv4 one).
pub const FAMILY6: &str = "ip6";

/// The transport protocol of a [`Forward`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// The protocol's name in nft (`tcp` or `udp`).
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Proto {
    type Err = io::Error;

    /// `tcp` or `udp`, in any case.
    fn from_str(s: &str) -> io::Result<Proto> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("protocol {s:?} is neither tcp nor udp"),
            )),
        }
    }
}

/// A port of the host forwarded to a cell: `port`/`proto` on the host's addresses goes to
/// `to_addr:to_port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// The host's port.
    pub port: u16,
    /// TCP or UDP.
    pub proto: Proto,
    /// The cell's address.
    pub to_addr: Ipv4Addr,
    /// The cell's IPv6 address, if the network has IPv6.
    pub to_addr6: Option<Ipv6Addr>,
    /// The cell's port.
    pub to_port: u16,
}

/// What the table of one network holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatConfig {
    /// The table's name (in family [`FAMILY`]); [`table_name`] gives the usual one.
    pub table: String,
    /// The bridge the cells are on.
    pub bridge: String,
    /// The cells' subnet, as an address in it and a prefix length.
    pub subnet: (Ipv4Addr, u8),
    /// The cells' IPv6 /64 (its network address), if the network has IPv6.
    pub subnet6: Option<Ipv6Addr>,
    /// The interface to masquerade the subnet's outgoing traffic through, if any.
    pub uplink: Option<String>,
    /// Ports of the host forwarded to cells.
    pub forwards: Vec<Forward>,
}

/// The usual table name of the network on bridge `bridge`: `ivnet_<bridge>`.
pub fn table_name(bridge: &str) -> String {
    format!("ivnet_{bridge}")
}

fn meta(key: &str, value: &str) -> Value {
    json!({"match": {"op": "==", "left": {"meta": {"key": key}}, "right": value}})
}

fn fib_local(which: &str) -> Value {
    json!({"match": {"op": "==", "left": {"fib": {"result": "type", "flags": [which]}}, "right": "local"}})
}

fn ip_in(field: &str, op: &str, (addr, len): (IpAddr, u8)) -> Value {
    let proto = if addr.is_ipv4() { "ip" } else { "ip6" };
    json!({"match": {"op": op, "left": {"payload": {"protocol": proto, "field": field}},
        "right": {"prefix": {"addr": addr.to_string(), "len": len}}}})
}

fn dport(proto: Proto, port: u16) -> Value {
    json!({"match": {"op": "==", "left": {"payload": {"protocol": proto.as_str(), "field": "dport"}}, "right": port}})
}

fn ct_dnat() -> Value {
    json!({"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}})
}

fn counter() -> Value {
    json!({"counter": null})
}

/// The JSON document that [`apply`] feeds to `nft -j -f -`: in one transaction, each table
/// (the IPv4 one, and the IPv6 one when the network has IPv6) is deleted if present (an `add`
/// then a `delete`, which nft 1.0.6 accepts whether or not it existed) and made anew with its
/// chains and rules.
pub fn ruleset(cfg: &NatConfig) -> io::Result<Value> {
    let (addr, len) = cfg.subnet;
    if len > 32 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "nft table {}: subnet {addr}/{len}: prefix longer than 32",
                cfg.table
            ),
        ));
    }
    // nft wants the network address, not any address in the subnet.
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    let subnet = (IpAddr::V4(Ipv4Addr::from(u32::from(addr) & mask)), len);
    let mut cmds = vec![json!({"metainfo": {"json_schema_version": 1}})];
    let v4: Vec<(Proto, u16, IpAddr, u16)> = cfg
        .forwards
        .iter()
        .map(|f| (f.proto, f.port, IpAddr::V4(f.to_addr), f.to_port))
        .collect();
    table_rules(
        &mut cmds,
        cfg,
        FAMILY,
        subnet,
        (IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8),
        &v4,
    );
    if let Some(p6) = cfg.subnet6 {
        let net6 = Ipv6Addr::from(u128::from(p6) & !((1u128 << 64) - 1));
        let v6: Vec<(Proto, u16, IpAddr, u16)> = cfg
            .forwards
            .iter()
            .filter_map(|f| Some((f.proto, f.port, IpAddr::V6(f.to_addr6?), f.to_port)))
            .collect();
        table_rules(
            &mut cmds,
            cfg,
            FAMILY6,
            (IpAddr::V6(net6), 64),
            (IpAddr::V6(Ipv6Addr::LOCALHOST), 128),
            &v6,
        );
    }
    Ok(json!({ "nftables": cmds }))
}

/// The commands that make table `cfg.table` of `family` anew: `subnet` is the cells' network,
/// `loopback` the host's loopback network in that family, `forwards` (protocol, host port, cell
/// address, cell port).
fn table_rules(
    cmds: &mut Vec<Value>,
    cfg: &NatConfig,
    family: &str,
    subnet: (IpAddr, u8),
    loopback: (IpAddr, u8),
    forwards: &[(Proto, u16, IpAddr, u16)],
) {
    let table = json!({"family": family, "name": cfg.table});
    let chain = |name: &str, kind: &str, hook: &str, prio: i32| {
        json!({"add": {"chain": {"family": family, "table": cfg.table, "name": name,
            "type": kind, "hook": hook, "prio": prio, "policy": "accept"}}})
    };
    let rule = |chain: &str, expr: Vec<Value>| json!({"add": {"rule": {"family": family, "table": cfg.table, "chain": chain, "expr": expr}}});

    cmds.extend([
        json!({"add": {"table": table}}),
        json!({"delete": {"table": table}}),
        json!({"add": {"table": table}}),
        chain("prerouting", "nat", "prerouting", -100),
        chain("output", "nat", "output", -100),
        chain("postrouting", "nat", "postrouting", 100),
        chain("forward", "filter", "forward", 0),
    ]);
    for &(proto, port, to_addr, to_port) in forwards {
        let dnat = json!({"dnat": {"addr": to_addr.to_string(), "port": to_port}});
        cmds.push(rule(
            "prerouting",
            vec![
                fib_local("daddr"),
                dport(proto, port),
                counter(),
                dnat.clone(),
            ],
        ));
        cmds.push(rule(
            "output",
            vec![
                ip_in("daddr", "!=", loopback),
                fib_local("daddr"),
                dport(proto, port),
                counter(),
                dnat,
            ],
        ));
    }
    if let Some(up) = &cfg.uplink {
        cmds.push(rule(
            "postrouting",
            vec![
                ip_in("saddr", "==", subnet),
                meta("oifname", up),
                counter(),
                json!({"masquerade": null}),
            ],
        ));
    }
    if !forwards.is_empty() {
        // Hairpin: a cell reaching a forward through the host's address.
        cmds.push(rule(
            "postrouting",
            vec![
                meta("oifname", &cfg.bridge),
                ct_dnat(),
                ip_in("saddr", "==", subnet),
                counter(),
                json!({"masquerade": null}),
            ],
        ));
        // The host itself reaching a forward through one of its own addresses.
        cmds.push(rule(
            "postrouting",
            vec![
                meta("oifname", &cfg.bridge),
                ct_dnat(),
                fib_local("saddr"),
                counter(),
                json!({"masquerade": null}),
            ],
        ));
    }
    if let Some(up) = &cfg.uplink {
        cmds.push(rule(
            "forward",
            vec![
                meta("iifname", &cfg.bridge),
                meta("oifname", up),
                counter(),
                json!({"accept": null}),
            ],
        ));
        cmds.push(rule(
            "forward",
            vec![
                meta("iifname", up),
                meta("oifname", &cfg.bridge),
                counter(),
                json!({"accept": null}),
            ],
        ));
    }
    cmds.push(rule(
        "forward",
        vec![ct_dnat(), counter(), json!({"accept": null})],
    ));
}

/// Runs `nft` with `args`, `input` on its standard input; returns its standard output. An
/// error names `what` and carries nft's standard error.
fn run_nft(what: &str, args: &[&str], input: Option<&Value>) -> io::Result<Vec<u8>> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("{what}: run nft: {e}")))?;
    if let Some(doc) = input {
        let mut stdin = child.stdin.take().expect("piped stdin");
        let text = serde_json::to_vec(doc)?;
        // nft reads the whole document before it answers, so writing before reading its
        // (small) output cannot deadlock.
        if let Err(e) = stdin.write_all(&text) {
            drop(stdin);
            let _ = child.kill();
            let _ = child.wait(); // no zombie left in a long-lived supervisor
            return Err(io::Error::new(
                e.kind(),
                format!("{what}: write to nft: {e}"),
            ));
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| io::Error::new(e.kind(), format!("{what}: wait for nft: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let err = err.trim();
        let kind = if err.contains("Operation not permitted") {
            io::ErrorKind::PermissionDenied
        } else {
            io::ErrorKind::Other
        };
        return Err(io::Error::new(
            kind,
            format!(
                "{what}: nft {}: {}",
                out.status,
                if err.is_empty() { "(no message)" } else { err }
            ),
        ));
    }
    Ok(out.stdout)
}

/// Replaces (or creates) the table of `cfg` in one nft transaction: if nft fails, the table
/// that was there (if any) is left as it was.
pub fn apply(cfg: &NatConfig) -> io::Result<()> {
    let doc = ruleset(cfg)?;
    run_nft(
        &format!("nft table {}: apply", cfg.table),
        &["-j", "-f", "-"],
        Some(&doc),
    )?;
    Ok(())
}

/// Deletes table `table` of families [`FAMILY`] and [`FAMILY6`]; `Ok(())` if there is none.
/// One transaction per family: the IPv4 table goes even where the IPv6 one cannot be touched.
pub fn delete(table: &str) -> io::Result<()> {
    let mut result = Ok(());
    for family in [FAMILY, FAMILY6] {
        let t = json!({"family": family, "name": table});
        let doc = json!({"nftables": [
            {"metainfo": {"json_schema_version": 1}},
            {"add": {"table": t}},
            {"delete": {"table": t}},
        ]});
        if let Err(e) = run_nft(
            &format!("nft table {family} {table}: delete"),
            &["-j", "-f", "-"],
            Some(&doc),
        ) {
            if result.is_ok() {
                result = Err(e);
            }
        }
    }
    result
}

/// The (family, name) of every nftables table in the calling thread's network namespace.
fn tables() -> io::Result<Vec<(String, String)>> {
    let out = run_nft("nft tables: list", &["-j", "list", "tables"], None)?;
    let doc: Value = serde_json::from_slice(&out).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("nft tables: list: bad JSON from nft: {e}"),
        )
    })?;
    let items = doc["nftables"].as_array().cloned().unwrap_or_default();
    Ok(items
        .iter()
        .filter_map(|i| {
            let t = i.get("table")?;
            Some((
                t["family"].as_str()?.to_string(),
                t["name"].as_str()?.to_string(),
            ))
        })
        .collect())
}

/// Whether table `table` of family [`FAMILY`] exists.
pub fn exists(table: &str) -> io::Result<bool> {
    Ok(tables()?
        .iter()
        .any(|(family, name)| family == FAMILY && name == table))
}

/// The names of all nftables tables, of every family (for a "left nothing behind" check).
pub fn list_tables() -> io::Result<Vec<String>> {
    Ok(tables()?.into_iter().map(|(_, name)| name).collect())
}

#[cfg(test)]
mod tests;
