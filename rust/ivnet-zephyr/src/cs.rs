//! critical-section for Zephyr: one kernel spinlock (interrupts masked on this CPU, the lock
//! taken on SMP). Held only around short queue operations and copies of one frame.

use core::cell::UnsafeCell;

use crate::sys::{k_spin_lock, k_spin_unlock, k_spinlock, k_spinlock_key_t};

struct Lock(UnsafeCell<k_spinlock>);
// SAFETY: the spinlock is only touched through k_spin_lock/k_spin_unlock, which are made for
// concurrent use.
unsafe impl Sync for Lock {}

// SAFETY: an all-zero k_spinlock is the unlocked state (as K_SPINLOCK_DEFINE's static storage).
static LOCK: Lock = Lock(UnsafeCell::new(unsafe { core::mem::zeroed() }));

struct ZephyrCs;
critical_section::set_impl!(ZephyrCs);

// SAFETY: acquire/release pair k_spin_lock/k_spin_unlock on one lock with the key returned by
// the lock, which is what critical-section requires. The driver never nests sections (a
// nested k_spin_lock of the same lock would deadlock on SMP).
unsafe impl critical_section::Impl for ZephyrCs {
    unsafe fn acquire() -> critical_section::RawRestoreState {
        // SAFETY: LOCK is a valid, static spinlock.
        let key = unsafe { k_spin_lock(LOCK.0.get()) };
        key.key as u32
    }

    unsafe fn release(state: critical_section::RawRestoreState) {
        let key = k_spinlock_key_t { key: state as i32 };
        // SAFETY: `state` is the key our acquire returned for the same lock.
        unsafe { k_spin_unlock(LOCK.0.get(), key) };
    }
}
