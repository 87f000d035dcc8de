//! Target `honest`: two real ends of a link over plain memory, both following the protocol,
//! with arbitrary frame sizes and arbitrary interleavings of what each end does (send through
//! `send` or through reserve/fill/shrink/push, publish, poll, receive, complete, reclaim, arm
//! notifications, reset the link).
//!
//! Invariants: no `ProtocolError` ever; every frame arrives exactly once, in order and
//! byte-exact; a receiver sees every published frame; a sender reclaims exactly what the
//! receiver published as completed; in-flight counts add up; a full ring only when something
//! is in flight; no lost doorbell (a receiver that armed its notification with nothing pending
//! is notified by the sender's next publish, and a sender that asked for a completion doorbell
//! with nothing left to reclaim is notified when half of its frames in flight are completed);
//! and at the end everything drains.

use std::collections::VecDeque;

use arbitrary::Arbitrary;
use ivnet_core::geometry::frame_slot_size;
use ivnet_core::queue::{Queues, MIN_FRAME};
use ivnet_core::testmem::TestMem;

use crate::peer::frame_bytes;
use crate::tally::seen;

/// One step of one end. `side` picks the end that acts (false: left, true: right).
#[derive(Arbitrary, Debug, Clone)]
pub enum Op {
    /// The end sends a frame of 14 + (size % 1501) bytes.
    Send {
        /// Acting end.
        side: bool,
        /// Frame size.
        size: u16,
        /// Through reserve, in-place fill and push (shrinking to `shrink` if given) rather
        /// than `send`.
        reserve: Option<Option<u16>>,
    },
    /// The end publishes what it sent.
    TxPublish(bool),
    /// The end reclaims completions.
    Reclaim(bool),
    /// The end asks for a completion doorbell.
    RequestNotify(bool),
    /// The end receives one frame into a buffer of this many bytes (poll + complete).
    Recv(bool, u16),
    /// The end polls without completing.
    Poll(bool),
    /// The end publishes its completions.
    RxPublish(bool),
    /// The end arms its receive doorbell.
    EnableNotify(bool),
    /// Both ends reset their queues (the link goes through INIT -> READY again).
    Reset,
}

/// A section size and the steps.
#[derive(Arbitrary, Debug, Clone)]
pub struct Input {
    /// Use the larger section.
    pub larger: bool,
    /// The steps.
    pub ops: Vec<Op>,
}

/// The frames going one way, from a sender to a receiver.
#[derive(Default)]
struct Way {
    /// Sent and not yet received: (tag, len), oldest first.
    queue: VecDeque<(u32, usize)>,
    /// Of those, the newest this many are not yet published.
    unpublished: usize,
    /// Received (completed), completions not yet published.
    completed: usize,
    /// Completions published, not yet reclaimed.
    reclaimable: usize,
    next_tag: u32,
    /// The receiver armed its doorbell with nothing pending.
    rx_armed: bool,
    /// The sender asked for a completion doorbell: (completions that must trigger it,
    /// completions published since).
    tx_armed: Option<(usize, usize)>,
}

impl Way {
    fn in_flight(&self) -> usize {
        self.queue.len() + self.completed + self.reclaimable
    }
}

/// Runs one input.
pub fn run(input: &Input) {
    let size = if input.larger {
        crate::LARGER_SECTION
    } else {
        crate::SMALL_SECTION
    };
    let (a, b) = (TestMem::new(size), TestMem::new(size));
    let slots = Queues::<Vec<u32>>::slots_needed(size);
    let mut ends = [
        Queues::new(a.region(), b.region(), vec![0u32; slots]).expect("valid section"),
        Queues::new(b.region(), a.region(), vec![0u32; slots]).expect("valid section"),
    ];
    for e in &mut ends {
        e.reset().expect("reset");
    }
    let g = *ends[0].geometry();
    // ways[i]: frames sent by end i.
    let mut ways = [Way::default(), Way::default()];
    let mut buf = vec![0u8; 2048];
    for op in &input.ops {
        match *op {
            Op::Send {
                side,
                size,
                reserve,
            } => {
                let s = usize::from(side);
                let w = &mut ways[s];
                let len = MIN_FRAME as usize + usize::from(size) % 1501;
                let tx = &mut ends[s].tx;
                let tag = w.next_tag;
                let sent_len = match reserve {
                    None => {
                        let ok = seen(tx.send(&frame_bytes(tag, len))).expect("send");
                        ok.then_some(len)
                    }
                    Some(shrink) => match tx.reserve(len) {
                        None => None,
                        Some(mut slot) => {
                            if let Some(n) = shrink {
                                slot = slot.shrink(usize::from(n).clamp(MIN_FRAME as usize, len));
                            }
                            tx.region()
                                .write_bytes(slot.offset(), &frame_bytes(tag, slot.len()))
                                .unwrap();
                            seen(tx.push(slot)).expect("push");
                            Some(slot.len())
                        }
                    },
                };
                match sent_len {
                    Some(n) => {
                        w.queue.push_back((tag, n));
                        w.unpublished += 1;
                        w.next_tag += 1;
                    }
                    None => assert!(
                        w.in_flight() > 0 && frame_slot_size(len) <= g.data_size(),
                        "no room in an empty queue"
                    ),
                }
                assert_eq!(usize::from(ends[s].tx.in_flight()), ways[s].in_flight());
            }
            Op::TxPublish(side) => {
                let s = usize::from(side);
                let notify = seen(ends[s].tx.publish()).expect("publish");
                let w = &mut ways[s];
                if w.unpublished > 0 {
                    if w.rx_armed {
                        assert!(notify, "lost doorbell: the receiver armed and was not rung");
                    }
                    w.rx_armed = false;
                    w.unpublished = 0;
                } else {
                    assert!(!notify, "doorbell for nothing new");
                }
            }
            Op::Reclaim(side) => {
                let s = usize::from(side);
                let n = seen(ends[s].tx.reclaim()).expect("reclaim");
                let w = &mut ways[s];
                assert_eq!(usize::from(n), w.reclaimable, "reclaim count");
                w.reclaimable = 0;
                assert_eq!(usize::from(ends[s].tx.in_flight()), w.in_flight());
            }
            Op::RequestNotify(side) => {
                let s = usize::from(side);
                seen(ends[s].tx.request_completion_notify()).expect("request_completion_notify");
                let w = &mut ways[s];
                let n = w.in_flight();
                w.tx_armed = (w.reclaimable == 0 && n > 0).then_some((n / 2 + 1, 0));
            }
            Op::Recv(side, n) => {
                // End `side` receives what the other end sent.
                let r = usize::from(side);
                let w = &mut ways[1 - r];
                let n = usize::from(n).min(buf.len());
                let got = seen(ends[r].rx.recv(&mut buf[..n])).expect("recv");
                let visible = w.queue.len() - w.unpublished;
                if visible == 0 {
                    assert_eq!(got, None, "a frame nobody published");
                    continue;
                }
                let (tag, len) = w.queue.pop_front().unwrap();
                assert_eq!(got, Some(len), "frame length");
                if len <= n {
                    assert!(buf[..len] == frame_bytes(tag, len), "frame {tag} corrupted");
                }
                w.completed += 1;
            }
            Op::Poll(side) => {
                let r = usize::from(side);
                let w = &ways[1 - r];
                let f = seen(ends[r].rx.poll()).expect("poll");
                let visible = w.queue.len() - w.unpublished;
                assert_eq!(f.is_some(), visible > 0);
                if let Some(f) = f {
                    assert_eq!(f.len, w.queue[0].1);
                }
            }
            Op::RxPublish(side) => {
                let r = usize::from(side);
                let notify = seen(ends[r].rx.publish()).expect("rx publish");
                let w = &mut ways[1 - r];
                let k = w.completed;
                if k > 0 {
                    if let Some((need, since)) = w.tx_armed {
                        if notify {
                            w.tx_armed = None;
                        } else {
                            assert!(
                                since + k < need,
                                "lost completion doorbell: {need} asked, {} published",
                                since + k
                            );
                            w.tx_armed = Some((need, since + k));
                        }
                    }
                } else {
                    assert!(!notify, "completion doorbell for nothing new");
                }
                w.reclaimable += k;
                w.completed = 0;
            }
            Op::EnableNotify(side) => {
                let r = usize::from(side);
                let pending = seen(ends[r].rx.enable_notify()).expect("enable_notify");
                let w = &mut ways[1 - r];
                let visible = w.queue.len() - w.unpublished;
                assert_eq!(pending, visible > 0);
                w.rx_armed = !pending;
            }
            Op::Reset => {
                for e in &mut ends {
                    e.reset().expect("reset");
                }
                ways = [Way::default(), Way::default()];
            }
        }
    }
    // Drain both ways: everything sent arrives, in order, and comes back.
    for s in 0..2 {
        let r = 1 - s;
        seen(ends[s].tx.publish()).expect("publish");
        let w = &mut ways[s];
        w.unpublished = 0;
        while let Some(len) = seen(ends[r].rx.recv(&mut buf)).expect("recv") {
            let (tag, want) = w.queue.pop_front().expect("a frame nobody sent");
            assert_eq!(len, want);
            assert!(buf[..len] == frame_bytes(tag, len), "frame {tag} corrupted");
        }
        assert!(w.queue.is_empty(), "{} frames lost", w.queue.len());
        seen(ends[r].rx.publish()).expect("rx publish");
        seen(ends[s].tx.reclaim()).expect("reclaim");
        assert_eq!(ends[s].tx.in_flight(), 0);
    }
}
