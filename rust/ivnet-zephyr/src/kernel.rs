//! Safe kernel objects and calls that zephyr-lang-rust's `zephyr` crate lacks (without
//! CONFIG_RUST_ALLOC): yielding, randomness, halting, allocations that live for the rest of
//! the system's life, and a poll signal. The clock, sleeping, timeouts and the semaphore are
//! the `zephyr` crate's.

use core::cell::UnsafeCell;
use core::mem::{align_of, size_of};

use zephyr::time::Timeout;

use crate::sys;

/// Milliseconds since boot.
pub fn uptime_ms() -> u64 {
    zephyr::sys::uptime_get().max(0) as u64
}

/// Puts the calling thread to sleep for `t`.
pub fn sleep(t: Timeout) {
    zephyr::time::sleep(t);
}

/// Lets the other ready threads of the caller's priority run.
pub fn yield_now() {
    // SAFETY: a plain yield of the calling thread.
    unsafe { sys::k_yield() };
}

/// Fills `buf` with random bytes.
pub fn random(buf: &mut [u8]) {
    // SAFETY: `buf` is valid for writes of its length for the whole call.
    unsafe { sys::sys_rand_get(buf.as_mut_ptr().cast(), buf.len()) };
}

/// Stops the system (the end of a panic).
pub fn halt() -> ! {
    // SAFETY: halting the system is always allowed; it does not return.
    unsafe { sys::k_fatal_halt(0) }
}

/// `n` values made by `f`, moved to the kernel heap and never freed (None when the heap is
/// short). For objects that live as long as the device, which the kernel may point to.
pub fn leak_with<T>(n: usize, mut f: impl FnMut(usize) -> T) -> Option<&'static mut [T]> {
    let bytes = size_of::<T>().checked_mul(n)?.max(1);
    // k_aligned_alloc wants a power-of-two alignment that is a multiple of a pointer's size.
    let align = align_of::<T>().max(size_of::<usize>());
    // SAFETY: k_aligned_alloc returns null or a fresh block of `bytes` bytes aligned to
    // `align`, room for `n` Ts; it is never freed, and every element is written before the
    // slice is made, so the slice is initialised and the only reference to that block.
    unsafe {
        let p = sys::k_aligned_alloc(align, bytes) as *mut T;
        if p.is_null() {
            return None;
        }
        for i in 0..n {
            p.add(i).write(f(i));
        }
        Some(core::slice::from_raw_parts_mut(p, n))
    }
}

/// `v` moved to the kernel heap and never freed (None when the heap is short).
pub fn leak<T>(v: T) -> Option<&'static mut T> {
    let mut v = Some(v);
    leak_with(1, |_| v.take())?[0].as_mut()
}

/// A kernel object: only touched through the kernel's own calls, which are made for
/// concurrent use (threads and ISRs). Made only by this module, already initialised and at
/// its final address (the kernel links objects to themselves, so they must never move).
pub struct KObj<T>(UnsafeCell<T>);

// SAFETY: see the type: every access goes through a kernel call made for concurrent use, and a
// KObj is only handed out as an initialised `&'static`. Only for the kernel objects this
// module wraps.
unsafe impl Sync for KObj<sys::k_poll_signal> {}

/// A poll signal (the doorbell ISR raises it, the link thread waits on it).
pub type PollSignal = KObj<sys::k_poll_signal>;

impl KObj<sys::k_poll_signal> {
    /// A new signal, not raised.
    pub fn leak() -> Option<&'static PollSignal> {
        let s: &'static PollSignal = leak(KObj(UnsafeCell::new(Default::default())))?;
        // SAFETY: `s` is at its final address for ever; the signal is initialised before any
        // other use (this is the only way to obtain one).
        unsafe { sys::k_poll_signal_init(s.0.get()) };
        Some(s)
    }

    /// The kernel object, for a kernel call that keeps it (an ISR's handler registration).
    pub fn raw(&self) -> *mut sys::k_poll_signal {
        self.0.get()
    }

    /// Raises the signal (wakes a waiter; stays raised until [`Self::reset`]).
    pub fn raise(&self) {
        // SAFETY: an initialised signal (see the type).
        unsafe { sys::k_poll_signal_raise(self.0.get(), 0) };
    }

    /// Clears the signal.
    pub fn reset(&self) {
        // SAFETY: an initialised signal (see the type).
        unsafe { sys::k_poll_signal_reset(self.0.get()) };
    }

    /// Waits until the signal is raised (returns at once if it is), or `t` has passed.
    pub fn wait(&self, t: Timeout) {
        let mut ev = sys::k_poll_event::default();
        // SAFETY: `ev` is initialised for our (initialised) signal and outlives k_poll, which
        // unregisters it from the signal before it returns.
        unsafe {
            sys::k_poll_event_init(
                &mut ev,
                sys::IVNET_POLL_TYPE_SIGNAL,
                sys::IVNET_POLL_MODE_NOTIFY_ONLY,
                self.0.get().cast(),
            );
            sys::k_poll(&mut ev, 1, sys::raw(t));
        }
    }
}
