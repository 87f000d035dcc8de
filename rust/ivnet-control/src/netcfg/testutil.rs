//! Helpers for the tests of [`super`] and of [`crate::nft`]: fresh network namespaces, veth
//! pairs, moving links between namespaces, routes.

use super::*;
use netlink_packet_route::link::{InfoData, InfoVeth};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use std::os::fd::{AsRawFd, OwnedFd};

/// True (and says why on stderr) if the test cannot run because we are not root.
pub(crate) fn skip_unless_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return false;
    }
    eprintln!("{test}: skipped: needs root (CAP_NET_ADMIN and unshare(CLONE_NEWNET))");
    true
}

/// Runs `f` on a new thread in a network namespace of its own (which goes away with the
/// thread), after bringing its `lo` up.
pub(crate) fn in_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        set_up("lo").expect("lo up");
        f()
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

type Job = Box<dyn FnOnce() + Send>;

/// A network namespace of its own, kept by a worker thread that runs closures in it; it
/// goes away (with its links) when this is dropped, unless something still holds it.
pub(crate) struct Netns {
    jobs: Option<std::sync::mpsc::Sender<Job>>,
    worker: Option<std::thread::JoinHandle<()>>,
}

impl Netns {
    /// A new namespace with `lo` up.
    pub(crate) fn new() -> Netns {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let worker = std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("unshare(CLONE_NEWNET)");
            set_up("lo").expect("lo up");
            for job in rx {
                job();
            }
        });
        Netns {
            jobs: Some(tx),
            worker: Some(worker),
        }
    }

    /// Runs `f` in the namespace and returns what it returns (or its panic).
    pub(crate) fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        let job: Job = Box::new(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let _ = tx.send(r);
        });
        self.jobs
            .as_ref()
            .expect("worker")
            .send(job)
            .expect("netns worker gone");
        match rx.recv().expect("netns worker gone") {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

/// A handle on the calling thread's network namespace.
pub(crate) fn this_netns() -> OwnedFd {
    std::fs::File::open("/proc/thread-self/ns/net")
        .expect("open /proc/thread-self/ns/net")
        .into()
}

/// Creates a veth pair `a` <-> `b`.
pub(crate) fn create_veth(a: &str, b: &str) -> io::Result<()> {
    let mut peer = LinkMessage::default();
    peer.attributes.push(LinkAttribute::IfName(b.to_string()));
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(a.to_string()));
    msg.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Veth),
        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
    ]));
    Rtnl::open()?
        .request(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
        .map_err(|e| ctx(format_args!("veth {a}: create"), e))
}

/// Moves link `name` into the network namespace `ns`.
pub(crate) fn move_to_netns(name: &str, ns: &OwnedFd) -> io::Result<()> {
    let mut nl = Rtnl::open()?;
    let index = nl.require_index(name)?;
    nl.set_link(
        name,
        "move to netns",
        index,
        LinkFlags::empty(),
        LinkFlags::empty(),
        vec![LinkAttribute::NetNsFd(ns.as_raw_fd())],
    )
}

/// Adds a default route via `gw`.
pub(crate) fn add_default_route(gw: Ipv4Addr) -> io::Result<()> {
    let mut msg = RouteMessage::default();
    msg.header.address_family = AddressFamily::Inet;
    msg.header.table = 254; // RT_TABLE_MAIN
    msg.header.protocol = RouteProtocol::Static;
    msg.header.scope = RouteScope::Universe;
    msg.header.kind = RouteType::Unicast;
    msg.attributes
        .push(RouteAttribute::Gateway(RouteAddress::Inet(gw)));
    Rtnl::open()?
        .request(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map_err(|e| ctx(format_args!("route default via {gw}: add"), e))
}
