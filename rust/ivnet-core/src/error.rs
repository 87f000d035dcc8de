//! Errors: each way the peer's shared memory can be wrong is its own variant.

use crate::shm::OutOfBounds;

/// Something the peer wrote (or the layout we were given) violates the protocol. Each of these
/// calls for a logged error and a link reset; none of them is a reason to panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolError {
    /// The peer's avail index moved further than the queue length past what we consumed.
    AvailIndexOutOfRange {
        /// Our last consumed avail index.
        last: u16,
        /// The index the peer published.
        published: u16,
    },
    /// An avail ring entry names a descriptor index outside the queue.
    DescriptorIndexOutOfRange {
        /// The index found in the ring.
        index: u32,
    },
    /// A descriptor carries flags (chains, indirect, write-only) the protocol does not use.
    DescriptorFlags {
        /// Descriptor index.
        index: u16,
        /// The flags found.
        flags: u16,
    },
    /// A descriptor's frame lies (partly) outside the peer's data area.
    FrameOutOfBounds {
        /// Descriptor index.
        index: u16,
        /// Offset from the start of the section.
        addr: u64,
        /// Frame length.
        len: u32,
    },
    /// A descriptor's frame is shorter than an Ethernet header.
    RuntFrame {
        /// Descriptor index.
        index: u16,
        /// Frame length.
        len: u32,
    },
    /// The peer's used index moved past frames we have in flight.
    UsedIndexOutOfRange {
        /// Our last seen used index.
        last: u16,
        /// The index the peer published.
        published: u16,
        /// Frames we have in flight.
        in_flight: u16,
    },
    /// A used element completes a descriptor other than the oldest one in flight.
    OutOfOrderCompletion {
        /// The descriptor we expected to be completed.
        expected: u16,
        /// The id the peer wrote.
        got: u32,
    },
    /// The peer's state word holds no known state.
    InvalidPeerState {
        /// The raw value.
        raw: u32,
    },
    /// An access fell outside the shared memory window (a layout bug or a bad size).
    OutOfBounds(OutOfBounds),
}

impl From<OutOfBounds> for ProtocolError {
    fn from(e: OutOfBounds) -> Self {
        ProtocolError::OutOfBounds(e)
    }
}

impl core::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        use ProtocolError::*;
        match *self {
            AvailIndexOutOfRange { last, published } => write!(
                f,
                "peer avail index {published} is more than a queue ahead of {last}"
            ),
            DescriptorIndexOutOfRange { index } => {
                write!(
                    f,
                    "peer avail ring names descriptor {index}, outside the queue"
                )
            }
            DescriptorFlags { index, flags } => {
                write!(
                    f,
                    "peer descriptor {index} has unsupported flags {flags:#x}"
                )
            }
            FrameOutOfBounds { index, addr, len } => write!(
                f,
                "peer descriptor {index}: frame at {addr:#x}+{len} outside the data area"
            ),
            RuntFrame { index, len } => {
                write!(
                    f,
                    "peer descriptor {index}: frame of {len} bytes is too short"
                )
            }
            UsedIndexOutOfRange {
                last,
                published,
                in_flight,
            } => write!(
                f,
                "peer used index {published} is past {last} + {in_flight} frames in flight"
            ),
            OutOfOrderCompletion { expected, got } => write!(
                f,
                "peer completed descriptor {got}, expected {expected} (in order)"
            ),
            InvalidPeerState { raw } => write!(f, "peer state word holds {raw:#x}"),
            OutOfBounds(e) => write!(
                f,
                "shared memory access at {:#x}+{} out of bounds",
                e.offset, e.len
            ),
        }
    }
}
