//! Unit tests of [`super`].

use super::*;

/// A directory holding `cell.elf`, the start of an AArch64 ELF executable (all the
/// check reads), and `text.elf`, which is not one.
fn base() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("ivnet-topology-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let mut h = vec![0x7f, b'E', b'L', b'F', 2, 1, 1];
        h.resize(16, 0);
        h.extend_from_slice(&2u16.to_le_bytes());
        h.extend_from_slice(&183u16.to_le_bytes());
        h.resize(64, 0);
        std::fs::write(d.join("cell.elf"), h).unwrap();
        std::fs::write(d.join("text.elf"), "not a kernel").unwrap();
        d
    })
    .clone()
}

const GOOD: &str = r#"
[host]
bridge = "ivbr0"
subnet = "10.20.0.0/24"
dhcp = ["10.20.0.100", "10.20.0.199"]
uplink = "veth-out"
isolation = { cpu_weight = 1000, cpus = "0-1", memory_min = "256M" }

[[host.forward]]
port = 8080
cell = "c1"
to = 4242

[[cell]]
name = "c1"
image = "cell.elf"
mac = "02:00:00:00:00:01"
address = "dhcp"
services = [4242]

[[cell]]
name = "c2"
image = "cell.elf"
mac = "02:00:00:00:00:02"
address = "10.20.0.12"

[[link]]
ends = ["c1", "host"]

[[link]]
ends = ["c2", "host"]

[[link]]
ends = ["c1", "c2"]
size = "2M"
subnet = "10.30.0.0/30"
"#;

#[test]
fn a_good_file_parses() {
    let t = Topology::parse(GOOD, &base()).unwrap();
    assert_eq!(t.host.address, Ipv4Addr::new(10, 20, 0, 1));
    assert_eq!(t.cells.len(), 2);
    assert_eq!(
        t.cells[1].address,
        Addressing::Static(Ipv4Addr::new(10, 20, 0, 12))
    );
    assert_eq!(t.links[2].ends, [End::Cell(0), End::Cell(1)]);
    assert_eq!(t.links[2].size, 2 << 20);
    assert_eq!(t.host.forwards[0].cell, 0);
    assert_eq!(t.host.forwards[0].proto, "tcp");
}

#[test]
fn ivshmem_generation_per_link() {
    let t = Topology::parse(GOOD, &base()).unwrap();
    assert!(t.links.iter().all(|l| l.ivshmem == 1), "v1 by default");
    // Every link of c1 and c2 on ivshmem 2.0.
    let v2 = GOOD.replace("[[link]]\n", "[[link]]\nivshmem = 2\n");
    let t = Topology::parse(&v2, &base()).unwrap();
    assert!(t.links.iter().all(|l| l.ivshmem == 2));
    let e = bad(
        "ends = [\"c1\", \"c2\"]",
        "ends = [\"c1\", \"c2\"]\nivshmem = 3",
    );
    assert!(e.message.contains("ivshmem = 3"), "{e}");
    assert_eq!(e.line, line_of("ends = [\"c1\", \"c2\"]") + 1);
    // c1's link to the host on v1, its link to c2 on v2: refused, naming the cell.
    let e = bad(
        "ends = [\"c1\", \"c2\"]",
        "ends = [\"c1\", \"c2\"]\nivshmem = 2",
    );
    assert!(
        e.message
            .contains("cell \"c1\" would be on ivshmem 1 and ivshmem 2"),
        "{e}"
    );
}

/// Replaces `from` with `to` in the good file and returns the error.
fn bad(from: &str, to: &str) -> TopologyError {
    assert!(GOOD.contains(from), "{from}");
    Topology::parse(&GOOD.replacen(from, to, 1), &base()).unwrap_err()
}

fn line_of(needle: &str) -> usize {
    GOOD[..GOOD.find(needle).unwrap()].matches('\n').count() + 1
}

#[test]
fn isolation_settings() {
    let t = Topology::parse(GOOD, &base()).unwrap();
    let iso = t.host.isolation.unwrap();
    assert_eq!(iso.cpu_weight, Some(1000));
    assert_eq!(iso.cpus.unwrap().to_string(), "0-1");
    assert_eq!(iso.memory_min, Some(256 << 20));
    let at = line_of("isolation = ");
    for (to, says) in [
        ("cpu_weight = 0,", "cpu_weight 0: use 1..10000"),
        ("cpu_weight = 20000,", "cpu_weight 20000"),
        ("cpu_weight = \"x\",", "invalid type"),
    ] {
        let e = bad("cpu_weight = 1000,", to);
        assert_eq!(e.line, at, "{e}");
        assert!(e.message.contains(says), "{e}");
    }
    let e = bad("cpus = \"0-1\"", "cpus = \"1-0\"");
    assert!(
        e.message.contains("isolation cpus: CPU list \"1-0\""),
        "{e}"
    );
    let e = bad("memory_min = \"256M\"", "memory_min = \"lots\"");
    assert!(
        e.message.contains("isolation memory_min: invalid size"),
        "{e}"
    );
    let e = bad("memory_min = \"256M\"", "memory_max = \"256M\"");
    assert!(e.message.contains("memory_max"), "{e}");
    let e = bad(
        "isolation = { cpu_weight = 1000, cpus = \"0-1\", memory_min = \"256M\" }",
        "isolation = {}",
    );
    assert_eq!(e.line, at, "{e}");
    assert!(e.message.contains("asks for nothing"), "{e}");
}

#[test]
fn every_mistake_is_named_with_its_line() {
    let e = bad("mac = \"02:00:00:00:00:02\"", "mac = \"02:00:00:00:00:01\"");
    assert_eq!(e.line, line_of("mac = \"02:00:00:00:00:02\""));
    assert!(e.message.contains("already cell \"c1\"'s"), "{e}");

    let e = bad("ends = [\"c2\", \"host\"]", "ends = [\"c3\", \"host\"]");
    assert_eq!(e.line, line_of("ends = [\"c2\", \"host\"]"));
    assert!(e.message.contains("\"c3\""), "{e}");

    let e = bad("address = \"10.20.0.12\"", "address = \"10.20.0.150\"");
    assert!(e.message.contains("overlaps the DHCP range"), "{e}");

    let e = bad("address = \"10.20.0.12\"", "address = \"10.30.0.12\"");
    assert!(e.message.contains("10.20.0.0/24"), "{e}");

    let e = bad("image = \"cell.elf\"", "image = \"text.elf\"");
    assert!(e.message.contains("not an AArch64 ELF"), "{e}");

    let e = bad("image = \"cell.elf\"", "image = \"no-such.elf\"");
    assert_eq!(e.line, line_of("image = \"cell.elf\""));
    assert!(e.message.contains("does not exist"), "{e}");

    let e = bad("size = \"2M\"", "size = \"100K\"");
    assert_eq!(e.line, line_of("size = \"2M\""));
    assert!(e.message.contains("100K"), "{e}");

    let e = bad("name = \"c2\"", "name = \"c.2\"");
    assert!(e.message.contains("letters"), "{e}");

    let e = bad("name = \"c2\"", "name = \"c1\"");
    assert!(e.message.contains("defined twice"), "{e}");

    let e = bad(
        "to = 4242\n",
        "to = 4242\n\n[[host.forward]]\nport = 8080\ncell = \"c2\"\nto = 1\n",
    );
    assert!(e.message.contains("8080/tcp is already forwarded"), "{e}");

    let e = bad(
        "ends = [\"c1\", \"c2\"]",
        "ends = [\"c2\", \"c1\"]\nsubnet = \"10.31.0.0/30\"\n[[link]]\nends = [\"c1\", \"c2\"]",
    );
    assert!(e.message.contains("linked twice"), "{e}");

    let e = bad("subnet = \"10.20.0.0/24\"", "subnet = \"10.20.0.1/24\"");
    assert!(e.message.contains("host bits"), "{e}");

    let e = bad("mac = \"02:00:00:00:00:01\"", "mac = \"01:00:00:00:00:01\"");
    assert!(e.message.contains("multicast"), "{e}");

    // The cell would ignore an all-zero MAC (and take a random one), so the check refuses
    // it, with the same rule the cell applies (ivnet_core::mac).
    let e = bad("mac = \"02:00:00:00:00:01\"", "mac = \"00:00:00:00:00:00\"");
    assert_eq!(e.line, line_of("mac = \"02:00:00:00:00:01\""));
    assert!(e.message.contains("all-zero"), "{e}");

    let e = bad("mac = \"02:00:00:00:00:01\"", "mac = \"02:00:00:00:00:1\"");
    assert!(e.message.contains("six hex bytes"), "{e}");

    let e = bad("bridge = \"ivbr0\"", "bridge = \"ivbr0\"\ncolour = 3");
    assert_eq!(e.line, line_of("bridge = \"ivbr0\"") + 1);
    assert!(e.message.contains("colour"), "{e}");

    let e = bad(
        "dhcp = [\"10.20.0.100\", \"10.20.0.199\"]",
        "dhcp = [\"10.20.0.0\", \"10.20.0.9\"]",
    );
    assert!(e.message.contains("DHCP range"), "{e}");

    let e = bad("subnet = \"10.30.0.0/30\"", "");
    assert!(e.message.contains("needs its own subnet"), "{e}");
    let e = bad("subnet = \"10.30.0.0/30\"", "subnet = \"10.20.0.0/30\"");
    assert!(e.message.contains("overlaps the host subnet"), "{e}");
    let e = bad(
        "ends = [\"c2\", \"host\"]",
        "ends = [\"c2\", \"host\"]\nsubnet = \"10.40.0.0/30\"",
    );
    assert!(e.message.contains("drop this one"), "{e}");
    let e = bad(
        "subnet = \"10.30.0.0/30\"",
        "subnet = \"10.30.0.0/30\"\n[[link]]\nends = [\"c1\", \"c3\"]\nsubnet = \"10.30.1.0/30\"\n[[cell]]\nname = \"c3\"\nimage = \"cell.elf\"\nmac = \"02:00:00:00:00:03\"\naddress = \"10.20.0.13\"",
    );
    assert!(e.message.contains("more than 2 links"), "{e}");
    let e = bad("mac = \"02:00:00:00:00:02\"", "mac = \"02:01:00:00:00:01\"");
    assert!(e.message.contains("interface"), "{e}");
}

#[test]
fn cells_get_their_interfaces_in_link_order() {
    use ivnet_core::cell::Ipv4;
    let t = Topology::parse(GOOD, &base()).unwrap();
    // The host link goes last (see cell_ifaces).
    let c1 = t.cell_ifaces(0);
    assert_eq!(c1.len(), 2);
    assert_eq!((c1[1].link, c1[1].address, c1[1].to_host), (0, None, true));
    assert_eq!(c1[0].address, Some((Ipv4Addr::new(10, 30, 0, 1), 30)));
    assert_eq!(c1[0].mac.octets(), [2, 1, 0, 0, 0, 1]);
    assert_eq!(c1[1].mac.octets(), [2, 0, 0, 0, 0, 1]);
    let c2 = t.cell_config(1);
    assert_eq!(c2.ifaces[1].ipv4, Some(Ipv4::Static([10, 20, 0, 12], 24)));
    assert_eq!(c2.ifaces[1].gw, Some([10, 20, 0, 1]));
    assert_eq!(c2.ifaces[0].ipv4, Some(Ipv4::Static([10, 30, 0, 2], 30)));
    assert_eq!(c2.ifaces[0].gw, None);
    assert_eq!(c2.default, Some(1));
    let c1 = t.cell_config(0);
    assert_eq!(c1.ifaces[1].ipv4, Some(Ipv4::Dhcp));
}

/// The good file, dual-stack.
fn dual() -> String {
    GOOD.replacen(
        "subnet = \"10.20.0.0/24\"",
        "subnet = \"10.20.0.0/24\"\nsubnet6 = \"fd00:20::/64\"",
        1,
    )
    .replacen(
        "subnet = \"10.30.0.0/30\"",
        "subnet = \"10.30.0.0/30\"\nsubnet6 = \"fd00:30::/64\"",
        1,
    )
}

#[test]
fn ipv6_addresses() {
    let t = Topology::parse(&dual(), &base()).unwrap();
    let p: Ipv6Addr = "fd00:20::".parse().unwrap();
    assert_eq!(t.host.subnet6, Some(p));
    // SLAAC (modified EUI-64) of 02:00:00:00:00:01 on the bridge.
    assert_eq!(
        t.cell_address6(0),
        Some("fd00:20::ff:fe00:1".parse().unwrap())
    );
    let c1 = t.cell_ifaces(0);
    assert_eq!(c1[0].address6, Some("fd00:30::1".parse().unwrap()));
    let c2 = t.cell_config(1);
    let want: Ipv6Addr = "fd00:30::2".parse().unwrap();
    assert_eq!(c2.ifaces[0].ipv6, Some((want.octets(), 64)));
    // On the bridge: SLAAC from the host's advertisements, nothing in the file.
    assert_eq!(c2.ifaces[1].ipv6, None);
    // Without subnet6, no IPv6 anywhere.
    let t = Topology::parse(GOOD, &base()).unwrap();
    assert_eq!(t.cell_address6(0), None);
    assert!(t.cell_config(0).ifaces.iter().all(|f| f.ipv6.is_none()));
}

#[test]
fn ipv6_mistakes_are_named() {
    let text = dual();
    let bad6 = |from: &str, to: &str| {
        assert!(text.contains(from), "{from}");
        Topology::parse(&text.replacen(from, to, 1), &base()).unwrap_err()
    };
    for (to, says) in [
        ("fd00:20::/48", "must be /64"),
        ("fd00:20::1/64", "host bits"),
        ("fe80::/64", "not a unicast"),
        ("ff02::/64", "not a unicast"),
        ("10.20.0.0/24", "not an IPv6 /64"),
        ("fd00:20::", "not an IPv6 /64"),
    ] {
        let e = bad6("subnet6 = \"fd00:20::/64\"", &format!("subnet6 = \"{to}\""));
        assert!(e.message.contains(says), "{to}: {e}");
        assert_eq!(e.line, 5, "{e}");
    }
    let e = bad6("subnet6 = \"fd00:30::/64\"", "subnet6 = \"fd00:20::/64\"");
    assert!(e.message.contains("is the host's"), "{e}");
    let e = bad6(
        "[[link]]\nends = [\"c2\", \"host\"]",
        "[[link]]\nends = [\"c2\", \"host\"]\nsubnet6 = \"fd00:40::/64\"",
    );
    assert!(e.message.contains("[host] subnet6"), "{e}");
}

#[test]
fn slaac_is_modified_eui64() {
    let p: Ipv6Addr = "2001:db8:1:2::".parse().unwrap();
    assert_eq!(
        slaac(p, Mac::new([0x02, 0x1e, 0x6e, 0x55, 0x62, 0x01]).unwrap()),
        "2001:db8:1:2:1e:6eff:fe55:6201"
            .parse::<Ipv6Addr>()
            .unwrap()
    );
}

#[test]
fn subnet_membership() {
    let s = Subnet {
        network: Ipv4Addr::new(10, 20, 0, 0),
        prefix: 24,
    };
    assert!(s.holds(Ipv4Addr::new(10, 20, 0, 1)));
    assert!(!s.holds(Ipv4Addr::new(10, 20, 0, 0)));
    assert!(!s.holds(Ipv4Addr::new(10, 20, 0, 255)));
    assert!(!s.holds(Ipv4Addr::new(10, 20, 1, 1)));
}
