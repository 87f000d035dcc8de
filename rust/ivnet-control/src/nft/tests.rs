//! Unit tests of [`super`].

use super::*;
use crate::netcfg::testutil::{in_netns, skip_unless_root};

fn config() -> NatConfig {
    NatConfig {
        table: table_name("ivtbr0"),
        bridge: "ivtbr0".into(),
        subnet: (Ipv4Addr::new(10, 99, 0, 1), 24),
        subnet6: Some("fd00:99::".parse().unwrap()),
        uplink: Some("ivtup0".into()),
        forwards: vec![
            Forward {
                port: 18080,
                proto: Proto::Tcp,
                to_addr: Ipv4Addr::new(10, 99, 0, 2),
                to_addr6: Some("fd00:99::2".parse().unwrap()),
                to_port: 80,
            },
            Forward {
                port: 15353,
                proto: Proto::Udp,
                to_addr: Ipv4Addr::new(10, 99, 0, 3),
                to_addr6: None,
                to_port: 53,
            },
        ],
    }
}

/// (name, hook) of each chain.
type Chains = Vec<(String, String)>;
/// (chain, expressions) of each rule.
type Rules = Vec<(String, Value)>;

/// The chains and the rules of `table`, from `nft -j list table`.
fn listing(table: &str) -> (Chains, Rules) {
    listing_of(FAMILY, table)
}

/// The same for the table of `family`.
fn listing_of(family: &str, table: &str) -> (Chains, Rules) {
    let out = run_nft("test", &["-j", "list", "table", family, table], None).unwrap();
    let doc: Value = serde_json::from_slice(&out).unwrap();
    let mut chains = Vec::new();
    let mut rules = Vec::new();
    for item in doc["nftables"].as_array().unwrap() {
        if let Some(c) = item.get("chain") {
            chains.push((
                c["name"].as_str().unwrap().into(),
                c["hook"].as_str().unwrap().into(),
            ));
        }
        if let Some(r) = item.get("rule") {
            rules.push((r["chain"].as_str().unwrap().into(), r["expr"].clone()));
        }
    }
    (chains, rules)
}

#[test]
fn proto_parses() {
    assert_eq!("TCP".parse::<Proto>().unwrap(), Proto::Tcp);
    assert_eq!("udp".parse::<Proto>().unwrap(), Proto::Udp);
    assert!("sctp".parse::<Proto>().is_err());
}

#[test]
fn ruleset_document() {
    let doc = ruleset(&config()).unwrap();
    let cmds = doc["nftables"].as_array().unwrap();
    assert_eq!(
        cmds[1],
        json!({"add": {"table": {"family": "ip", "name": "ivnet_ivtbr0"}}})
    );
    assert_eq!(
        cmds[2],
        json!({"delete": {"table": {"family": "ip", "name": "ivnet_ivtbr0"}}})
    );
    let text = doc.to_string();
    // The subnet is written as its network address.
    assert!(text.contains(r#"{"addr":"10.99.0.0","len":24}"#), "{text}");
    assert!(!text.contains("10.99.0.1"), "{text}");
    // The IPv6 table: same name, family ip6, its /64 and the forward that has an IPv6 end.
    assert!(cmds.contains(&json!({"add": {"table": {"family": "ip6", "name": "ivnet_ivtbr0"}}})));
    assert!(text.contains(r#"{"addr":"fd00:99::","len":64}"#), "{text}");
    assert!(
        text.contains(r#"{"dnat":{"addr":"fd00:99::2","port":80}}"#),
        "{text}"
    );
    let v4_only = NatConfig {
        subnet6: None,
        ..config()
    };
    let text = ruleset(&v4_only).unwrap().to_string();
    assert!(!text.contains("ip6") && !text.contains("fd00"), "{text}");
    let no_uplink = NatConfig {
        uplink: None,
        forwards: vec![],
        ..config()
    };
    let text = ruleset(&no_uplink).unwrap().to_string();
    assert!(
        !text.contains("masquerade") && !text.contains("ivtup0"),
        "{text}"
    );
    let bad = NatConfig {
        subnet: (Ipv4Addr::UNSPECIFIED, 33),
        ..config()
    };
    assert!(ruleset(&bad).is_err());
}

#[test]
fn apply_list_delete_in_netns() {
    if skip_unless_root("apply_list_delete_in_netns") {
        return;
    }
    let cfg = config();
    let host_had_it = exists(&cfg.table).unwrap();
    let c = cfg.clone();
    in_netns(move || {
        assert!(!exists(&c.table).unwrap());
        apply(&c).unwrap();
        assert!(exists(&c.table).unwrap());
        // One per family, of the same name.
        assert_eq!(
            list_tables().unwrap(),
            vec![c.table.clone(), c.table.clone()]
        );
        let (chains6, rules6) = listing_of(FAMILY6, &c.table);
        assert_eq!(chains6.len(), 4);
        let pre6: Vec<&Value> = rules6
            .iter()
            .filter(|(ch, _)| ch == "prerouting")
            .map(|(_, e)| e)
            .collect();
        assert_eq!(pre6.len(), 1, "{pre6:?}");
        assert!(
            pre6[0]
                .as_array()
                .unwrap()
                .contains(&json!({"dnat": {"addr": "fd00:99::2", "port": 80}})),
            "{pre6:?}"
        );
        let subnet6 = ip_in("saddr", "==", ("fd00:99::".parse().unwrap(), 64));
        assert!(
            rules6.iter().any(|(ch, e)| ch == "postrouting"
                && e.as_array().unwrap().contains(&subnet6)
                && e.as_array().unwrap().contains(&meta("oifname", "ivtup0"))),
            "{rules6:?}"
        );
        let (chains, rules) = listing(&c.table);
        let mut hooks: Vec<_> = chains.iter().map(|(n, h)| format!("{n}:{h}")).collect();
        hooks.sort();
        assert_eq!(
            hooks,
            [
                "forward:forward",
                "output:output",
                "postrouting:postrouting",
                "prerouting:prerouting"
            ]
        );
        let in_chain = |ch: &str| -> Vec<Vec<Value>> {
            rules
                .iter()
                .filter(|(c, _)| c == ch)
                .map(|(_, e)| e.as_array().unwrap().clone())
                .collect()
        };
        let pre = in_chain("prerouting");
        assert_eq!(pre.len(), 2, "{pre:?}");
        assert!(
            pre[0].contains(&json!({"dnat": {"addr": "10.99.0.2", "port": 80}})),
            "{pre:?}"
        );
        assert!(pre[0].contains(&dport(Proto::Tcp, 18080)), "{pre:?}");
        assert!(pre[0].contains(&fib_local("daddr")), "{pre:?}");
        assert!(
            pre[1].contains(&json!({"dnat": {"addr": "10.99.0.3", "port": 53}})),
            "{pre:?}"
        );
        assert!(pre[1].contains(&dport(Proto::Udp, 15353)), "{pre:?}");
        let out = in_chain("output");
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(
            out[0].contains(&json!({"dnat": {"addr": "10.99.0.2", "port": 80}})),
            "{out:?}"
        );
        let masq = json!({"masquerade": null});
        let post = in_chain("postrouting");
        assert_eq!(post.len(), 3, "{post:?}");
        assert!(
            post[0].contains(&meta("oifname", "ivtup0")) && post[0].contains(&masq),
            "{post:?}"
        );
        let subnet = ip_in("saddr", "==", (IpAddr::V4(Ipv4Addr::new(10, 99, 0, 0)), 24));
        assert!(post[0].contains(&subnet), "{post:?}");
        assert!(
            post[1].contains(&ct_dnat()) && post[1].contains(&subnet),
            "{post:?}"
        );
        assert!(
            post[2].contains(&ct_dnat()) && post[2].contains(&fib_local("saddr")),
            "{post:?}"
        );
        let fwd = in_chain("forward");
        assert_eq!(fwd.len(), 3, "{fwd:?}");
        assert!(
            fwd[0].contains(&meta("iifname", "ivtbr0"))
                && fwd[0].contains(&meta("oifname", "ivtup0")),
            "{fwd:?}"
        );

        // Applying again replaces the table: same content, not twice the rules.
        apply(&c).unwrap();
        let (chains2, rules2) = listing(&c.table);
        assert_eq!(chains2.len(), 4);
        assert_eq!(rules2.len(), rules.len());

        // A failing apply leaves the previous table as it was (one transaction), and the
        // error names the table and carries nft's message.
        let bad = NatConfig {
            bridge: "a-name-far-too-long-for-an-interface".into(),
            ..c.clone()
        };
        let e = apply(&bad).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("nft table ivnet_ivtbr0: apply: nft exit status: 1: "),
            "{msg}"
        );
        assert_eq!(listing(&c.table).1.len(), rules.len());

        delete(&c.table).unwrap();
        assert!(!exists(&c.table).unwrap());
        delete(&c.table).unwrap(); // absent: Ok
        assert!(list_tables().unwrap().is_empty());
    });
    // Everything happened in the test's namespace: the host's tables are as they were.
    assert_eq!(exists(&cfg.table).unwrap(), host_had_it);
}

/// Connects over TCP to `to` and reads what the server says (the address it saw us from).
fn tcp_ask(to: &str) -> io::Result<String> {
    use std::io::Read;
    let to: std::net::SocketAddr = to.parse().unwrap();
    let mut s = std::net::TcpStream::connect_timeout(&to, std::time::Duration::from_secs(5))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    Ok(answer)
}

/// Sends a UDP datagram to `to` and returns the answer (the address the server saw).
fn udp_ask(to: &str) -> io::Result<String> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    s.send_to(b"who am I?", to)?;
    let mut buf = [0u8; 64];
    let (n, _) = s.recv_from(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// End to end, in three namespaces of the test's own: `outside` (10.78.0.2) is linked to
/// the host's uplink `ivu0` (10.78.0.1) by a veth pair; the host's bridge `ivbr0`
/// (10.77.0.1/24) has a veth port whose other end is the cell's `ivc0` (10.77.0.2, default
/// route via the bridge). A TCP and a UDP server in the cell answer with the peer address
/// they see. The forwards 18080/tcp -> 8080 and 15353/udp -> 5353 must work from outside
/// (source kept), from the host itself through its uplink address (masqueraded) and from
/// the cell through the bridge's address (hairpin, masqueraded).
#[test]
fn forwards_work_end_to_end_in_netns() {
    use crate::netcfg::{self, testutil::*};
    use std::time::{Duration, Instant};
    if skip_unless_root("forwards_work_end_to_end_in_netns") {
        return;
    }
    let host = Netns::new();
    let cell = Netns::new();
    let outside = Netns::new();
    let cell_ns = cell.run(this_netns);
    let outside_ns = outside.run(this_netns);
    let cfg = NatConfig {
        table: table_name("ivbr0"),
        bridge: "ivbr0".into(),
        subnet: (Ipv4Addr::new(10, 77, 0, 0), 24),
        subnet6: None,
        uplink: Some("ivu0".into()),
        forwards: vec![
            Forward {
                port: 18080,
                proto: Proto::Tcp,
                to_addr: Ipv4Addr::new(10, 77, 0, 2),
                to_addr6: None,
                to_port: 8080,
            },
            Forward {
                port: 15353,
                proto: Proto::Udp,
                to_addr: Ipv4Addr::new(10, 77, 0, 2),
                to_addr6: None,
                to_port: 5353,
            },
        ],
    };
    host.run(move || {
        netcfg::create_bridge("ivbr0").unwrap();
        create_veth("ivh0", "ivc0").unwrap();
        create_veth("ivu0", "ivo0").unwrap();
        move_to_netns("ivc0", &cell_ns).unwrap();
        move_to_netns("ivo0", &outside_ns).unwrap();
        netcfg::set_master("ivh0", "ivbr0").unwrap();
        for l in ["ivbr0", "ivh0", "ivu0"] {
            netcfg::set_up(l).unwrap();
        }
        netcfg::add_ipv4("ivbr0", Ipv4Addr::new(10, 77, 0, 1), 24).unwrap();
        netcfg::add_ipv4("ivu0", Ipv4Addr::new(10, 78, 0, 1), 24).unwrap();
        netcfg::set_ip_forward(true).unwrap();
        // br_netfilter is on (the default): a cell reaches a forward through the bridge's
        // address only if its port may send frames back where they came from.
        netcfg::set_hairpin("ivh0", true).unwrap();
        apply(&cfg).unwrap();
    });
    cell.run(|| {
        netcfg::set_up("ivc0").unwrap();
        netcfg::add_ipv4("ivc0", Ipv4Addr::new(10, 77, 0, 2), 24).unwrap();
        add_default_route(Ipv4Addr::new(10, 77, 0, 1)).unwrap();
    });
    outside.run(|| {
        netcfg::set_up("ivo0").unwrap();
        netcfg::add_ipv4("ivo0", Ipv4Addr::new(10, 78, 0, 2), 24).unwrap();
    });

    // The cell's servers: their sockets live in the cell's namespace whichever thread
    // serves them. Each stops by itself after a few answers or 20 s.
    let (listener, udp) = cell.run(|| {
        let l = std::net::TcpListener::bind("0.0.0.0:8080").unwrap();
        let u = std::net::UdpSocket::bind("0.0.0.0:5353").unwrap();
        (l, u)
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let tcp_server = std::thread::spawn(move || {
        use std::io::Write;
        listener.set_nonblocking(true).unwrap();
        let mut served = 0;
        while served < 3 && Instant::now() < deadline {
            match listener.accept() {
                Ok((mut s, peer)) => {
                    let _ = s.write_all(peer.ip().to_string().as_bytes());
                    served += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
    });
    let udp_server = std::thread::spawn(move || {
        udp.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 64];
        let mut served = 0;
        while served < 3 && Instant::now() < deadline {
            if let Ok((_, peer)) = udp.recv_from(&mut buf) {
                udp.send_to(peer.ip().to_string().as_bytes(), peer).unwrap();
                served += 1;
            }
        }
    });

    // From outside, through the uplink's address: the cell sees the real client.
    assert_eq!(
        outside.run(|| tcp_ask("10.78.0.1:18080")).unwrap(),
        "10.78.0.2"
    );
    assert_eq!(
        outside.run(|| udp_ask("10.78.0.1:15353")).unwrap(),
        "10.78.0.2"
    );
    // From the host itself, through its own (uplink) address: masqueraded to the bridge's.
    assert_eq!(
        host.run(|| tcp_ask("10.78.0.1:18080")).unwrap(),
        "10.77.0.1"
    );
    assert_eq!(
        host.run(|| udp_ask("10.78.0.1:15353")).unwrap(),
        "10.77.0.1"
    );
    // From the cell, through the bridge's address (hairpin): masqueraded too.
    assert_eq!(
        cell.run(|| tcp_ask("10.77.0.1:18080")).unwrap(),
        "10.77.0.1"
    );
    assert_eq!(
        cell.run(|| udp_ask("10.77.0.1:15353")).unwrap(),
        "10.77.0.1"
    );
    // A port that is not forwarded is not: nothing listens on the host's 18081.
    let e = outside.run(|| tcp_ask("10.78.0.1:18081")).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");

    tcp_server.join().unwrap();
    udp_server.join().unwrap();
    host.run(|| {
        delete(&table_name("ivbr0")).unwrap();
        netcfg::delete_link("ivbr0").unwrap();
        netcfg::delete_link("ivu0").unwrap();
        netcfg::delete_link("ivh0").unwrap();
        assert_eq!(netcfg::links().unwrap(), ["lo"]);
        assert!(list_tables().unwrap().is_empty());
    });
}
