//! The real server, real UNIX sockets, memfd and eventfds: two host link ends exchange frames
//! through it; joins, departures and refusals follow the v1 rules.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ivnet_core::state::LinkState;
use ivnet_core::v1::{V1Region, VECTOR_STATE};
use ivnet_dataplane::client::{drain_eventfd, Client, ServerEvent};
use ivnet_dataplane::link::Link;
use ivnet_dataplane::server::{Ivshmem, Server, ServerConfig, ServerError};

mod common;
use common::{exchange_frames, link_up, running_pair, start, wait_for, TempDir};

#[test]
fn setup_messages_follow_qemus_protocol() {
    let s = start("proto", 1 << 20);
    let a = Client::connect(&s.path, 2).unwrap();
    assert_eq!(a.id(), 0);
    assert!(a.peer_ids().is_empty());
    assert_eq!(a.mapping().len(), 1 << 20);
    let mut a = a;
    let b = Client::connect(&s.path, 2).unwrap();
    assert_eq!(b.id(), 1);
    assert_eq!(
        b.peer_ids(),
        vec![0],
        "the newcomer learns the existing peer's vectors"
    );
    // The existing peer learns the newcomer's two vectors.
    assert_eq!(a.handle_message().unwrap(), ServerEvent::PeerVector(1));
    assert_eq!(a.handle_message().unwrap(), ServerEvent::PeerVector(1));
    // Ringing works both ways through the eventfds.
    assert!(b.ring(0, 1));
    wait_for("a's vector 1", || drain_eventfd(a.vector(1).unwrap()) > 0);
    assert!(a.ring(1, 0));
    wait_for("b's vector 0", || drain_eventfd(b.vector(0).unwrap()) > 0);
    // The owner table names both.
    let v = V1Region::new(a.mapping().region()).unwrap();
    assert_eq!(v.slot_of(0).unwrap(), Some(0));
    assert_eq!(v.slot_of(1).unwrap(), Some(1));
    drop(b);
    assert_eq!(a.handle_message().unwrap(), ServerEvent::PeerGone(1));
    let v = V1Region::new(a.mapping().region()).unwrap();
    assert_eq!(v.owner(1).unwrap(), None, "a departed peer's slot is freed");
}

#[test]
fn ids_only_grow_and_a_third_peer_is_refused() {
    let s = start("ids", 1 << 20);
    let a = Client::connect(&s.path, 2).unwrap();
    let b = Client::connect(&s.path, 2).unwrap();
    let err = Client::connect(&s.path, 2)
        .err()
        .expect("third peer must be refused");
    assert!(err.to_string().contains("closed the connection"), "{err}");
    drop(b);
    // Wait until the server noticed b left, then a newcomer gets a fresh id and b's slot.
    let v = V1Region::new(a.mapping().region()).unwrap();
    wait_for("slot 1 freed", || v.owner(1).unwrap().is_none());
    let c = Client::connect(&s.path, 2).unwrap();
    assert_eq!(c.id(), 2, "b's id 1 is never handed out again");
    assert_eq!(v.slot_of(2).unwrap(), Some(1));
}

#[test]
fn departure_zeroes_the_slot_and_rings_the_survivor() {
    let s = start("leave", 1 << 20);
    let mut a = Link::new(Client::connect(&s.path, 2).unwrap()).unwrap();
    let mut b = Link::new(Client::connect(&s.path, 2).unwrap()).unwrap();
    link_up(&mut a, &mut b);
    drain_eventfd(a.client().vector(VECTOR_STATE).unwrap());
    drop(b);
    // The server rings a's state vector; a follows the vanished peer to RESET.
    let st = a
        .client()
        .vector(VECTOR_STATE)
        .unwrap()
        .as_fd()
        .try_clone_to_owned()
        .unwrap();
    wait_for("survivor rung", || drain_eventfd(st.as_fd()) > 0);
    a.update_state();
    assert!(!a.carrier());
    assert!(a.state() <= LinkState::Init);
    // A new peer joins the freed slot and the link comes back.
    let mut c = Link::new(Client::connect(&s.path, 2).unwrap()).unwrap();
    assert_eq!(c.slot(), 1);
    link_up(&mut a, &mut c);
    assert_eq!(a.stats.carrier_ups, 2);
}

#[test]
fn two_links_exchange_frames_both_ways() {
    let s = start("frames", 1 << 20);
    let (mut a, mut b) = running_pair(&s);
    let frame = |i: u32| -> Vec<u8> {
        let len = 60 + (i as usize * 37) % 1454;
        (0..len).map(|k| (i as usize + k) as u8).collect()
    };
    const N: u32 = 20_000;
    exchange_frames(&mut a, &mut b, N, frame);
    assert_eq!((a.stats.protocol_resets, b.stats.protocol_resets), (0, 0));
    assert_eq!(a.stats.tx_frames, N as u64);
}

#[test]
fn bad_settings_are_named() {
    let dir = TempDir::new("bad");
    let cfg = |size, socket: PathBuf| ServerConfig {
        ivshmem: Ivshmem::V1,
        socket,
        size,
        vectors: 2,
        socket_mode: 0o600,
    };
    let e = Server::new(cfg(3 << 20, dir.0.join("s"))).err().unwrap();
    assert!(matches!(e, ServerError::Size(_)));
    assert!(e.to_string().contains("not a power of two"), "{e}");
    let e = Server::new(cfg(0x8000, dir.0.join("s"))).err().unwrap();
    assert!(e.to_string().contains("too small"), "{e}");
    let e = Server::new(cfg(1 << 20, dir.0.join("nodir/s")))
        .err()
        .unwrap();
    assert!(e.to_string().contains("does not exist"), "{e}");
    let file = dir.0.join("plainfile");
    std::fs::write(&file, b"x").unwrap();
    let e = Server::new(cfg(1 << 20, file)).err().unwrap();
    assert!(e.to_string().contains("not a socket"), "{e}");
    let e = Client::connect(&dir.0.join("nobody"), 2).err().unwrap();
    assert!(e.to_string().contains("cannot connect"), "{e}");
}

#[test]
fn a_peer_cannot_resize_the_shared_memory() {
    use ivnet_dataplane::proto::recv_msg;
    let s = start("seal", 1 << 20);
    let raw = std::os::unix::net::UnixStream::connect(&s.path).unwrap();
    let (version, _) = recv_msg(raw.as_fd()).unwrap().unwrap();
    assert_eq!(version, 0);
    let _id = recv_msg(raw.as_fd()).unwrap().unwrap();
    let (minus1, shm) = recv_msg(raw.as_fd()).unwrap().unwrap();
    assert_eq!(minus1, -1);
    let shm = shm.expect("the shared memory fd");
    for len in [0, 4096, 2 << 20] {
        let e = nix::unistd::ftruncate(&shm, len).expect_err("resizing must be refused");
        assert_eq!(e, nix::errno::Errno::EPERM, "ftruncate to {len}");
    }
    assert_eq!(ivnet_dataplane::mapping::fd_size(&shm).unwrap(), 1 << 20);
}

#[test]
fn a_peer_that_stops_reading_is_dropped_not_waited_for() {
    // Peer A connects and never reads; the other slot churns. Every join and departure sends
    // A a message, so A's socket buffer fills. The server must drop A rather than block on it,
    // and keep serving: every newcomer gets through its setup in time. (A server that blocked
    // would hang the churn thread, so the test waits for it with a deadline.)
    let s = start("deaf", 1 << 20);
    let deaf = std::os::unix::net::UnixStream::connect(&s.path).unwrap();
    let path = s.path.clone();
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let t0 = Instant::now();
        let mut cycles = 0;
        while cycles < 2000 {
            drop(Client::connect(&path, 2).unwrap());
            cycles += 1;
            // Once A is gone, a newcomer is alone: no other peer is announced to it.
            if cycles > 50 && Client::connect(&path, 2).unwrap().peer_ids().is_empty() {
                break;
            }
        }
        let _ = done.send((cycles, t0.elapsed()));
    });
    let (cycles, took) = result
        .recv_timeout(Duration::from_secs(30))
        .expect("the server blocked on the peer that stopped reading");
    assert!(cycles < 2000, "the deaf peer was never dropped");
    println!("deaf peer dropped after {cycles} join/leave cycles, {took:?}");
    // A sees the end of its stream once it reads what the server managed to send.
    deaf.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut n = 0;
    loop {
        match ivnet_dataplane::proto::recv_msg(deaf.as_fd()) {
            Ok(Some(_)) => n += 1,
            Ok(None) => break,
            Err(e) => panic!("after {n} messages: {e}"),
        }
    }
    assert!(n > 10, "{n}");
}

#[test]
fn an_overwritten_owner_table_is_put_back() {
    let s = start("owners", 1 << 20);
    let a = Client::connect(&s.path, 2).unwrap();
    let b = Client::connect(&s.path, 2).unwrap();
    let v = V1Region::new(a.mapping().region()).unwrap();
    v.set_state(0, 3).unwrap();
    drain_eventfd(a.vector(VECTOR_STATE).unwrap());
    // A hostile peer scribbles over both owner words.
    v.set_owner_word(0, Some(777)).unwrap();
    v.set_owner_word(1, None).unwrap();
    wait_for("owner table repaired", || {
        v.owner(0).unwrap() == Some(a.id()) && v.owner(1).unwrap() == Some(b.id())
    });
    // Only the owner words: the state word of slot 0 is its owner's business.
    assert_eq!(v.state(0).unwrap(), 3);
    // Both peers are rung to look again.
    wait_for("a rung", || {
        drain_eventfd(a.vector(VECTOR_STATE).unwrap()) > 0
    });
    wait_for("b rung", || {
        drain_eventfd(b.vector(VECTOR_STATE).unwrap()) > 0
    });
}

/// An end that went back to RESET while its state word still says RUN (a peer that lied about
/// its state, as the hostile peer's state-flap attack does, and then reset after an error) and
/// an honest end in RUN wait for each other for ever: the RESET end for the other to leave RUN,
/// the RUN end for a state change. `republish_state` (what the hostile peer does when it turns
/// honest again) writes the true state, and the handshake completes.
#[test]
fn a_state_word_that_lies_is_repaired_by_republishing_it() {
    use ivnet_core::error::ProtocolError;
    use ivnet_core::state::LinkState;
    use ivnet_core::v1::V1Region;

    let s = start("republish", 1 << 20);
    let (mut a, mut b) = running_pair(&s);

    // b resets after an error (its word: RESET) but a write behind its back says RUN again
    // before a looked.
    b.protocol_reset(ProtocolError::DescriptorIndexOutOfRange { index: 99 });
    let v1 = V1Region::new(b.client().mapping().region()).unwrap();
    v1.set_state(b.slot(), LinkState::Run.raw()).unwrap();
    for _ in 0..50 {
        a.update_state();
        b.update_state();
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    assert!(
        a.running() && b.state() == LinkState::Reset,
        "the deadlock this test is about: a {:?}, b {:?}",
        a.state(),
        b.state()
    );

    b.republish_state();
    link_up(&mut a, &mut b);
}

/// A link end is a [`Device`]: frames sent through the trait arrive through it, in place or
/// copied into a space, and a [`Captured`] link records both ways.
#[test]
fn a_link_end_is_a_device_that_composes_with_a_capture() {
    use ivnet_dataplane::device::{Captured, Device, Frame, Space};

    let s = start("device", 1 << 20);
    let (a, mut b) = running_pair(&s);

    let dir = TempDir::new("device-pcap");
    let path = dir.0.join("a.pcap");
    let mut a = Captured::new(
        a,
        ivnet_dataplane::pcap::Capture::create(&path, 1 << 20).unwrap(),
    );
    let frames: Vec<Vec<u8>> = (0..3u8)
        .map(|i| vec![0x40 + i; 60 + 100 * i as usize])
        .collect();
    for f in &frames {
        assert!(a.send(&Frame::local(f)).unwrap());
    }
    a.flush();
    let reply = vec![0x77u8; 90];
    assert!(a.inner().running());
    // b: the first frame in place, the others into a space.
    let mut got = Vec::new();
    wait_for("b receives the first frame", || {
        b.update_state();
        Device::receive(&mut b, 1, &mut |f| {
            let mut v = vec![0; f.len()];
            f.copy_to(&mut v);
            got.push(v);
        })
        .0 == 1
    });
    for _ in 1..3 {
        let mut buf = [0u8; 1518];
        let mut n = None;
        wait_for("b receives into a space", || {
            n = Device::receive_into(&mut b, &mut Space::local(&mut buf)).unwrap();
            n.is_some()
        });
        got.push(buf[..n.unwrap()].to_vec());
    }
    assert_eq!(got, frames);
    // b answers; a takes it into a space of its own.
    assert!(Device::send(&mut b, &Frame::local(&reply)).unwrap());
    Device::flush(&mut b);
    let mut buf = [0u8; 1518];
    let mut n = None;
    wait_for("a receives the answer", || {
        n = a.receive_into(&mut Space::local(&mut buf)).unwrap();
        n.is_some()
    });
    assert_eq!(&buf[..n.unwrap()], &reply[..]);
    let (_a, capture) = a.into_parts();
    drop(capture);
    // The capture: three frames out, one in, as sent.
    let pcap = std::fs::read(&path).unwrap();
    let mut at = 24;
    let mut recorded = Vec::new();
    while at < pcap.len() {
        let incl = u32::from_ne_bytes(pcap[at + 8..at + 12].try_into().unwrap()) as usize;
        recorded.push(pcap[at + 16..at + 16 + incl].to_vec());
        at += 16 + incl;
    }
    let mut want = frames.clone();
    want.push(reply);
    assert_eq!(recorded, want);
}
