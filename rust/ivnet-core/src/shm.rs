//! The one place that touches shared memory.
//!
//! A [`Region`] is a bounds-checked window onto memory that another party (the peer VM, the
//! host peer, a hypervisor) may write at any time. Every access goes through an accessor that
//! checks the offset and the length against the window, so that a bad value read from the peer
//! can at worst produce an [`OutOfBounds`] error, never an access outside the window.
//!
//! Ring indices are accessed atomically with explicit ordering (`Acquire` for what the peer
//! publishes, `Release` for what we publish); descriptor fields and frame bytes with volatile
//! or plain copies after the acquiring load that made them visible.
//!
//! ```
//! use ivnet_core::shm::Region;
//! let mut buf = [0u64; 8];
//! // SAFETY: `buf` outlives `r` and nothing else accesses it meanwhile.
//! let r = unsafe { Region::new(buf.as_mut_ptr().cast(), 64) };
//! r.store_u32(4, 7).unwrap();
//! assert_eq!(r.load_u32(4).unwrap(), 7);
//! assert!(r.load_u32(62).is_err());
//! ```

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU16, AtomicU32, Ordering};

/// An access that would fall (partly) outside a [`Region`], or is misaligned for its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfBounds {
    /// Offset of the attempted access, relative to the region.
    pub offset: usize,
    /// Length of the attempted access in bytes.
    pub len: usize,
}

/// A window onto shared memory. Cheap to copy; it does not own the memory.
#[derive(Debug, Clone, Copy)]
pub struct Region {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: a Region is only a bounds-checked pointer into memory that is shared by design; all
// accesses are atomic, volatile or byte copies, so moving or sharing the window between
// threads adds no hazard beyond the cross-VM sharing the protocol already handles.
unsafe impl Send for Region {}
// SAFETY: see `Send` above.
unsafe impl Sync for Region {}

impl Region {
    /// Wraps `len` bytes of shared memory at `base`.
    ///
    /// # Safety
    /// `base` must be non-null, aligned to 8 bytes, and valid for reads and writes of `len`
    /// bytes for as long as this `Region` (or any copy or sub-region of it) is used. Other
    /// parties may write the memory concurrently; no Rust reference to it may exist.
    pub unsafe fn new(base: *mut u8, len: usize) -> Self {
        debug_assert!(base as usize % 8 == 0);
        Region {
            base: NonNull::new(base).expect("Region::new: null base"),
            len,
        }
    }

    /// Length of the window in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the window is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The address of the first byte (for diagnostics and for handing to DMA-like copies).
    pub fn as_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// A sub-window `[offset, offset + len)` of this one.
    pub fn sub(&self, offset: usize, len: usize) -> Result<Region, OutOfBounds> {
        self.check(offset, len, 1)?;
        // SAFETY: `check` proved the sub-window lies inside ours, and the alignment of the base
        // is only relied on by the aligned accessors, which check alignment of the final
        // address themselves.
        Ok(Region {
            base: unsafe { NonNull::new_unchecked(self.base.as_ptr().add(offset)) },
            len,
        })
    }

    fn check(&self, offset: usize, len: usize, align: usize) -> Result<*mut u8, OutOfBounds> {
        let err = OutOfBounds { offset, len };
        let end = offset.checked_add(len).ok_or(err)?;
        if end > self.len {
            return Err(err);
        }
        // SAFETY: offset <= len of the region, so the pointer stays inside (or one past) it.
        let p = unsafe { self.base.as_ptr().add(offset) };
        if (p as usize) % align != 0 {
            return Err(err);
        }
        Ok(p)
    }

    /// Loads a `u16` with `Acquire` ordering (an index the other side publishes).
    pub fn load_u16(&self, offset: usize) -> Result<u16, OutOfBounds> {
        let p = self.check(offset, 2, 2)?;
        // SAFETY: in bounds and aligned (checked); AtomicU16 has the layout of u16.
        Ok(unsafe { &*(p as *const AtomicU16) }.load(Ordering::Acquire))
    }

    /// Stores a `u16` with `Release` ordering (an index we publish).
    pub fn store_u16(&self, offset: usize, v: u16) -> Result<(), OutOfBounds> {
        let p = self.check(offset, 2, 2)?;
        // SAFETY: in bounds and aligned (checked); AtomicU16 has the layout of u16.
        unsafe { &*(p as *const AtomicU16) }.store(v, Ordering::Release);
        Ok(())
    }

    /// Loads a `u32` with `Acquire` ordering.
    pub fn load_u32(&self, offset: usize) -> Result<u32, OutOfBounds> {
        let p = self.check(offset, 4, 4)?;
        // SAFETY: in bounds and aligned (checked); AtomicU32 has the layout of u32.
        Ok(unsafe { &*(p as *const AtomicU32) }.load(Ordering::Acquire))
    }

    /// Stores a `u32` with `Release` ordering.
    pub fn store_u32(&self, offset: usize, v: u32) -> Result<(), OutOfBounds> {
        let p = self.check(offset, 4, 4)?;
        // SAFETY: in bounds and aligned (checked); AtomicU32 has the layout of u32.
        unsafe { &*(p as *const AtomicU32) }.store(v, Ordering::Release);
        Ok(())
    }

    /// Reads a little-endian `u64` (a descriptor address) with a volatile read.
    pub fn read_u64(&self, offset: usize) -> Result<u64, OutOfBounds> {
        let p = self.check(offset, 8, 8)?;
        // SAFETY: in bounds and aligned (checked); any bit pattern is a valid u64.
        Ok(u64::from_le(unsafe {
            core::ptr::read_volatile(p as *const u64)
        }))
    }

    /// Writes a little-endian `u64` with a volatile write.
    pub fn write_u64(&self, offset: usize, v: u64) -> Result<(), OutOfBounds> {
        let p = self.check(offset, 8, 8)?;
        // SAFETY: in bounds and aligned (checked).
        unsafe { core::ptr::write_volatile(p as *mut u64, v.to_le()) };
        Ok(())
    }

    /// Reads a little-endian `u32` with a volatile read (no ordering).
    pub fn read_u32(&self, offset: usize) -> Result<u32, OutOfBounds> {
        let p = self.check(offset, 4, 4)?;
        // SAFETY: in bounds and aligned (checked).
        Ok(u32::from_le(unsafe {
            core::ptr::read_volatile(p as *const u32)
        }))
    }

    /// Writes a little-endian `u32` with a volatile write (no ordering).
    pub fn write_u32(&self, offset: usize, v: u32) -> Result<(), OutOfBounds> {
        let p = self.check(offset, 4, 4)?;
        // SAFETY: in bounds and aligned (checked).
        unsafe { core::ptr::write_volatile(p as *mut u32, v.to_le()) };
        Ok(())
    }

    /// Reads a little-endian `u16` with a volatile read (no ordering).
    pub fn read_u16(&self, offset: usize) -> Result<u16, OutOfBounds> {
        let p = self.check(offset, 2, 2)?;
        // SAFETY: in bounds and aligned (checked).
        Ok(u16::from_le(unsafe {
            core::ptr::read_volatile(p as *const u16)
        }))
    }

    /// Writes a little-endian `u16` with a volatile write (no ordering).
    pub fn write_u16(&self, offset: usize, v: u16) -> Result<(), OutOfBounds> {
        let p = self.check(offset, 2, 2)?;
        // SAFETY: in bounds and aligned (checked).
        unsafe { core::ptr::write_volatile(p as *mut u16, v.to_le()) };
        Ok(())
    }

    /// Copies `dst.len()` bytes out of the region starting at `offset`.
    pub fn read_bytes(&self, offset: usize, dst: &mut [u8]) -> Result<(), OutOfBounds> {
        let p = self.check(offset, dst.len(), 1)?;
        // SAFETY: the source range is inside the region (checked) and `dst` is a distinct Rust
        // buffer. The peer may change the bytes while we copy: the result is then garbage frame
        // data, which every consumer treats as untrusted anyway.
        unsafe { core::ptr::copy_nonoverlapping(p, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    /// Copies `src` into the region starting at `offset`.
    pub fn write_bytes(&self, offset: usize, src: &[u8]) -> Result<(), OutOfBounds> {
        let p = self.check(offset, src.len(), 1)?;
        // SAFETY: the destination range is inside the region (checked) and `src` is a distinct
        // Rust buffer.
        unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), p, src.len()) };
        Ok(())
    }

    /// Fills `[offset, offset + len)` with zero bytes.
    pub fn zero(&self, offset: usize, len: usize) -> Result<(), OutOfBounds> {
        let p = self.check(offset, len, 1)?;
        // SAFETY: the range is inside the region (checked).
        unsafe { core::ptr::write_bytes(p, 0, len) };
        Ok(())
    }

    /// A raw pointer to `[offset, offset + len)`, checked, for zero-copy transfers by a driver
    /// that moves bytes between the region and its own buffers (e.g. net_buf fragments).
    pub fn ptr_range(&self, offset: usize, len: usize) -> Result<*mut u8, OutOfBounds> {
        self.check(offset, len, 1)
    }
}
