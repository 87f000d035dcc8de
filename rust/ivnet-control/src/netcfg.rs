//! Synchronous rtnetlink configuration of links and addresses, by interface name.
//!
//! What `ivnet up` needs to build a host bridge for its cells: look up a link, create a bridge,
//! enslave a TAP to it, bring links up, give the bridge an IPv4 address, remove what it made,
//! and list what is there (for a "left nothing behind" check). Everything goes through a
//! `NETLINK_ROUTE` socket (messages from `netlink-packet-route`), opened anew for each call,
//! so it acts on the network namespace of the calling *thread* — which is what the tests use to
//! work in a namespace of their own. The one exception is [`set_ip_forward`], a write to
//! `/proc/sys/net/ipv4/ip_forward` (also per namespace of the opening thread).
//!
//! Errors are [`io::Error`]s whose message names the object and the operation, e.g.
//! `bridge ivbr0: create: File exists (os error 17)`; their kind is that of the kernel's errno.

use std::io::{self, Read, Seek, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::names::check_ifname;
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use netlink_packet_route::link::{
    InfoBridgePort, InfoKind, InfoPortData, InfoPortKind, LinkAttribute, LinkFlags, LinkInfo,
    LinkMessage,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// Adds context to an error: `"{what}: {err}"`, keeping the error's kind.
fn ctx(what: impl std::fmt::Display, err: io::Error) -> io::Error {
    io::Error::new(err.kind(), format!("{what}: {err}"))
}

/// An error for a link that does not exist (kind `NotFound`).
fn no_such_link(name: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("link {name}: no such link"),
    )
}

/// ENODEV, which the kernel answers for a link it does not know.
fn is_enodev(err: &io::Error) -> bool {
    err.raw_os_error() == Some(libc::ENODEV)
}

/// A rtnetlink socket bound to the kernel, in the calling thread's network namespace.
struct Rtnl {
    socket: Socket,
    seq: u32,
}

impl Rtnl {
    fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(|e| ctx("netlink: open socket", e))?;
        socket
            .bind_auto()
            .map_err(|e| ctx("netlink: bind socket", e))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| ctx("netlink: connect socket", e))?;
        Ok(Rtnl { socket, seq: 0 })
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        let sent = self.socket.send(&buf, 0)?;
        if sent != buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "netlink: short send",
            ));
        }
        Ok(self.seq)
    }

    /// Receives the answers to request `seq`, handing each inner message to `each`, until the
    /// final ACK (or error) or, for a dump, the DONE message.
    fn receive(&mut self, seq: u32, mut each: impl FnMut(RouteNetlinkMessage)) -> io::Result<()> {
        loop {
            let (buf, _) = self.socket.recv_from_full()?;
            let mut off = 0;
            while off < buf.len() {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[off..]).map_err(
                    |e| io::Error::new(io::ErrorKind::InvalidData, format!("netlink: {e}")),
                )?;
                let len = msg.header.length as usize;
                if len == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "netlink: zero-length message",
                    ));
                }
                // Messages in one datagram are aligned to 4 bytes.
                off += (len + 3) & !3;
                if msg.header.sequence_number != seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(()),
                            Some(_) => Err(e.to_io()),
                        }
                    }
                    NetlinkPayload::InnerMessage(m) => each(m),
                    _ => {}
                }
            }
        }
    }

    /// Sends a request that changes something and waits for its ACK.
    fn request(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        let seq = self.send(msg, flags | NLM_F_ACK)?;
        self.receive(seq, |_| {})
    }

    /// Sends a request and collects what comes back (a dump or a single answer).
    fn query(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        let seq = self.send(msg, flags | NLM_F_ACK)?;
        let mut out = Vec::new();
        self.receive(seq, |m| out.push(m))?;
        Ok(out)
    }

    /// The link called `name`, as the kernel describes it (None when there is none).
    fn get_link(&mut self, name: &str) -> io::Result<Option<LinkMessage>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.query(RouteNetlinkMessage::GetLink(msg), 0) {
            Ok(answers) => Ok(answers.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })),
            Err(e) if is_enodev(&e) => Ok(None),
            Err(e) => Err(ctx(format_args!("link {name}: look up"), e)),
        }
    }

    fn link_index(&mut self, name: &str) -> io::Result<Option<u32>> {
        Ok(self.get_link(name)?.map(|l| l.header.index))
    }

    fn require_index(&mut self, name: &str) -> io::Result<u32> {
        self.link_index(name)?.ok_or_else(|| no_such_link(name))
    }

    /// Sends RTM_SETLINK for link `index` (called `name` in errors) with the given header flags
    /// and attributes.
    fn set_link(
        &mut self,
        name: &str,
        what: &str,
        index: u32,
        flags: LinkFlags,
        change: LinkFlags,
        attributes: Vec<LinkAttribute>,
    ) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = flags;
        msg.header.change_mask = change;
        msg.attributes = attributes;
        self.request(RouteNetlinkMessage::SetLink(msg), 0)
            .map_err(|e| ctx(format_args!("link {name}: {what}"), e))
    }

    fn ipv4_addrs(&mut self, name: &str) -> io::Result<Vec<(Ipv4Addr, u8)>> {
        let index = self.require_index(name)?;
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        let answers = self
            .query(RouteNetlinkMessage::GetAddress(msg), NLM_F_DUMP)
            .map_err(|e| ctx(format_args!("link {name}: list addresses"), e))?;
        let mut out = Vec::new();
        for m in answers {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            if a.header.index != index || a.header.family != AddressFamily::Inet {
                continue;
            }
            // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer's on
            // point-to-point links, and the same as IFA_LOCAL otherwise.
            let local = a.attributes.iter().find_map(|at| match at {
                AddressAttribute::Local(IpAddr::V4(v4)) => Some(*v4),
                _ => None,
            });
            let address = a.attributes.iter().find_map(|at| match at {
                AddressAttribute::Address(IpAddr::V4(v4)) => Some(*v4),
                _ => None,
            });
            if let Some(addr) = local.or(address) {
                out.push((addr, a.header.prefix_len));
            }
        }
        Ok(out)
    }
}

/// The index of link `name`, or `None` if there is no such link.
pub fn link_index(name: &str) -> io::Result<Option<u32>> {
    Rtnl::open()?.link_index(name)
}

/// Creates a Linux bridge called `name` (left down). Fails (`AlreadyExists`) if a link of that
/// name exists already: callers check with [`link_index`] first.
pub fn create_bridge(name: &str) -> io::Result<()> {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    msg.attributes
        .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
            InfoKind::Bridge,
        )]));
    Rtnl::open()?
        .request(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
        .map_err(|e| ctx(format_args!("bridge {name}: create"), e))
}

/// Deletes link `name` (a bridge, a TAP, a veth — both ends go). Returns `Ok(())` if there is
/// no such link, so that tearing down twice is harmless.
pub fn delete_link(name: &str) -> io::Result<()> {
    let mut nl = Rtnl::open()?;
    let Some(index) = nl.link_index(name)? else {
        return Ok(());
    };
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    match nl.request(RouteNetlinkMessage::DelLink(msg), 0) {
        Ok(()) => Ok(()),
        // Gone between the look-up and the deletion (e.g. a TAP whose owner closed it).
        Err(e) if is_enodev(&e) => Ok(()),
        Err(e) => Err(ctx(format_args!("link {name}: delete"), e)),
    }
}

/// Brings link `name` up (sets `IFF_UP`).
pub fn set_up(name: &str) -> io::Result<()> {
    let mut nl = Rtnl::open()?;
    let index = nl.require_index(name)?;
    nl.set_link(
        name,
        "set up",
        index,
        LinkFlags::Up,
        LinkFlags::Up,
        Vec::new(),
    )
}

/// Makes bridge `bridge` the master of link `name` (enslaves it as a bridge port).
pub fn set_master(name: &str, bridge: &str) -> io::Result<()> {
    let mut nl = Rtnl::open()?;
    let index = nl.require_index(name)?;
    let master = nl.link_index(bridge)?.ok_or_else(|| no_such_link(bridge))?;
    nl.set_link(
        name,
        &format!("set master {bridge}"),
        index,
        LinkFlags::empty(),
        LinkFlags::empty(),
        vec![LinkAttribute::Controller(master)],
    )
}

/// Turns the hairpin mode of bridge port `name` on or off. With it on, the bridge may send a
/// frame back out of the port it came in by, which a cell needs to reach a port forward of
/// [`crate::nft`] through the host's address while `br_netfilter` is active
/// (`net.bridge.bridge-nf-call-iptables = 1`, the default once loaded): the DNATed packet is
/// then bridged back to the cell instead of routed. The price is that flooded frames
/// (broadcasts, ARP requests) come back to their sender too.
pub fn set_hairpin(name: &str, on: bool) -> io::Result<()> {
    let mut nl = Rtnl::open()?;
    let index = nl.require_index(name)?;
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::PortKind(InfoPortKind::Bridge),
        LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
            on,
        )])),
    ]));
    nl.request(RouteNetlinkMessage::NewLink(msg), 0)
        .map_err(|e| {
            ctx(
                format_args!("link {name}: set hairpin {}", if on { "on" } else { "off" }),
                e,
            )
        })
}

/// Adds IPv4 address `addr/prefix` to link `name` (with the subnet's broadcast address).
/// Returns `Ok(())` if link `name` already has that very address with that prefix.
pub fn add_ipv4(name: &str, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
    if prefix > 32 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("link {name}: add address {addr}/{prefix}: prefix longer than 32"),
        ));
    }
    let mut nl = Rtnl::open()?;
    if nl.ipv4_addrs(name)?.contains(&(addr, prefix)) {
        return Ok(());
    }
    let index = nl.require_index(name)?;
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Inet;
    msg.header.prefix_len = prefix;
    msg.header.index = index;
    msg.attributes
        .push(AddressAttribute::Local(IpAddr::V4(addr)));
    msg.attributes
        .push(AddressAttribute::Address(IpAddr::V4(addr)));
    if prefix < 31 {
        let host_mask = u32::MAX >> prefix;
        let brd = Ipv4Addr::from(u32::from(addr) | host_mask);
        msg.attributes.push(AddressAttribute::Broadcast(brd));
    }
    nl.request(
        RouteNetlinkMessage::NewAddress(msg),
        NLM_F_CREATE | NLM_F_EXCL,
    )
    .map_err(|e| ctx(format_args!("link {name}: add address {addr}/{prefix}"), e))
}

/// Adds IPv6 address `addr/prefix` to link `name`, without duplicate address detection (the
/// address is ours to give: cells take SLAAC ones from other identifiers). Returns `Ok(())`
/// if the link already has it.
pub fn add_ipv6(name: &str, addr: Ipv6Addr, prefix: u8) -> io::Result<()> {
    if prefix > 128 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("link {name}: add address {addr}/{prefix}: prefix longer than 128"),
        ));
    }
    let mut nl = Rtnl::open()?;
    let index = nl.require_index(name)?;
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Inet6;
    msg.header.prefix_len = prefix;
    msg.header.index = index;
    msg.header.flags = AddressHeaderFlags::Nodad;
    msg.attributes
        .push(AddressAttribute::Local(IpAddr::V6(addr)));
    msg.attributes
        .push(AddressAttribute::Address(IpAddr::V6(addr)));
    msg.attributes
        .push(AddressAttribute::Flags(AddressFlags::Nodad));
    match nl.request(
        RouteNetlinkMessage::NewAddress(msg),
        NLM_F_CREATE | NLM_F_EXCL,
    ) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r.map_err(|e| ctx(format_args!("link {name}: add address {addr}/{prefix}"), e)),
    }
}

/// The names of all links in the (calling thread's) network namespace.
pub fn links() -> io::Result<Vec<String>> {
    let answers = Rtnl::open()?
        .query(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )
        .map_err(|e| ctx("links: list", e))?;
    Ok(answers
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => l.attributes.into_iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n),
                _ => None,
            }),
            _ => None,
        })
        .collect())
}

/// The IPv4 addresses (with their prefix lengths) of link `name`; an error if there is no
/// such link.
pub fn ipv4_addrs(name: &str) -> io::Result<Vec<(Ipv4Addr, u8)>> {
    Rtnl::open()?.ipv4_addrs(name)
}

/// Sets the 0/1 switch at `path` (a file under `/proc/sys`) and returns the value it had
/// before, so that a caller can put it back. Nothing is written if it is unchanged.
fn set_switch(path: &str, on: bool) -> io::Result<bool> {
    let what = |e| ctx(path, e);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(what)?;
    let mut s = String::new();
    f.read_to_string(&mut s).map_err(what)?;
    let was = match s.trim() {
        "0" => false,
        "1" => true,
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{path}: unexpected value {other:?}"),
            ))
        }
    };
    if was != on {
        f.rewind().map_err(what)?;
        f.write_all(if on { b"1\n" } else { b"0\n" })
            .map_err(what)?;
    }
    Ok(was)
}

/// Sets `net.ipv4.ip_forward` (through `/proc/sys/net/ipv4/ip_forward`) and returns the value
/// it had before, so that a caller can put it back. Nothing is written if it is unchanged.
pub fn set_ip_forward(on: bool) -> io::Result<bool> {
    set_switch("/proc/sys/net/ipv4/ip_forward", on)
}

/// Reads `/proc/sys/net/ipv6/conf/<conf>/<key>` (`conf` is `all` or an interface name).
pub fn ipv6_conf(conf: &str, key: &str) -> io::Result<String> {
    if conf != "all" {
        check_ifname("interface", conf)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    }
    if conf == "default" || !key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("ipv6 conf {conf}/{key}: not a setting ivnet reads"),
        ));
    }
    let path = format!("/proc/sys/net/ipv6/conf/{conf}/{key}");
    Ok(std::fs::read_to_string(&path)
        .map_err(|e| ctx(&path, e))?
        .trim()
        .to_string())
}

/// Sets `net.ipv6.conf.all.forwarding` and returns the value it had before, so that a caller
/// can put it back. Nothing is written if it is unchanged.
pub fn set_ipv6_forwarding(on: bool) -> io::Result<bool> {
    set_switch("/proc/sys/net/ipv6/conf/all/forwarding", on)
}

/// The interfaces that have IPv6 routes learned from router advertisements (`proto ra`): the
/// kernel drops those routes, and takes no more advertisements, on each of them whose
/// `accept_ra` is not 2 once IPv6 forwarding is turned on.
pub fn ra_route_interfaces() -> io::Result<Vec<String>> {
    use netlink_packet_route::route::{RouteAttribute, RouteMessage, RouteProtocol};
    let mut nl = Rtnl::open()?;
    let mut msg = RouteMessage::default();
    msg.header.address_family = AddressFamily::Inet6;
    let routes = nl
        .query(RouteNetlinkMessage::GetRoute(msg), NLM_F_DUMP)
        .map_err(|e| ctx("IPv6 routes: list", e))?;
    let mut ifindexes: Vec<u32> = routes
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewRoute(r) if r.header.protocol == RouteProtocol::Ra => {
                r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => Some(*i),
                    _ => None,
                })
            }
            _ => None,
        })
        .collect();
    ifindexes.sort_unstable();
    ifindexes.dedup();
    let mut names = Vec::new();
    for name in links()? {
        if nl
            .link_index(&name)?
            .is_some_and(|i| ifindexes.contains(&i))
        {
            names.push(name);
        }
    }
    Ok(names)
}

/// Helpers for the tests of this module and of [`crate::nft`].
#[cfg(test)]
pub(crate) mod testutil;

#[cfg(test)]
mod tests;
