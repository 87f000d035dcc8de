//! Frame copies between shared memory and network buffers.
//!
//! Zephyr's minimal libc `memcpy` copies word by word only when source and destination share
//! their alignment, and byte by byte otherwise. Network buffers of `NET_BUF_DATA_SIZE=1500`
//! bytes sit at every other 8-byte boundary, so half of all frames took the byte loop: in an
//! emulated guest that was the largest single cost of a received frame. On ARM64 both the
//! shared memory (mapped write-back cacheable) and network buffers are normal memory, where
//! unaligned loads and stores are allowed (Zephyr clears SCTLR_EL1.A), so the copy moves 32
//! bytes per iteration whatever the alignment.
//!
//! One side of every copy is memory the peer may write at any moment. The copy is therefore
//! never a plain Rust access (which would be a data race, undefined behaviour): the bulk is
//! assembly, opaque to the compiler, and the last bytes are relaxed atomic accesses.

/// Copies `n` bytes from `src` to `dst`.
///
/// # Safety
/// `src` must be valid for reads and `dst` for writes of `n` bytes, both in normal memory,
/// and the two ranges must not overlap.
#[cfg(target_arch = "aarch64")]
pub unsafe fn copy(dst: *mut u8, src: *const u8, n: usize) {
    let blocks = n / 32;
    let (mut d, mut s) = (dst, src);
    if blocks > 0 {
        // SAFETY: the loop reads `blocks * 32` bytes from `src` and writes as many to `dst`,
        // within the ranges the caller vouches for; unaligned LDP/STP are allowed on normal
        // memory. It clobbers only the registers declared here and touches no stack.
        unsafe {
            core::arch::asm!(
                "2:",
                "ldp {a}, {b}, [{s}], #16",
                "ldp {c}, {e}, [{s}], #16",
                "stp {a}, {b}, [{d}], #16",
                "stp {c}, {e}, [{d}], #16",
                "subs {k}, {k}, #1",
                "b.ne 2b",
                s = inout(reg) s,
                d = inout(reg) d,
                k = inout(reg) blocks => _,
                a = out(reg) _,
                b = out(reg) _,
                c = out(reg) _,
                e = out(reg) _,
                options(nostack),
            );
        }
    }
    // SAFETY: the last `n % 32` bytes of both ranges (per the caller's contract).
    unsafe { copy_bytes_atomic(d, s, n % 32) };
}

/// Copies `n` bytes one relaxed atomic byte at a time.
///
/// # Safety
/// As for [`copy`].
unsafe fn copy_bytes_atomic(dst: *mut u8, src: *const u8, n: usize) {
    use core::sync::atomic::{AtomicU8, Ordering};
    for i in 0..n {
        // SAFETY: `i < n`, inside both ranges the caller vouches for; AtomicU8 has u8's
        // layout and alignment.
        unsafe {
            let v = AtomicU8::from_ptr(src.add(i) as *mut u8).load(Ordering::Relaxed);
            AtomicU8::from_ptr(dst.add(i)).store(v, Ordering::Relaxed);
        }
    }
}

/// Copies `n` bytes from `src` to `dst` (other architectures: atomic bytes).
///
/// # Safety
/// `src` must be valid for reads and `dst` for writes of `n` bytes, and the two ranges must
/// not overlap.
#[cfg(not(target_arch = "aarch64"))]
pub unsafe fn copy(dst: *mut u8, src: *const u8, n: usize) {
    // SAFETY: per the caller's contract.
    unsafe { copy_bytes_atomic(dst, src, n) };
}
