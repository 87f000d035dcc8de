//! Which [`ProtocolError`] variants the fuzz inputs reached.
//!
//! Every harness passes each `ProtocolError` it sees to [`record`]. The match in
//! [`variant_index`] names every variant, so adding a variant to `ProtocolError` breaks this
//! build until it is counted here too.

use std::sync::atomic::{AtomicU64, Ordering};

use ivnet_core::ProtocolError;

/// Names of the variants, indexed by [`variant_index`].
pub const VARIANTS: [&str; 9] = [
    "AvailIndexOutOfRange",
    "DescriptorIndexOutOfRange",
    "DescriptorFlags",
    "FrameOutOfBounds",
    "RuntFrame",
    "UsedIndexOutOfRange",
    "OutOfOrderCompletion",
    "InvalidPeerState",
    "OutOfBounds",
];

/// Variants that no peer write can produce through the public API, by design: every access
/// the queues and the v1 control page make is at an offset derived from a geometry checked
/// against the region's length when the queues (or the `V1Region`) are built, so a peer's
/// values never produce an out-of-window access (`ivnet-core/tests/untrusted_peer.rs` shows
/// the variant is produced, and handled, where it can arise: an access outside the window).
pub const UNREACHABLE_BY_PEER: [&str; 1] = ["OutOfBounds"];

/// Position of `e`'s variant in [`VARIANTS`].
pub fn variant_index(e: &ProtocolError) -> usize {
    match e {
        ProtocolError::AvailIndexOutOfRange { .. } => 0,
        ProtocolError::DescriptorIndexOutOfRange { .. } => 1,
        ProtocolError::DescriptorFlags { .. } => 2,
        ProtocolError::FrameOutOfBounds { .. } => 3,
        ProtocolError::RuntFrame { .. } => 4,
        ProtocolError::UsedIndexOutOfRange { .. } => 5,
        ProtocolError::OutOfOrderCompletion { .. } => 6,
        ProtocolError::InvalidPeerState { .. } => 7,
        ProtocolError::OutOfBounds(_) => 8,
    }
}

static COUNTS: [AtomicU64; 9] = [const { AtomicU64::new(0) }; 9];

/// Counts one error.
pub fn record(e: &ProtocolError) {
    COUNTS[variant_index(e)].fetch_add(1, Ordering::Relaxed);
}

/// Counts `r`'s error, if any, and hands `r` back.
pub fn seen<T>(r: Result<T, ProtocolError>) -> Result<T, ProtocolError> {
    if let Err(e) = &r {
        record(e);
    }
    r
}

/// The counts so far, by variant.
pub fn snapshot() -> [u64; 9] {
    core::array::from_fn(|i| COUNTS[i].load(Ordering::Relaxed))
}

/// Sets all counts to zero.
pub fn clear() {
    for c in &COUNTS {
        c.store(0, Ordering::Relaxed);
    }
}
