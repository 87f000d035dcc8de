//! Unit tests of [`super`].

use super::testutil::*;
use super::*;

#[test]
fn bridge_lifecycle_in_netns() {
    if skip_unless_root("bridge_lifecycle_in_netns") {
        return;
    }
    in_netns(|| {
        assert_eq!(link_index("ivtbr0").unwrap(), None);
        create_bridge("ivtbr0").unwrap();
        let br = link_index("ivtbr0").unwrap().expect("bridge index");
        assert!(br > 1);
        let e = create_bridge("ivtbr0").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
        assert!(e.to_string().starts_with("bridge ivtbr0: create: "), "{e}");

        create_veth("ivtv0", "ivtv1").unwrap();
        set_master("ivtv0", "ivtbr0").unwrap();
        set_up("ivtv0").unwrap();
        set_up("ivtv1").unwrap();
        set_up("ivtbr0").unwrap();
        assert_eq!(master_of("ivtv0").as_deref(), Some("ivtbr0"));
        assert!(is_up("ivtbr0") && is_up("ivtv0"));
        assert_eq!(hairpin_of("ivtv0"), Some(false));
        set_hairpin("ivtv0", true).unwrap();
        assert_eq!(hairpin_of("ivtv0"), Some(true));
        let e = set_hairpin("ivtv1", true).unwrap_err(); // not a bridge port
        assert!(
            e.to_string().starts_with("link ivtv1: set hairpin on: "),
            "{e}"
        );

        let a = Ipv4Addr::new(10, 99, 0, 1);
        add_ipv4("ivtbr0", a, 24).unwrap();
        add_ipv4("ivtbr0", a, 24).unwrap(); // the very same: Ok
        assert_eq!(ipv4_addrs("ivtbr0").unwrap(), vec![(a, 24)]);
        assert_eq!(ipv4_addrs("ivtv1").unwrap(), vec![]);
        let e = ipv4_addrs("nosuch0").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        let a6: Ipv6Addr = "fd00:99::1".parse().unwrap();
        add_ipv6("ivtbr0", a6, 64).unwrap();
        add_ipv6("ivtbr0", a6, 64).unwrap(); // the very same: Ok
        let out = std::process::Command::new("ip")
            .args(["-6", "-o", "addr", "show", "dev", "ivtbr0"])
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&out.stdout);
        let line = out.lines().find(|l| l.contains("fd00:99::1/64"));
        assert!(line.is_some_and(|l| !l.contains("tentative")), "{out}");
        assert!(add_ipv6("nosuch0", a6, 64).is_err());

        let names = links().unwrap();
        for n in ["lo", "ivtbr0", "ivtv0", "ivtv1"] {
            assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
        }

        let e = set_master("ivtv1", "nosuch0").unwrap_err();
        assert!(e.to_string().contains("nosuch0"), "{e}");

        delete_link("ivtv0").unwrap(); // takes ivtv1 along
        delete_link("ivtbr0").unwrap();
        delete_link("ivtbr0").unwrap(); // absent: Ok
        assert_eq!(links().unwrap(), vec!["lo".to_string()]);
    });
}

#[test]
fn tap_joins_bridge_in_netns() {
    if skip_unless_root("tap_joins_bridge_in_netns") {
        return;
    }
    in_netns(|| {
        create_bridge("ivtbr1").unwrap();
        // A TAP made the way the rest of the crate makes it (TUNSETIFF on /dev/net/tun).
        let tap = ivnet_dataplane::tap::Tap::open("ivttap0").expect("open tap");
        set_master("ivttap0", "ivtbr1").unwrap();
        set_up("ivttap0").unwrap();
        assert_eq!(master_of("ivttap0").as_deref(), Some("ivtbr1"));
        assert!(is_up("ivttap0"));
        drop(tap); // not persistent: goes away when closed
        assert_eq!(link_index("ivttap0").unwrap(), None);
        delete_link("ivttap0").unwrap();
        delete_link("ivtbr1").unwrap();
    });
}

#[test]
fn ipv6_forwarding_is_per_netns_and_reads_are_checked() {
    if skip_unless_root("ipv6_forwarding_is_per_netns_and_reads_are_checked") {
        return;
    }
    let host_before = std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/forwarding").unwrap();
    in_netns(|| {
        assert!(!set_ipv6_forwarding(true).unwrap());
        assert!(set_ipv6_forwarding(false).unwrap());
        assert_eq!(ipv6_conf("lo", "accept_ra").unwrap(), "1");
        assert!(ipv6_conf("default", "accept_ra").is_err());
        assert!(ipv6_conf("../../ipv4", "ip_forward").is_err());
        assert!(ipv6_conf("all", "../forwarding").is_err());
        // No router here: no interface has routes from advertisements...
        assert!(ra_route_interfaces().unwrap().is_empty());
        // ... until one has (a route as the kernel adds it for an advertisement).
        create_veth("ivtra0", "ivtra1").unwrap();
        set_up("ivtra0").unwrap();
        set_up("ivtra1").unwrap();
        let ok = std::process::Command::new("ip")
            .args([
                "-6",
                "route",
                "add",
                "fd00:ab::/64",
                "dev",
                "ivtra0",
                "proto",
                "ra",
            ])
            .status()
            .unwrap();
        assert!(ok.success());
        assert_eq!(ra_route_interfaces().unwrap(), vec!["ivtra0".to_string()]);
        delete_link("ivtra0").unwrap();
    });
    let host_after = std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/forwarding").unwrap();
    assert_eq!(host_before, host_after);
}

#[test]
fn ip_forward_is_per_netns() {
    if skip_unless_root("ip_forward_is_per_netns") {
        return;
    }
    let host_before = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    in_netns(|| {
        assert!(!set_ip_forward(true).unwrap()); // a new netns starts with 0
        assert!(set_ip_forward(true).unwrap());
        assert!(set_ip_forward(false).unwrap());
        assert!(!set_ip_forward(false).unwrap());
    });
    let host_after = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    assert_eq!(host_before, host_after);
}

/// The name of the master of link `name` (from its `IFLA_MASTER`), if it has one.
fn master_of(name: &str) -> Option<String> {
    let link = Rtnl::open().unwrap().get_link(name).unwrap()?;
    let master = link.attributes.into_iter().find_map(|a| match a {
        LinkAttribute::Controller(i) => Some(i),
        _ => None,
    })?;
    let all = Rtnl::open()
        .unwrap()
        .query(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )
        .unwrap();
    all.into_iter().find_map(|m| match m {
        RouteNetlinkMessage::NewLink(l) if l.header.index == master => {
            l.attributes.into_iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n),
                _ => None,
            })
        }
        _ => None,
    })
}

/// The hairpin mode of bridge port `name`, from its `IFLA_LINKINFO`.
fn hairpin_of(name: &str) -> Option<bool> {
    let link = Rtnl::open().unwrap().get_link(name).unwrap()?;
    link.attributes.into_iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.into_iter().find_map(|i| match i {
            LinkInfo::PortData(InfoPortData::BridgePort(p)) => {
                p.into_iter().find_map(|x| match x {
                    InfoBridgePort::HairpinMode(h) => Some(h),
                    _ => None,
                })
            }
            _ => None,
        }),
        _ => None,
    })
}

fn is_up(name: &str) -> bool {
    Rtnl::open()
        .unwrap()
        .get_link(name)
        .unwrap()
        .is_some_and(|l| l.header.flags.contains(LinkFlags::Up))
}
