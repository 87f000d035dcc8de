//! Plain memory standing in for a shared region in tests (like vm-virtio's `mock` module):
//! the protocol logic runs unchanged over it. Enabled for the crate's own tests and, through
//! the `test-utils` feature, for other crates' tests and fuzz targets.
//!
//! A region borrows its memory, so using one after the memory is gone does not compile:
//!
//! ```compile_fail
//! use ivnet_core::testmem::TestMem;
//! let r = TestMem::new(64).region(); // the TestMem is dropped at the end of this statement
//! r.store_u32(0, 1).unwrap();
//! ```
//!
//! ```compile_fail
//! use ivnet_core::{shm::Region, testmem::TestMem};
//! let mut saved: Option<Region<'static>> = None;
//! let m = TestMem::new(64);
//! saved = Some(m.region()); // would outlive `m`
//! ```

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

    /// A region over the whole buffer, borrowing it (it cannot outlive `self`).
    pub fn region(&self) -> Region<'_> {
        // SAFETY: the Vec is never resized, so the pointer stays valid and 8-byte aligned for
        // `len` bytes for as long as `self` lives, which the returned lifetime enforces; all
        // access goes through Region accessors.
        unsafe { Region::new((*self.buf.get()).as_mut_ptr().cast(), self.len) }
    }
}
