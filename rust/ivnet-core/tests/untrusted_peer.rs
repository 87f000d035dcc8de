//! Property tests: whatever the peer writes into its section, the receive and completion paths
//! return frames inside the peer's data area or a typed error, and never panic.

use ivnet_core::geometry::Geometry;
use ivnet_core::queue::Queues;
use ivnet_core::testmem::TestMem;
use proptest::prelude::*;

const SEC: usize = 0x4000;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_peer_header_never_escapes(
        pokes in proptest::collection::vec((0usize..0x800, any::<u64>()), 0..64),
        sends in 0usize..8,
    ) {
        let (a, b) = (TestMem::new(SEC), TestMem::new(SEC));
        let mut me = Queues::new(a.region(), b.region(), vec![0u32; 64]).unwrap();
        me.reset().unwrap();
        let g = Geometry::for_section(SEC).unwrap();
        for _ in 0..sends {
            me.tx.send(&[0x55; 100]).unwrap();
        }
        me.tx.publish().unwrap();
        // The peer's section gets arbitrary 8-byte words anywhere in its header.
        let peer = b.region();
        for (off, v) in pokes {
            let off = (off * 8) % g.header_size;
            peer.write_u64(off, v).unwrap();
        }
        let mut buf = [0u8; 2048];
        for _ in 0..(g.qlen as usize + 2) {
            match me.rx.poll() {
                Ok(Some(f)) => {
                    prop_assert!(f.offset >= g.data_off());
                    prop_assert!(f.offset + f.len <= SEC);
                    prop_assert!(f.len >= 14);
                    let n = f.len.min(buf.len());
                    me.rx.region().read_bytes(f.offset, &mut buf[..n]).unwrap();
                    me.rx.complete(f).unwrap();
                }
                Ok(None) | Err(_) => break,
            }
        }
        let _ = me.rx.publish();
        if let Ok(n) = me.tx.reclaim() {
            prop_assert!(n as usize <= sends);
        }
        prop_assert!(me.tx.in_flight() as usize <= sends);
    }
}
