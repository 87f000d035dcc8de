//! [`Device`] for a TAP and for a link end.

use std::io;
use std::os::fd::AsFd;

use super::{Device, Frame, Space};
use crate::link::Link;
use crate::tap::Tap;

/// Largest frame a TAP is asked for or given through [`Device::send_with`] (64 KiB - 1, the
/// largest a TAP without offloads passes).
const TAP_MAX: usize = 65535;

/// Rounds [`Device::receive_into`] on a link tries before it says nothing is waiting.
const RECEIVE_TRIES: usize = 64;

impl Device for Tap {
    fn name(&self) -> &str {
        Tap::name(self)
    }

    fn receive(&mut self, budget: usize, each: &mut dyn FnMut(&Frame<'_>)) -> (usize, bool) {
        let mut buf = vec![0u8; TAP_MAX];
        let mut n = 0;
        while n < budget {
            match Space::local(&mut buf).read_from(self.as_fd()) {
                Ok(Some(len)) if len > 0 => {
                    each(&Frame::local(&buf[..len]));
                    n += 1;
                }
                _ => return (n, false),
            }
        }
        (n, true)
    }

    fn receive_into(&mut self, space: &mut Space<'_>) -> io::Result<Option<usize>> {
        match space.read_from(self.as_fd())? {
            Some(0) | None => Ok(None),
            Some(n) => Ok(Some(n)),
        }
    }

    fn send(&mut self, frame: &Frame<'_>) -> io::Result<bool> {
        frame.write_to(self.as_fd()).map(|_| true)
    }

    fn send_with(
        &mut self,
        max: usize,
        fill: &mut dyn FnMut(&mut Space<'_>) -> io::Result<Option<usize>>,
    ) -> io::Result<Option<usize>> {
        let mut buf = vec![0u8; max.min(TAP_MAX)];
        let mut space = Space::local(&mut buf);
        let Some(n) = fill(&mut space)? else {
            return Ok(None);
        };
        space.written(n).write_to(self.as_fd())?;
        Ok(Some(n))
    }

    fn set_carrier(&mut self, on: bool) -> io::Result<()> {
        Tap::set_carrier(self, on)
    }
}

/// A link end as a device: frames received are handed over where they lie in the peer's
/// ring; frames sent are written into a slot of ours and published by [`Device::flush`]. A frame the peer placed outside its
/// section is dropped and counted (`rx_dropped`); a link that is not running has nothing to
/// receive and no room.
impl Device for Link {
    fn name(&self) -> &str {
        "link"
    }

    fn receive(&mut self, budget: usize, each: &mut dyn FnMut(&Frame<'_>)) -> (usize, bool) {
        let mut outside = 0u64;
        let r = Link::receive(self, budget, |region, f| {
            match Frame::in_region(region, f.offset, f.len) {
                Ok(frame) => each(&frame),
                Err(_) => outside += 1,
            }
        });
        self.stats.rx_dropped += outside;
        r
    }

    fn receive_into(&mut self, space: &mut Space<'_>) -> io::Result<Option<usize>> {
        // Bounded: a peer that moves its index without publishing a frame makes a round
        // return nothing and "more".
        for _ in 0..RECEIVE_TRIES {
            let mut got = None;
            let (_, more) = Link::receive(self, 1, |region, f| {
                got = Some(
                    Frame::in_region(region, f.offset, f.len)
                        .ok()
                        .and_then(|frame| space.copy_from(&frame)),
                );
            });
            match got {
                Some(Some(n)) => return Ok(Some(n)),
                // Too long for the space, or outside the section: dropped; try the next.
                Some(None) => self.stats.rx_dropped += 1,
                None if more => {}
                None => return Ok(None),
            }
        }
        Ok(None)
    }

    fn send(&mut self, frame: &Frame<'_>) -> io::Result<bool> {
        let n = Device::send_with(self, frame.len(), &mut |space| Ok(space.copy_from(frame)))?;
        Ok(n.is_some())
    }

    fn send_with(
        &mut self,
        max: usize,
        fill: &mut dyn FnMut(&mut Space<'_>) -> io::Result<Option<usize>>,
    ) -> io::Result<Option<usize>> {
        let mut failed = None;
        let r = Link::send_with(self, max, |region, off| {
            let mut space = Space::in_region(region, off, max).ok()?;
            match fill(&mut space) {
                Ok(n) => n,
                Err(e) => {
                    failed = Some(e);
                    None
                }
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
        r.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{e}")))
    }

    /// Publishes the frames sent since the last flush and rings the peer (sends are batched).
    fn flush(&mut self) {
        self.flush_tx();
    }
}
