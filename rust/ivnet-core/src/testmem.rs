//! Plain memory standing in for a shared region in tests (like vm-virtio's `mock` module):
//! the protocol logic runs unchanged over it. Enabled for the crate's own tests and, through
//! the `test-utils` feature, for other crates' tests and fuzz targets.

extern crate alloc;
use alloc::vec::Vec;
use core::cell::UnsafeCell;

use crate::shm::Region;

/// A heap buffer, 8-byte aligned, that hands out [`Region`]s over itself.
pub struct TestMem {
    buf: UnsafeCell<Vec<u64>>,
    len: usize,
}

impl TestMem {
    /// `len` zeroed bytes.
    pub fn new(len: usize) -> Self {
        TestMem {
            buf: UnsafeCell::new(alloc::vec![0u64; len.div_ceil(8)]),
            len,
        }
    }

    /// A region over the whole buffer; valid while `self` lives.
    pub fn region(&self) -> Region {
        // SAFETY: the Vec is never resized, so the pointer stays valid and 8-byte aligned for
        // `len` bytes for as long as `self` lives; all access goes through Region accessors.
        unsafe { Region::new((*self.buf.get()).as_mut_ptr().cast(), self.len) }
    }
}
