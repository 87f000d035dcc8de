//! Unit tests of [`super`]: frames and spaces in shared and local memory, the zero-copy system
//! calls on a frame-preserving socket (as a TAP is), and [`Captured`] over a device of the test.

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;

use ivnet_core::testmem::TestMem;

use super::*;

/// A device of frames in memory: `rx` waits to be received, `tx` is what was sent.
#[derive(Default)]
struct Fifo {
    rx: VecDeque<Vec<u8>>,
    tx: Vec<Vec<u8>>,
}

impl Device for Fifo {
    fn name(&self) -> &str {
        "fifo"
    }

    fn receive(&mut self, budget: usize, each: &mut dyn FnMut(&Frame<'_>)) -> (usize, bool) {
        let mut n = 0;
        while n < budget {
            let Some(f) = self.rx.pop_front() else {
                break;
            };
            each(&Frame::local(&f));
            n += 1;
        }
        (n, !self.rx.is_empty())
    }

    fn receive_into(&mut self, space: &mut Space<'_>) -> io::Result<Option<usize>> {
        Ok(self
            .rx
            .pop_front()
            .and_then(|f| space.copy_from(&Frame::local(&f))))
    }

    fn send(&mut self, frame: &Frame<'_>) -> io::Result<bool> {
        let mut v = vec![0; frame.len()];
        frame.copy_to(&mut v);
        self.tx.push(v);
        Ok(true)
    }

    fn send_with(
        &mut self,
        max: usize,
        fill: &mut dyn FnMut(&mut Space<'_>) -> io::Result<Option<usize>>,
    ) -> io::Result<Option<usize>> {
        let mut buf = vec![0; max];
        let n = fill(&mut Space::local(&mut buf))?;
        if let Some(n) = n {
            buf.truncate(n);
            self.tx.push(buf);
        }
        Ok(n)
    }
}

fn frame(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_add(i as u8)).collect()
}

/// The records of a pcap file: (captured bytes, original length).
fn records(path: &std::path::Path) -> Vec<(Vec<u8>, u32)> {
    let b = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut at = 24;
    while at < b.len() {
        let u = |o: usize| u32::from_ne_bytes(b[at + o..at + o + 4].try_into().unwrap());
        let (incl, orig) = (u(8) as usize, u(12));
        out.push((b[at + 16..at + 16 + incl].to_vec(), orig));
        at += 16 + incl;
    }
    out
}

#[test]
fn frames_and_spaces_in_shared_memory_stay_inside_their_region() {
    let mem = TestMem::new(4096);
    let r = mem.region();
    assert!(Frame::in_region(&r, 4000, 97).is_err());
    assert!(Space::in_region(&r, 4096, 1).is_err());
    assert!(Frame::in_region(&r, usize::MAX, 2).is_err());

    let f = frame(7, 60);
    let mut space = Space::in_region(&r, 100, 1518).unwrap();
    assert_eq!(space.capacity(), 1518);
    assert_eq!(space.copy_from(&Frame::local(&f)), Some(60));
    let written = space.written(60);
    let mut back = [0u8; 60];
    assert_eq!(written.copy_to(&mut back), 60);
    assert_eq!(&back[..], &f[..]);
    // Shared to shared.
    let mut other = Space::in_region(&r, 2000, 64).unwrap();
    assert_eq!(
        other.copy_from(&Frame::in_region(&r, 100, 60).unwrap()),
        Some(60)
    );
    assert_eq!(other.written(60).copy_to(&mut back), 60);
    assert_eq!(&back[..], &f[..]);
    // Too long for the room: nothing copied.
    let mut small = Space::in_region(&r, 3000, 59).unwrap();
    assert_eq!(small.copy_from(&Frame::local(&f)), None);
    // A short buffer gets the frame's start.
    let mut head = [0u8; 10];
    assert_eq!(written.copy_to(&mut head), 10);
    assert_eq!(&head[..], &f[..10]);
}

#[test]
fn the_kernel_copies_straight_from_and_into_shared_memory() {
    // A datagram socket keeps frame boundaries, as a TAP does.
    let (a, b) = UnixDatagram::pair().unwrap();
    b.set_nonblocking(true).unwrap();
    let mem = TestMem::new(8192);
    let r = mem.region();
    let f = frame(3, 1514);
    r.write_bytes(512, &f).unwrap();
    let n = Frame::in_region(&r, 512, 1514)
        .unwrap()
        .write_to(a.as_fd())
        .unwrap();
    assert_eq!(n, 1514);
    let mut space = Space::in_region(&r, 4096, 1518).unwrap();
    assert_eq!(space.read_from(b.as_fd()).unwrap(), Some(1514));
    let mut back = vec![0u8; 1514];
    r.read_bytes(4096, &mut back).unwrap();
    assert_eq!(back, f);
    // Nothing waiting on a non-blocking descriptor: None, not an error.
    assert_eq!(space.read_from(b.as_fd()).unwrap(), None);
}

#[test]
fn a_captured_device_records_every_frame_both_ways() {
    let path =
        std::env::temp_dir().join(format!("ivnet-device-{}-captured.pcap", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let mut fifo = Fifo::default();
    fifo.rx.push_back(frame(1, 60));
    fifo.rx.push_back(frame(2, 1514));
    fifo.rx.push_back(frame(3, 100));
    let mut dev = Captured::new(fifo, crate::pcap::Capture::create(&path, 1 << 20).unwrap());
    assert_eq!(dev.name(), "fifo");

    // In: one in place, one into a space.
    let mut seen = Vec::new();
    let (n, more) = dev.receive(1, &mut |f| seen.push(f.len()));
    assert_eq!((n, more, seen), (1, true, vec![60]));
    let mut buf = [0u8; 2048];
    assert_eq!(
        dev.receive_into(&mut Space::local(&mut buf)).unwrap(),
        Some(1514)
    );
    // Out: one frame given, one written into the device's space.
    assert!(dev.send(&Frame::local(&frame(4, 70))).unwrap());
    let five = frame(5, 80);
    let sent = dev
        .send_with(1518, &mut |s| Ok(s.copy_from(&Frame::local(&five))))
        .unwrap();
    assert_eq!(sent, Some(80));
    // A fill with nothing sends and records nothing.
    assert_eq!(dev.send_with(1518, &mut |_| Ok(None)).unwrap(), None);

    let (fifo, capture) = dev.into_parts();
    drop(capture);
    assert_eq!(fifo.tx, vec![frame(4, 70), frame(5, 80)]);
    assert_eq!(fifo.rx, VecDeque::from([frame(3, 100)]));
    let recs = records(&path);
    let want = [frame(1, 60), frame(2, 1514), frame(4, 70), frame(5, 80)];
    assert_eq!(recs.len(), want.len());
    for ((bytes, orig), w) in recs.iter().zip(&want) {
        assert_eq!((bytes, *orig as usize), (w, w.len()));
    }
    std::fs::remove_file(&path).unwrap();
}
