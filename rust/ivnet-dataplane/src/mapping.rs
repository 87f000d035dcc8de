//! Shared memory for the host side: a memfd of the link's size, and mappings of it.

use std::io;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;

use ivnet_core::shm::Region;
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

/// A shared mapping of a file descriptor (the link's memfd), unmapped on drop.
pub struct Mapping {
    ptr: NonNull<libc::c_void>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; all access goes through `Region` accessors,
// which are designed for concurrent writers.
unsafe impl Send for Mapping {}
// SAFETY: see `Send`.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd` read-write and shared.
    pub fn new(fd: &impl AsFd, len: usize) -> io::Result<Mapping> {
        let nz = NonZeroUsize::new(len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty shared memory"))?;
        // SAFETY: a fresh shared mapping chosen by the kernel; it aliases no Rust object.
        let ptr = unsafe {
            mmap(
                None,
                nz,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd.as_fd(),
                0,
            )
        }?;
        Ok(Mapping { ptr, len })
    }

    /// The whole mapping as a shared-memory region, borrowing the mapping.
    pub fn region(&self) -> Region<'_> {
        // SAFETY: the mapping is page aligned and `len` bytes long, and stays mapped as long as
        // `self` lives, which the returned lifetime enforces.
        unsafe { Region::new(self.ptr.as_ptr().cast(), self.len) }
    }

    /// The whole mapping as a region of any lifetime.
    ///
    /// # Safety
    /// The caller must not use the region (or anything built on it) after this mapping is
    /// dropped. The memory itself never moves while mapped, so moving the `Mapping` is fine.
    pub unsafe fn region_unbounded<'a>(&self) -> Region<'a> {
        // SAFETY: as for `region`, with the lifetime vouched for by the caller.
        unsafe { Region::new(self.ptr.as_ptr().cast(), self.len) }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for an empty mapping (never, in practice).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: we mapped exactly this range in `new` and nothing uses it after drop.
        let _ = unsafe { munmap(self.ptr, self.len) };
    }
}

/// Creates an anonymous memfd of `len` bytes (zero-filled), sealed against shrinking and
/// growing (and against removing the seals). Every peer maps this memory; without the seal, a
/// peer (a QEMU, a host peer) could `ftruncate` it and every other process that maps it would
/// get SIGBUS at its next access beyond the new end, the supervisor included.
pub fn memfd(name: &str, len: usize) -> io::Result<OwnedFd> {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
    let cname = std::ffi::CString::new(name).map_err(|_| io::ErrorKind::InvalidInput)?;
    let fd = memfd_create(
        &cname,
        MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
    )?;
    nix::unistd::ftruncate(&fd, len as libc::off_t)?;
    fcntl(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL,
        ),
    )?;
    Ok(fd)
}

/// Whether the file behind `fd` is sealed against shrinking (a memfd from an ivnet server is;
/// other servers' memory may not be).
pub fn sealed_against_shrinking(fd: &impl AsFd) -> bool {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    fcntl(
        std::os::fd::AsRawFd::as_raw_fd(&fd.as_fd()),
        FcntlArg::F_GET_SEALS,
    )
    .map(|s| SealFlag::from_bits_truncate(s).contains(SealFlag::F_SEAL_SHRINK))
    .unwrap_or(false)
}

/// Size of the file behind `fd`.
pub fn fd_size(fd: &impl AsFd) -> io::Result<usize> {
    let st = nix::sys::stat::fstat(std::os::fd::AsRawFd::as_raw_fd(&fd.as_fd()))?;
    Ok(st.st_size as usize)
}
