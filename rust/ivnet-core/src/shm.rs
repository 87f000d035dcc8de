//! The one place that touches shared memory.
//!
//! A [`Region`] is a bounds-checked window onto memory that another party (the peer VM, the
//! host peer, a hypervisor) may write at any time. Every access goes through an accessor that
//! checks the offset and the length against the window, so that a bad value read from the peer
//! can at worst produce an [`OutOfBounds`] error, never an access outside the window.
//!
//! Every access is atomic: ring indices with explicit ordering (`Acquire` for what the peer
//! publishes, `Release` for what we publish), descriptor fields and frame bytes `Relaxed`
//! (frame bytes in aligned 8-byte words where possible), never plain loads or `memcpy`: the
//! peer may write any byte at any time, and to Rust a non-atomic access racing with a write
//! (plain or volatile, within one process, as in the tests and `ivnet bench-core`, whose two
//! ends share one memfd) is undefined behaviour. Relaxed atomic loads and stores compile to
//! the same instructions as plain ones on the targets used here. Code that hands a region's
//! bytes to something outside Rust (a system call, assembly) takes a raw pointer from
//! [`Region::ptr_range`].
//!
//! A `Region<'a>` borrows the memory for `'a`: [`crate::testmem::TestMem::region`] and the
//! host's mappings hand out regions that cannot outlive them, so safe code cannot use a region
//! after its memory is gone. Only [`Region::new`] (unsafe) chooses a lifetime freely, e.g.
//! `'static` for device memory mapped for the life of the system.
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

use core::cell::UnsafeCell;
use core::marker::PhantomData;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};

/// An access that would fall (partly) outside a [`Region`], or is misaligned for its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfBounds {
    /// Offset of the attempted access, relative to the region.
    pub offset: usize,
    /// Length of the attempted access in bytes.
    pub len: usize,
}

/// A window onto shared memory, valid for `'a`. Cheap to copy; it does not own the memory.
#[derive(Debug, Clone, Copy)]
pub struct Region<'a> {
    base: NonNull<u8>,
    len: usize,
    /// Borrows shared (interior-mutable) bytes for `'a`.
    _mem: PhantomData<&'a UnsafeCell<[u8]>>,
}

// SAFETY: a Region is only a bounds-checked pointer into memory that is shared by design; every
// access is atomic (see the module docs), so moving or sharing the window between threads adds
// no data race; what the other side writes is validated as the protocol requires.
unsafe impl Send for Region<'_> {}
// SAFETY: see `Send` above.
unsafe impl Sync for Region<'_> {}

impl<'a> Region<'a> {
    /// Wraps `len` bytes of shared memory at `base`.
    ///
    /// # Safety
    /// `base` must be non-null, aligned to 8 bytes, and valid for reads and writes of `len`
    /// bytes for all of `'a` (the caller chooses `'a`: no longer than the memory lives). Other
    /// parties may write the memory concurrently; no Rust reference to it may exist.
    pub unsafe fn new(base: *mut u8, len: usize) -> Self {
        debug_assert!(base as usize % 8 == 0);
        Region {
            base: NonNull::new(base).expect("Region::new: null base"),
            len,
            _mem: PhantomData,
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
    pub fn sub(&self, offset: usize, len: usize) -> Result<Region<'a>, OutOfBounds> {
        let p = self.check(offset, len, 1)?;
        // `check` proved the sub-window lies inside ours, so `p` is derived from a non-null
        // in-bounds pointer. The alignment of the base is only relied on by the aligned
        // accessors, which check the alignment of the final address themselves.
        Ok(Region {
            base: NonNull::new(p).ok_or(OutOfBounds { offset, len })?,
            len,
            _mem: PhantomData,
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

    /// Reads a little-endian `u64` (a descriptor address), relaxed (no ordering).
    pub fn read_u64(&self, offset: usize) -> Result<u64, OutOfBounds> {
        let p = self.check(offset, 8, 8)?;
        // SAFETY: in bounds and 8-byte aligned (checked), AtomicU64's layout is u64's, and all
        // accesses to shared memory are atomic.
        Ok(u64::from_le(
            unsafe { AtomicU64::from_ptr(p as *mut u64) }.load(Ordering::Relaxed),
        ))
    }

    /// Writes a little-endian `u64`, relaxed (no ordering).
    pub fn write_u64(&self, offset: usize, v: u64) -> Result<(), OutOfBounds> {
        let p = self.check(offset, 8, 8)?;
        // SAFETY: as for `read_u64`.
        unsafe { AtomicU64::from_ptr(p as *mut u64) }.store(v.to_le(), Ordering::Relaxed);
        Ok(())
    }

    /// Reads a little-endian `u32`, relaxed (no ordering).
    pub fn read_u32(&self, offset: usize) -> Result<u32, OutOfBounds> {
        let p = self.check(offset, 4, 4)?;
        // SAFETY: in bounds and 4-byte aligned (checked); AtomicU32's layout is u32's.
        Ok(u32::from_le(
            unsafe { AtomicU32::from_ptr(p as *mut u32) }.load(Ordering::Relaxed),
        ))
    }

    /// Writes a little-endian `u32`, relaxed (no ordering).
    pub fn write_u32(&self, offset: usize, v: u32) -> Result<(), OutOfBounds> {
        let p = self.check(offset, 4, 4)?;
        // SAFETY: as for `read_u32`.
        unsafe { AtomicU32::from_ptr(p as *mut u32) }.store(v.to_le(), Ordering::Relaxed);
        Ok(())
    }

    /// Reads a little-endian `u16`, relaxed (no ordering).
    pub fn read_u16(&self, offset: usize) -> Result<u16, OutOfBounds> {
        let p = self.check(offset, 2, 2)?;
        // SAFETY: in bounds and 2-byte aligned (checked); AtomicU16's layout is u16's.
        Ok(u16::from_le(
            unsafe { AtomicU16::from_ptr(p as *mut u16) }.load(Ordering::Relaxed),
        ))
    }

    /// Writes a little-endian `u16`, relaxed (no ordering).
    pub fn write_u16(&self, offset: usize, v: u16) -> Result<(), OutOfBounds> {
        let p = self.check(offset, 2, 2)?;
        // SAFETY: as for `read_u16`.
        unsafe { AtomicU16::from_ptr(p as *mut u16) }.store(v.to_le(), Ordering::Relaxed);
        Ok(())
    }

    /// Copies `dst.len()` bytes out of the region starting at `offset`, with relaxed atomic
    /// reads.
    /// The peer may change the bytes while we copy: the result is then garbage frame data,
    /// which every consumer treats as untrusted anyway.
    pub fn read_bytes(&self, offset: usize, dst: &mut [u8]) -> Result<(), OutOfBounds> {
        let p = self.check(offset, dst.len(), 1)?;
        // SAFETY: the source range is inside the region (checked); `dst` is a distinct Rust
        // buffer of that length.
        unsafe { atomic_copy_from(p, dst) };
        Ok(())
    }

    /// Copies `src` into the region starting at `offset`, with relaxed atomic writes.
    pub fn write_bytes(&self, offset: usize, src: &[u8]) -> Result<(), OutOfBounds> {
        let p = self.check(offset, src.len(), 1)?;
        // SAFETY: the destination range is inside the region (checked); `src` is a distinct
        // Rust buffer of that length.
        unsafe { atomic_copy_to(p, src) };
        Ok(())
    }

    /// Fills `[offset, offset + len)` with zero bytes, with relaxed atomic writes.
    pub fn zero(&self, offset: usize, len: usize) -> Result<(), OutOfBounds> {
        let p = self.check(offset, len, 1)?;
        let head = p.align_offset(8).min(len);
        let words = (len - head) / 8;
        for i in (0..head).chain(head + 8 * words..len) {
            // SAFETY: `p + i` is inside the checked range.
            unsafe { store8(p.add(i), 0) };
        }
        for w in 0..words {
            // SAFETY: `p + head + 8w` is 8-byte aligned and 8 bytes of it are in range.
            unsafe { store64(p.add(head + 8 * w), 0) };
        }
        Ok(())
    }

    /// A raw pointer to `[offset, offset + len)`, checked, for zero-copy transfers by a driver
    /// that moves bytes between the region and its own buffers (e.g. net_buf fragments).
    pub fn ptr_range(&self, offset: usize, len: usize) -> Result<*mut u8, OutOfBounds> {
        self.check(offset, len, 1)
    }
}

/// A relaxed atomic load of the byte at `p`.
///
/// # Safety
/// `p` must be valid for reads of one byte, accessed only atomically by everyone.
#[inline(always)]
unsafe fn load8(p: *const u8) -> u8 {
    // SAFETY: per the contract; AtomicU8 has u8's layout and alignment.
    unsafe { AtomicU8::from_ptr(p as *mut u8) }.load(Ordering::Relaxed)
}

/// A relaxed atomic store of `v` to the byte at `p` (contract as for [`load8`], for writes).
#[inline(always)]
unsafe fn store8(p: *mut u8, v: u8) {
    // SAFETY: per the contract.
    unsafe { AtomicU8::from_ptr(p) }.store(v, Ordering::Relaxed)
}

/// A relaxed atomic load of the 8-byte word at `p` (8-byte aligned; contract as [`load8`]).
#[inline(always)]
unsafe fn load64(p: *const u8) -> u64 {
    // SAFETY: per the contract; AtomicU64 has u64's layout, and `p` is 8-byte aligned.
    unsafe { AtomicU64::from_ptr(p as *mut u64) }.load(Ordering::Relaxed)
}

/// A relaxed atomic store to the 8-byte word at `p` (8-byte aligned; contract as [`store8`]).
#[inline(always)]
unsafe fn store64(p: *mut u8, v: u64) {
    // SAFETY: per the contract.
    unsafe { AtomicU64::from_ptr(p as *mut u64) }.store(v, Ordering::Relaxed)
}

/// Copies `dst.len()` bytes from shared memory at `src` into `dst` with relaxed atomic reads:
/// bytes up to the first 8-byte boundary of `src`, then aligned 8-byte words, then the tail.
///
/// # Safety
/// `src` must be valid for reads of `dst.len()` bytes and must not overlap `dst`.
unsafe fn atomic_copy_from(src: *const u8, dst: &mut [u8]) {
    let n = dst.len();
    let head = src.align_offset(8).min(n);
    let words = (n - head) / 8;
    for (i, d) in dst[..head].iter_mut().enumerate() {
        // SAFETY: `i < n`, inside the caller's range.
        *d = unsafe { load8(src.add(i)) };
    }
    for w in 0..words {
        let at = head + 8 * w;
        // SAFETY: `src + at` is 8-byte aligned (past `head`) and 8 bytes of it are in range.
        let v = unsafe { load64(src.add(at)) };
        dst[at..at + 8].copy_from_slice(&v.to_ne_bytes());
    }
    for (i, d) in dst.iter_mut().enumerate().skip(head + 8 * words) {
        // SAFETY: `i < n`, inside the caller's range.
        *d = unsafe { load8(src.add(i)) };
    }
}

/// Copies `src` into shared memory at `dst` with relaxed atomic writes (as
/// [`atomic_copy_from`]).
///
/// # Safety
/// `dst` must be valid for writes of `src.len()` bytes and must not overlap `src`.
unsafe fn atomic_copy_to(dst: *mut u8, src: &[u8]) {
    let n = src.len();
    let head = dst.align_offset(8).min(n);
    let words = (n - head) / 8;
    for (i, b) in src[..head].iter().enumerate() {
        // SAFETY: `i < n`, inside the caller's range.
        unsafe { store8(dst.add(i), *b) };
    }
    for w in 0..words {
        let at = head + 8 * w;
        let v = u64::from_ne_bytes(src[at..at + 8].try_into().expect("8 bytes"));
        // SAFETY: `dst + at` is 8-byte aligned (past `head`) and 8 bytes of it are in range.
        unsafe { store64(dst.add(at), v) };
    }
    for (i, b) in src.iter().enumerate().skip(head + 8 * words) {
        // SAFETY: `i < n`, inside the caller's range.
        unsafe { store8(dst.add(i), *b) };
    }
}

#[cfg(test)]
mod tests {
    use crate::testmem::TestMem;

    #[test]
    fn copies_are_exact_at_every_alignment_and_length() {
        let m = TestMem::new(256);
        let r = m.region();
        for off in 0..16 {
            for len in [0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 100] {
                let src: [u8; 100] = core::array::from_fn(|i| (i * 7 + off + len) as u8);
                let src = &src[..len.min(100)];
                r.zero(0, 256).unwrap();
                r.write_bytes(off, src).unwrap();
                let mut back = [0u8; 100];
                r.read_bytes(off, &mut back[..src.len()]).unwrap();
                assert_eq!(&back[..src.len()], src, "offset {off} len {len}");
                // Nothing outside the range was touched.
                let mut all = [0u8; 256];
                r.read_bytes(0, &mut all).unwrap();
                assert!(all[..off].iter().all(|&b| b == 0));
                assert!(all[off + src.len()..].iter().all(|&b| b == 0));
            }
        }
    }

    #[test]
    fn accesses_outside_the_window_are_refused() {
        let m = TestMem::new(64);
        let r = m.region();
        let mut buf = [0u8; 8];
        assert!(r.read_bytes(60, &mut buf).is_err());
        assert!(r.write_bytes(usize::MAX - 2, &buf).is_err());
        assert!(r.zero(65, 0).is_err());
        assert!(r.sub(32, 33).is_err());
        assert!(r.load_u32(2).is_err(), "misaligned");
        assert!(r.ptr_range(64, 1).is_err());
        assert!(r.ptr_range(64, 0).is_ok());
    }
}
