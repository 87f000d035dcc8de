//! Target `observer`: the host's read-only counter of a cell<->cell link
//! (`ivnet_dataplane::observe::LinkObserver`), sampling a real memfd-backed v1 region that the
//! fuzzer-driven cells write between samples.
//!
//! The cells either write arbitrary values into the fields the observer reads (owner and state
//! words, avail index, avail ring entries, descriptors, frame bytes, any header word), or
//! behave: each sends frames to the other through real queues over the region's sections.
//!
//! Invariants: no panic; counts never go down; each sample adds at most `qlen` descriptors'
//! worth of bytes per new frame window and no more than one data area per counted descriptor;
//! and when the cells behave (and fewer than `qlen` frames pass between samples, as the
//! module documents), frames and bytes are exact, and each sending slot's source MAC is
//! known.

use std::os::fd::OwnedFd;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use ivnet_core::geometry::Geometry;
use ivnet_core::queue::{Queues, MIN_FRAME};
use ivnet_core::v1::{min_region_size, V1Region, CONTROL_SIZE, SLOTS};
use ivnet_core::ProtocolError;
use ivnet_dataplane::mapping::{memfd, Mapping};
use ivnet_dataplane::observe::LinkObserver;

use crate::peer::{frame_bytes, header_word, Addr, DescRef, Index16, Len};

/// One step: a cell's write, an honest send, or a sample.
#[derive(Arbitrary, Debug, Clone)]
pub enum Op {
    /// The server records slot `slot % 2`'s owner.
    Owner(u8, Option<u32>),
    /// A cell writes its state word.
    State(u8, u32),
    /// Anyone writes any word of the control page.
    Control(u16, u32),
    /// A cell publishes an avail index near its current one, or any value.
    AvailIdx(u8, Index16),
    /// A cell writes an avail ring entry.
    AvailEntry(u8, u8, DescRef),
    /// A cell writes a descriptor.
    Desc(u8, DescRef, Addr, Len),
    /// A cell writes 8 bytes of its data area.
    Bytes(u8, u16, [u8; 8]),
    /// A cell writes any aligned word of its queue header.
    Word(u8, u16, u64),
    /// Cell `slot % 2` sends `n % 8 + 1` frames of 14 + (len % 1501) bytes to the other, which
    /// receives them.
    Send {
        /// Sending slot.
        slot: u8,
        /// Frames.
        n: u8,
        /// Size.
        len: u16,
    },
    /// `observer.sample()`.
    Sample,
}

impl Op {
    fn honest(&self) -> bool {
        matches!(self, Op::Send { .. } | Op::Sample)
    }
}

/// The steps.
#[derive(Arbitrary, Debug, Clone)]
pub struct Input {
    /// The steps.
    pub ops: Vec<Op>,
}

/// The region, made once per process: a memfd as the server makes it, mapped for the cells.
fn shared() -> &'static (OwnedFd, Mapping) {
    static SHM: OnceLock<(OwnedFd, Mapping)> = OnceLock::new();
    SHM.get_or_init(|| {
        let size = min_region_size();
        let fd = memfd("ivnet-fuzz-observer", size).expect("memfd");
        let map = Mapping::new(&fd, size).expect("mmap");
        (fd, map)
    })
}

/// Runs one input.
pub fn run(input: &Input) {
    let (fd, map) = shared();
    let region = map.region();
    region.zero(0, region.len()).unwrap();
    let v1 = V1Region::new(region).expect("minimum region");
    let secs = [v1.section(0).unwrap(), v1.section(1).unwrap()];
    let g = Geometry::for_section(secs[0].len()).unwrap();
    let honest = input.ops.iter().all(Op::honest);
    // The cells: slot s transmits from its section and receives from the other.
    let slots = Queues::<Vec<u32>>::slots_needed(secs[0].len());
    let mut cells = [
        Queues::new(secs[0], secs[1], vec![0u32; slots]).unwrap(),
        Queues::new(secs[1], secs[0], vec![0u32; slots]).unwrap(),
    ];
    for (s, c) in cells.iter_mut().enumerate() {
        c.reset().unwrap();
        v1.set_owner(s, Some(s as u32)).unwrap();
        v1.set_state(s, 3).unwrap();
    }
    let mut obs = LinkObserver::new(fd, region.len()).expect("observer mapping");
    // Honest bookkeeping: frames and bytes published since the observer's first sample, and
    // frames since the last one.
    let mut sampled = false;
    let mut want = [(0u64, 0u64); 2];
    let mut since = [0usize; 2];
    let mut tag = 0u32;
    let mut buf = vec![0u8; 2048];
    let mut prev = obs.counts;
    for op in &input.ops {
        match *op {
            // u32::MAX is the one id the owner word cannot hold: refused (see `set_owner`).
            Op::Owner(s, id) => {
                let r = v1.set_owner(usize::from(s) % SLOTS, id);
                assert_eq!(r.is_err(), id == Some(u32::MAX));
            }
            Op::State(s, w) => v1.set_state(usize::from(s) % SLOTS, w).unwrap(),
            Op::Control(off, w) => region
                .store_u32((usize::from(off) * 4) % CONTROL_SIZE, w)
                .unwrap(),
            Op::AvailIdx(s, i) => {
                let sec = secs[usize::from(s) % 2];
                let cur = sec.load_u16(g.avail_idx()).unwrap();
                sec.store_u16(g.avail_idx(), i.resolve(cur)).unwrap();
            }
            Op::AvailEntry(s, pos, d) => {
                let sec = secs[usize::from(s) % 2];
                sec.write_u16(g.avail_ring(u16::from(pos) % g.qlen), d.resolve(&g))
                    .unwrap();
            }
            Op::Desc(s, d, addr, len) => {
                let sec = secs[usize::from(s) % 2];
                let d = d.resolve(&g) % g.qlen;
                sec.write_u64(g.desc(d), addr.resolve(&g)).unwrap();
                sec.write_u32(g.desc(d) + 8, len.resolve()).unwrap();
            }
            Op::Bytes(s, at, b) => {
                let sec = secs[usize::from(s) % 2];
                let at = g.data_off() + (usize::from(at) * 8) % (g.data_size() - 8);
                sec.write_bytes(at, &b).unwrap();
            }
            Op::Word(s, off, val) => {
                secs[usize::from(s) % 2]
                    .write_u64(header_word(&g, off), val)
                    .unwrap();
            }
            Op::Send { slot, n, len } => {
                let s = usize::from(slot) % 2;
                let len = MIN_FRAME as usize + usize::from(len) % 1501;
                for _ in 0..=n % 8 {
                    let [a, b] = &mut cells;
                    let (tx, rx) = if s == 0 { (a, b) } else { (b, a) };
                    // After hostile writes the queues may hold garbage: an error then ends
                    // the send (a real cell would reset its link). Only honest runs must not
                    // see one.
                    let sent = (|| {
                        tx.tx.reclaim()?;
                        let ok = tx.tx.send(&frame_bytes(tag, len))?;
                        if ok {
                            tx.tx.publish()?;
                        }
                        Ok::<bool, ProtocolError>(ok)
                    })();
                    match sent {
                        Ok(true) => tag += 1,
                        Ok(false) => break,
                        Err(e) => {
                            assert!(!honest, "honest cell: {e:?}");
                            break;
                        }
                    }
                    if sampled {
                        want[s].0 += 1;
                        want[s].1 += len as u64;
                        since[s] += 1;
                    }
                    let got = rx.rx.recv(&mut buf);
                    let published = rx.rx.publish();
                    if honest {
                        assert_eq!(got, Ok(Some(len)), "honest receive");
                        assert!(published.is_ok());
                    }
                }
            }
            Op::Sample => {
                obs.sample();
                let c = obs.counts;
                for s in 0..2 {
                    assert!(c.sent[s].frames >= prev.sent[s].frames, "frames went down");
                    assert!(c.sent[s].bytes >= prev.sent[s].bytes, "bytes went down");
                    let frames = c.sent[s].frames - prev.sent[s].frames;
                    let bytes = c.sent[s].bytes - prev.sent[s].bytes;
                    let counted = frames.min(u64::from(g.qlen));
                    assert!(
                        bytes <= counted * g.data_size() as u64,
                        "{bytes} bytes from {frames} frames"
                    );
                }
                assert!(c.state_changes >= prev.state_changes);
                if honest {
                    for s in 0..2 {
                        if since[s] < usize::from(g.qlen) {
                            assert_eq!(
                                (c.sent[s].frames, c.sent[s].bytes),
                                want[s],
                                "slot {s} miscounted"
                            );
                            if want[s].0 > 0 {
                                assert!(c.src_macs[s].is_some(), "slot {s}: no source MAC");
                            }
                        } else if since[s] < 0x8000 {
                            // Past the documented limit: frames stay exact.
                            assert_eq!(c.sent[s].frames, want[s].0, "slot {s} miscounted");
                            want[s].1 = c.sent[s].bytes;
                        } else {
                            want[s] = (c.sent[s].frames, c.sent[s].bytes);
                        }
                        assert_eq!(c.owners[s], Some(s as u32));
                        assert_eq!(c.states[s], 3);
                    }
                }
                since = [0; 2];
                sampled = true;
                prev = c;
            }
        }
    }
}
