//! Frame copies between shared memory and network buffers.
//!
//! Zephyr's minimal libc `memcpy` copies word by word only when source and destination share
//! their alignment, and byte by byte otherwise. Network buffers of `NET_BUF_DATA_SIZE=1500`
//! bytes sit at every other 8-byte boundary, so half of all frames took the byte loop: in an
//! emulated guest that was the largest single cost of a received frame. On ARM64 both the
//! shared memory (mapped write-back cacheable) and network buffers are normal memory, where
//! unaligned loads and stores are allowed (Zephyr clears SCTLR_EL1.A), so the copy moves 32
//! bytes per iteration whatever the alignment.

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
    let rest = n % 32;
    // SAFETY: the last `rest` bytes of both ranges (per the caller's contract).
    unsafe { core::ptr::copy_nonoverlapping(s, d, rest) };
}

/// Copies `n` bytes from `src` to `dst` (other architectures: the C library's memcpy).
///
/// # Safety
/// As for `core::ptr::copy_nonoverlapping`.
#[cfg(not(target_arch = "aarch64"))]
pub unsafe fn copy(dst: *mut u8, src: *const u8, n: usize) {
    // SAFETY: per the caller's contract.
    unsafe { core::ptr::copy_nonoverlapping(src, dst, n) };
}
