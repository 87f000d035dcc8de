//! Frame devices, in the manner of smoltcp's `phy`: one trait that a link end
//! ([`Link`](crate::link::Link)) and a TAP ([`Tap`](crate::tap::Tap)) implement, and wrappers
//! that compose with any of them ([`Captured`]: every frame through it in a pcap file;
//! [`Tee`]: the same, while a capture is attached).
//!
//! Frames are not copied to get through the trait. A [`Frame`] is borrowed where it lies: in
//! the shared memory of a link (where the peer may change it at any time, so it is only ever
//! read with volatile copies or handed to the kernel) or in local memory. A [`Space`] is room
//! for one frame in a device's own transmit buffer: a slot of a link's ring, or local memory.
//! The bridge moves a frame from a link to a TAP by handing the frame's place in the ring to
//! `write(2)`, and from a TAP to a link by `read(2)` straight into a ring slot: the kernel makes
//! the only copy either way.
//!
//! ```no_run
//! use ivnet_dataplane::device::{Captured, Device};
//! use ivnet_dataplane::pcap::Capture;
//! use ivnet_dataplane::tap::Tap;
//! # fn main() -> std::io::Result<()> {
//! let tap = Tap::open("ivtap0")?;
//! // Everything the bridge moves through this TAP, both ways, also lands in tap0.pcap.
//! let mut port = Captured::new(tap, Capture::create("tap0.pcap".as_ref(), 64 << 20)?);
//! let mut buf = [0u8; 1518];
//! let mut space = ivnet_dataplane::device::Space::local(&mut buf);
//! if let Some(n) = port.receive_into(&mut space)? {
//!     println!("{} sent a {n}-byte frame", port.name());
//! }
//! # Ok(())
//! # }
//! ```

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use ivnet_core::shm::{OutOfBounds, Region};

use crate::pcap::Capture;

/// One frame, borrowed where it lies.
#[derive(Clone, Copy)]
pub struct Frame<'a>(FrameBytes<'a>);

#[derive(Clone, Copy)]
enum FrameBytes<'a> {
    /// In shared memory: `offset..offset + len` of `region`, checked to lie inside it.
    Shared {
        region: Region<'a>,
        offset: usize,
        len: usize,
    },
    Local(&'a [u8]),
}

impl<'a> Frame<'a> {
    /// The frame at `offset..offset + len` of `region`; an error when it does not lie inside.
    pub fn in_region(region: &Region<'a>, offset: usize, len: usize) -> Result<Self, OutOfBounds> {
        region.ptr_range(offset, len)?;
        Ok(Frame(FrameBytes::Shared {
            region: *region,
            offset,
            len,
        }))
    }

    /// A frame in local memory.
    pub fn local(bytes: &'a [u8]) -> Self {
        Frame(FrameBytes::Local(bytes))
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        match self.0 {
            FrameBytes::Shared { len, .. } => len,
            FrameBytes::Local(b) => b.len(),
        }
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies the frame's first `out.len()` bytes (or all of it, when shorter) into `out`;
    /// returns how many were copied. From shared memory this is a snapshot: the peer may be
    /// changing the bytes meanwhile.
    pub fn copy_to(&self, out: &mut [u8]) -> usize {
        let n = self.len().min(out.len());
        match self.0 {
            FrameBytes::Shared { region, offset, .. } => {
                if region.read_bytes(offset, &mut out[..n]).is_err() {
                    return 0;
                }
            }
            FrameBytes::Local(b) => out[..n].copy_from_slice(&b[..n]),
        }
        n
    }

    /// Writes the frame to `fd` with one `write(2)` (a TAP takes one frame per write): the
    /// kernel copies it from where it lies.
    pub fn write_to(&self, fd: BorrowedFd<'_>) -> io::Result<usize> {
        let (ptr, len) = match self.0 {
            FrameBytes::Shared {
                region,
                offset,
                len,
            } => (
                region
                    .ptr_range(offset, len)
                    .map_err(|e| io::Error::other(format!("{e:?}")))?
                    .cast_const(),
                len,
            ),
            FrameBytes::Local(b) => (b.as_ptr(), b.len()),
        };
        // SAFETY: `ptr..ptr + len` is readable: a range checked to lie inside a region that
        // stays mapped for 'a (shared memory the kernel only reads), or a borrowed slice.
        let n = unsafe { libc::write(fd.as_raw_fd(), ptr.cast(), len) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

/// Room for one frame in a device's transmit buffer.
pub struct Space<'a>(SpaceBytes<'a>);

enum SpaceBytes<'a> {
    /// `offset..offset + cap` of `region`, checked to lie inside it; ours to write.
    Shared {
        region: Region<'a>,
        offset: usize,
        cap: usize,
    },
    Local(&'a mut [u8]),
}

impl<'a> Space<'a> {
    /// The room at `offset..offset + cap` of `region` (a slot reserved in our own ring);
    /// an error when it does not lie inside.
    pub fn in_region(region: &Region<'a>, offset: usize, cap: usize) -> Result<Self, OutOfBounds> {
        region.ptr_range(offset, cap)?;
        Ok(Space(SpaceBytes::Shared {
            region: *region,
            offset,
            cap,
        }))
    }

    /// Room in local memory.
    pub fn local(buf: &'a mut [u8]) -> Self {
        Space(SpaceBytes::Local(buf))
    }

    /// How many bytes fit.
    pub fn capacity(&self) -> usize {
        match &self.0 {
            SpaceBytes::Shared { cap, .. } => *cap,
            SpaceBytes::Local(b) => b.len(),
        }
    }

    /// Copies `frame` in; `None` (nothing copied) when it does not fit.
    pub fn copy_from(&mut self, frame: &Frame<'_>) -> Option<usize> {
        let n = frame.len();
        if n > self.capacity() {
            return None;
        }
        match &mut self.0 {
            SpaceBytes::Local(b) => {
                frame.copy_to(&mut b[..n]);
            }
            SpaceBytes::Shared { region, offset, .. } => match frame.0 {
                FrameBytes::Local(src) => region.write_bytes(*offset, src).ok()?,
                FrameBytes::Shared { .. } => {
                    let mut tmp = vec![0u8; n];
                    frame.copy_to(&mut tmp);
                    region.write_bytes(*offset, &tmp).ok()?;
                }
            },
        }
        Some(n)
    }

    /// Reads one frame from `fd` with one `read(2)` (a TAP gives one frame per read), straight
    /// into the room. `Ok(None)`: nothing waiting (the descriptor is non-blocking).
    pub fn read_from(&mut self, fd: BorrowedFd<'_>) -> io::Result<Option<usize>> {
        let (ptr, cap) = match &mut self.0 {
            SpaceBytes::Shared {
                region,
                offset,
                cap,
            } => (
                region
                    .ptr_range(*offset, *cap)
                    .map_err(|e| io::Error::other(format!("{e:?}")))?,
                *cap,
            ),
            SpaceBytes::Local(b) => (b.as_mut_ptr(), b.len()),
        };
        // SAFETY: `ptr..ptr + cap` is writable: a range checked to lie inside our own ring's
        // section (which only we write, mapped for 'a), or a borrowed mutable slice.
        let n = unsafe { libc::read(fd.as_raw_fd(), ptr.cast(), cap) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Ok(None);
            }
            return Err(e);
        }
        Ok(Some(n as usize))
    }

    /// The first `len` bytes written into the room, as a frame (`len` cut to the capacity).
    pub fn written(&self, len: usize) -> Frame<'_> {
        match &self.0 {
            SpaceBytes::Shared {
                region,
                offset,
                cap,
            } => Frame(FrameBytes::Shared {
                region: *region,
                offset: *offset,
                len: len.min(*cap),
            }),
            SpaceBytes::Local(b) => Frame::local(&b[..len.min(b.len())]),
        }
    }
}

/// Something frames come out of and go into.
pub trait Device {
    /// A name for logs (a TAP's name, a link's slot).
    fn name(&self) -> &str;

    /// Hands up to `budget` received frames, in order and in place, to `each`. Returns how
    /// many it handed over and whether more are waiting.
    fn receive(&mut self, budget: usize, each: &mut dyn FnMut(&Frame<'_>)) -> (usize, bool);

    /// Puts the next received frame into `space` (read or copied): its length, or `None` when
    /// none is waiting. A frame longer than the space is dropped.
    fn receive_into(&mut self, space: &mut Space<'_>) -> io::Result<Option<usize>>;

    /// Sends `frame`. `Ok(false)`: no room now (try again after the device made progress). A
    /// device may hold frames back until [`Device::flush`] (a link does, to publish them in
    /// batches with one doorbell).
    fn send(&mut self, frame: &Frame<'_>) -> io::Result<bool>;

    /// Sends one frame that `fill` writes into up to `max` bytes of the device's own transmit
    /// space; `fill` returns its length, or `None` when it had nothing. `Ok(None)`: nothing
    /// sent (no room, or `fill` had nothing).
    fn send_with(
        &mut self,
        max: usize,
        fill: &mut dyn FnMut(&mut Space<'_>) -> io::Result<Option<usize>>,
    ) -> io::Result<Option<usize>>;

    /// Sets the device's carrier, where it has one (a TAP does: the kernel then knows the link
    /// behind it is down). Devices without one ignore it.
    fn set_carrier(&mut self, _on: bool) -> io::Result<()> {
        Ok(())
    }

    /// Writes out whatever the device or a wrapper holds back: a link publishes the frames
    /// sent since the last flush, a capture writes its buffer to the file. The bridge calls it
    /// on its port about every 100 ms. Nothing, for most devices.
    fn flush(&mut self) {}
}

/// A device whose every frame, both ways, is also recorded in a pcap [`Capture`].
pub struct Captured<D> {
    inner: D,
    capture: Capture,
}

impl<D> Captured<D> {
    /// Wraps `inner`.
    pub fn new(inner: D, capture: Capture) -> Self {
        Captured { inner, capture }
    }

    /// The wrapped device.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    /// The device and the capture, apart.
    pub fn into_parts(self) -> (D, Capture) {
        (self.inner, self.capture)
    }
}

impl<D: Device> Device for Captured<D> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn receive(&mut self, budget: usize, each: &mut dyn FnMut(&Frame<'_>)) -> (usize, bool) {
        let cap = &mut self.capture;
        self.inner.receive(budget, &mut |f| {
            cap.record_frame(f);
            each(f)
        })
    }

    fn receive_into(&mut self, space: &mut Space<'_>) -> io::Result<Option<usize>> {
        let n = self.inner.receive_into(space)?;
        if let Some(n) = n {
            self.capture.record_frame(&space.written(n));
        }
        Ok(n)
    }

    fn send(&mut self, frame: &Frame<'_>) -> io::Result<bool> {
        let sent = self.inner.send(frame)?;
        if sent {
            self.capture.record_frame(frame);
        }
        Ok(sent)
    }

    fn send_with(
        &mut self,
        max: usize,
        fill: &mut dyn FnMut(&mut Space<'_>) -> io::Result<Option<usize>>,
    ) -> io::Result<Option<usize>> {
        let cap = &mut self.capture;
        self.inner.send_with(max, &mut |space| {
            let n = fill(space)?;
            if let Some(n) = n {
                cap.record_frame(&space.written(n));
            }
            Ok(n)
        })
    }

    fn set_carrier(&mut self, on: bool) -> io::Result<()> {
        self.inner.set_carrier(on)
    }

    /// Writes out what the capture buffers (it also does so when dropped), then the device's.
    fn flush(&mut self) {
        self.capture.flush();
        self.inner.flush();
    }
}

impl<D: AsFd> AsFd for Captured<D> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.as_fd()
    }
}

/// Where a [`Tee`] records while a capture is attached: shared (in an `Arc`) between the
/// thread that runs the device and the one that attaches and detaches captures. While none is
/// attached a frame costs one atomic load.
#[derive(Default)]
pub struct CaptureSlot {
    attached: AtomicBool,
    capture: Mutex<Option<Capture>>,
}

impl CaptureSlot {
    /// Attaches `c`: every frame from now on is recorded in it. Gives back the capture that
    /// was attached before, if any.
    pub fn attach(&self, c: Capture) -> Option<Capture> {
        let mut g = self.capture.lock().unwrap_or_else(|p| p.into_inner());
        let old = g.replace(c);
        self.attached.store(true, Ordering::Release);
        old
    }

    /// Detaches the capture (dropping it writes out and closes its file).
    pub fn detach(&self) -> Option<Capture> {
        let mut g = self.capture.lock().unwrap_or_else(|p| p.into_inner());
        self.attached.store(false, Ordering::Release);
        g.take()
    }

    /// Whether a capture is attached.
    pub fn attached(&self) -> bool {
        self.attached.load(Ordering::Acquire)
    }

    fn with(&self, f: impl FnOnce(&mut Capture)) {
        if self.attached() {
            let mut g = self.capture.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = g.as_mut() {
                f(c);
            }
        }
    }
}

/// A device whose frames, both ways, also go to a capture while one is attached to its
/// [`CaptureSlot`] (`ivnet capture` on a running network).
pub struct Tee<D> {
    inner: D,
    slot: Arc<CaptureSlot>,
}

impl<D> Tee<D> {
    /// Wraps `inner`; it records whenever `slot` holds a capture.
    pub fn new(inner: D, slot: Arc<CaptureSlot>) -> Self {
        Tee { inner, slot }
    }

    /// The wrapped device.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    fn record(slot: &CaptureSlot, f: &Frame<'_>) {
        slot.with(|c| c.record_frame(f));
    }
}

impl<D: Device> Device for Tee<D> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn receive(&mut self, budget: usize, each: &mut dyn FnMut(&Frame<'_>)) -> (usize, bool) {
        let slot = &self.slot;
        self.inner.receive(budget, &mut |f| {
            Self::record(slot, f);
            each(f)
        })
    }

    fn receive_into(&mut self, space: &mut Space<'_>) -> io::Result<Option<usize>> {
        let n = self.inner.receive_into(space)?;
        if let Some(n) = n {
            Self::record(&self.slot, &space.written(n));
        }
        Ok(n)
    }

    fn send(&mut self, frame: &Frame<'_>) -> io::Result<bool> {
        let sent = self.inner.send(frame)?;
        if sent {
            Self::record(&self.slot, frame);
        }
        Ok(sent)
    }

    fn send_with(
        &mut self,
        max: usize,
        fill: &mut dyn FnMut(&mut Space<'_>) -> io::Result<Option<usize>>,
    ) -> io::Result<Option<usize>> {
        let slot = &self.slot;
        self.inner.send_with(max, &mut |space| {
            let n = fill(space)?;
            if let Some(n) = n {
                Self::record(slot, &space.written(n));
            }
            Ok(n)
        })
    }

    fn set_carrier(&mut self, on: bool) -> io::Result<()> {
        self.inner.set_carrier(on)
    }

    fn flush(&mut self) {
        self.slot.with(|c| c.flush());
        self.inner.flush();
    }
}

impl<D: AsFd> AsFd for Tee<D> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.as_fd()
    }
}

mod impls;

#[cfg(test)]
mod tests;
