//! The host's observer of a cell<->cell link counts what two real link ends send each other
//! through a real server's region, without taking part.

mod common;

use common::{link_up, start_observed, start_with, wait_for};
use ivnet_dataplane::client::Client;
use ivnet_dataplane::link::Link;
use ivnet_dataplane::observe::Direction;
use ivnet_dataplane::server::Ivshmem;

#[test]
fn counts_frames_bytes_and_state_changes_of_a_link() {
    let (s, mut obs) = start_observed("observe", 1 << 20);
    obs.sample();
    assert_eq!(obs.counts.sent, [Direction::default(); 2]);
    let mut a = Link::new(Client::connect(&s.path, 2).unwrap()).unwrap();
    let mut b = Link::new(Client::connect(&s.path, 2).unwrap()).unwrap();
    a.set_up(true);
    b.set_up(true);
    link_up(&mut a, &mut b);
    obs.sample();
    // Sampled: RESET -> RUN between two samples is one change per slot.
    assert!(obs.counts.state_changes >= 2, "{:?}", obs.counts);
    assert_eq!(obs.counts.owners, [Some(0), Some(1)]);

    let sizes = [60usize, 100, 1514, 64];
    for n in sizes {
        let mut f = vec![0xa5; n];
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 0xaa]);
        assert!(a.send(&f).unwrap());
    }
    a.flush_tx();
    assert!(b.send(&[0x5a; 200]).unwrap());
    b.flush_tx();
    obs.sample();
    let (sa, sb) = (a.slot(), b.slot());
    assert_eq!(obs.counts.sent[sa].frames, sizes.len() as u64);
    assert_eq!(
        obs.counts.sent[sa].bytes,
        sizes.iter().sum::<usize>() as u64
    );
    assert_eq!(
        obs.counts.sent[sb],
        Direction {
            frames: 1,
            bytes: 200
        }
    );
    assert_eq!(
        obs.counts.src_macs[sa],
        Some([2, 0, 0, 0, 0, 0xaa]),
        "who sent it"
    );
    assert_eq!(obs.counts.src_macs[sb], Some([0x5a; 6]));

    // Receiving and completing does not count twice; more frames add up.
    let mut buf = [0u8; 1600];
    wait_for("b got a's frames", || {
        let mut got = 0;
        while b.recv(&mut buf).is_some() {
            got += 1;
        }
        got > 0
    });
    for _ in 0..3000 {
        // More than one queue's worth between two samples is still counted frame by frame as
        // long as the ring lets it through; here the sender drains its completions as it goes.
        while !a.send(&[1; 60]).unwrap() {
            a.flush_tx();
            while b.recv(&mut buf).is_some() {}
            let _ = a.reclaim();
        }
    }
    a.flush_tx();
    obs.sample();
    assert_eq!(obs.counts.sent[sa].frames, sizes.len() as u64 + 3000);

    // A departed end: its slot's owner changes and counting restarts from its new queue.
    drop(b);
    wait_for("slot freed", || {
        obs.sample();
        obs.counts.owners[sb].is_none()
    });
}

#[test]
fn counts_an_ivshmem_2_link_too() {
    let (s, mut obs) = start_with("observe-v2", 1 << 20, Ivshmem::V2);
    let mut a = Link::new(Client::connect(&s.path, 2).unwrap()).unwrap();
    let mut b = Link::new(Client::connect(&s.path, 2).unwrap()).unwrap();
    obs.sample();
    link_up(&mut a, &mut b);
    obs.sample();
    assert!(obs.counts.state_changes >= 2, "{:?}", obs.counts);
    assert_eq!(obs.counts.states, [3, 3], "both RUN in the state table");
    assert_eq!(
        obs.counts.owners,
        [None, None],
        "no owner table on ivshmem 2.0"
    );
    for n in [60usize, 1514] {
        let mut f = vec![0xa5; n];
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 0xbb]);
        assert!(a.send(&f).unwrap());
    }
    a.flush_tx();
    obs.sample();
    assert_eq!(
        obs.counts.sent[a.slot()],
        Direction {
            frames: 2,
            bytes: 1574
        }
    );
    assert_eq!(obs.counts.src_macs[a.slot()], Some([2, 0, 0, 0, 0, 0xbb]));
}
