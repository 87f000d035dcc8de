//! The ivshmem 2.0 role of the server and the host end of a link over it, on a real server.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use ivnet_core::state::LinkState;
use ivnet_core::v2::{V2Region, VECTOR_STATE};
use ivnet_dataplane::client::{drain_eventfd, Client, ServerEvent, V2Link};
use ivnet_dataplane::link::Link;
use ivnet_dataplane::proto::v2::{self as pv2, Msg};

mod common;
use common::{exchange_frames, link_up, start_v2, wait_for};

const OUT: u64 = 0x7f000;

#[test]
fn init_then_eventfds_as_the_device_expects() {
    let s = start_v2("v2-proto", 1 << 20);
    // The raw messages a QEMU ivshmem2 device reads: INIT with the memory first.
    let raw = UnixStream::connect(&s.path).unwrap();
    let (init, shm) = pv2::recv(raw.as_fd()).unwrap().unwrap();
    assert_eq!(
        init,
        Msg::Init {
            id: 0,
            max_peers: 2,
            vectors: 2,
            protocol: 1,
            output_section_size: OUT,
        }
    );
    let shm = shm.expect("INIT carries the memory");
    assert_eq!(ivnet_dataplane::mapping::fd_size(&shm).unwrap(), 0xff000);
    for v in 0..2 {
        let (m, fd) = pv2::recv(raw.as_fd()).unwrap().unwrap();
        assert_eq!(m, Msg::EventFd { id: 0, vector: v });
        assert!(fd.is_some());
    }
    // A second peer: id 1, learns peer 0's vectors, then its own; peer 0 learns its.
    let b = Client::connect(&s.path, 2).unwrap();
    assert_eq!(b.id(), 1);
    assert_eq!(
        b.v2(),
        Some(V2Link {
            max_peers: 2,
            vectors: 2,
            protocol: 1,
            output_section_size: OUT
        })
    );
    assert_eq!(b.peer_ids(), vec![0]);
    for v in 0..2 {
        let (m, fd) = pv2::recv(raw.as_fd()).unwrap().unwrap();
        assert_eq!(m, Msg::EventFd { id: 1, vector: v });
        assert!(fd.is_some());
    }
    // The memory is shared: what b writes in its state entry, the raw peer's map shows.
    let map = ivnet_dataplane::mapping::Mapping::new(&shm, 0xff000).unwrap();
    let v2b = V2Region::new(b.mapping().region(), 1, 2, OUT as usize).unwrap();
    assert_eq!(v2b.set_state(2), Ok(true));
    assert_eq!(map.region().load_u32(4), Ok(2));
    // b leaves: its entry is zeroed, then PEER_GONE.
    drop(b);
    let (m, fd) = pv2::recv(raw.as_fd()).unwrap().unwrap();
    assert_eq!(m, Msg::PeerGone { id: 1 });
    assert!(fd.is_none());
    assert_eq!(
        map.region().load_u32(4),
        Ok(0),
        "a departed peer's entry reads RESET"
    );
}

#[test]
fn ids_are_reused_and_a_third_peer_is_refused() {
    let s = start_v2("v2-ids", 1 << 20);
    let mut a = Client::connect(&s.path, 2).unwrap();
    let b = Client::connect(&s.path, 2).unwrap();
    assert_eq!((a.id(), b.id()), (0, 1));
    let err = Client::connect(&s.path, 2)
        .err()
        .expect("a third peer must be refused");
    assert!(err.to_string().contains("closed the connection"), "{err}");
    drop(b);
    // a hears of b's vectors and then of its departure.
    let t = Instant::now();
    loop {
        assert!(t.elapsed() < Duration::from_secs(10));
        if a.handle_message().unwrap() == ServerEvent::PeerGone(1) {
            break;
        }
    }
    let c = Client::connect(&s.path, 2).unwrap();
    assert_eq!(
        c.id(),
        1,
        "on ivshmem 2.0 the id is the state-table index: reused"
    );
    assert!(c.ring(0, 1));
    wait_for("a's data vector", || {
        drain_eventfd(a.vector(1).unwrap()) > 0
    });
    // Peer 0 leaves in turn: the newcomer takes id 0.
    drop(a);
    let d = {
        let t = Instant::now();
        loop {
            match Client::connect(&s.path, 2) {
                Ok(d) => break d,
                Err(_) if t.elapsed() < Duration::from_secs(10) => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("{e}"),
            }
        }
    };
    assert_eq!(d.id(), 0);
}

#[test]
fn departure_resets_the_survivor_and_the_link_comes_back() {
    let s = start_v2("v2-leave", 1 << 20);
    let mut a = Link::new(Client::connect(&s.path, 2).unwrap()).unwrap();
    let mut b = Link::new(Client::connect(&s.path, 2).unwrap()).unwrap();
    link_up(&mut a, &mut b);
    drop(b);
    // The server zeroes b's entry and tells a (PEER_GONE; a device would raise vector 0).
    wait_for("PEER_GONE", || {
        matches!(a.handle_server_message(), Ok(())) && !a.carrier()
    });
    assert!(a.state() <= LinkState::Init);
    let mut c = Link::new(Client::connect(&s.path, 2).unwrap()).unwrap();
    assert_eq!(c.slot(), 1);
    // The newcomer's transitions ring a's state vector.
    let st = a
        .client()
        .vector(VECTOR_STATE)
        .unwrap()
        .try_clone_to_owned()
        .unwrap();
    drain_eventfd(st.as_fd());
    while a.client().peer_ids().is_empty() {
        a.handle_server_message().unwrap();
    }
    link_up(&mut a, &mut c);
    assert!(drain_eventfd(st.as_fd()) > 0, "state changes rang the peer");
    assert_eq!(a.stats.carrier_ups, 2);
}

#[test]
fn two_links_exchange_frames_both_ways() {
    let s = start_v2("v2-frames", 1 << 20);
    let mut a = Link::new(Client::connect(&s.path, 2).unwrap()).unwrap();
    let mut b = Link::new(Client::connect(&s.path, 2).unwrap()).unwrap();
    link_up(&mut a, &mut b);
    let frame = |i: u32| -> Vec<u8> {
        let len = 60 + (i as usize * 37) % 1454;
        (0..len).map(|k| (i as usize ^ k) as u8).collect()
    };
    const N: u32 = 20_000;
    exchange_frames(&mut a, &mut b, N, frame);
    assert_eq!((a.stats.protocol_resets, b.stats.protocol_resets), (0, 0));
    assert_eq!((a.stats.tx_frames, b.stats.rx_frames), (N as u64, N as u64));
    // The frames went through the sections of the Jailhouse layout: a (id 0) wrote at 0x1000.
    let v = V2Region::new(a.client().mapping().region(), 0, 2, OUT as usize).unwrap();
    assert_eq!(v.section(0).unwrap().len(), OUT as usize);
}
