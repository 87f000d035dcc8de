//! # ivnet-core: the ivshmem-net wire protocol over untrusted shared memory
//!
//! `#![no_std]`, no allocation. This crate holds everything two ivshmem-net peers must agree
//! on, as small pieces that the Zephyr driver and the host peer share:
//!
//! - [`shm`]: the one module that reads and writes shared memory, bounds-checked;
//! - [`geometry`]: where the virtqueue and the data area sit in an output section;
//! - [`queue`]: the TX and RX split virtqueues with swapped used rings and event indices;
//! - [`state`]: the RESET/INIT/READY/RUN link state machine as a pure function;
//! - [`endpoint`]: one end of a link, that state machine over a transport's state words and
//!   the queues, as every program runs it;
//! - [`liveness`]: judging a peer that stays in RUN but stops completing frames;
//! - [`mac`]: the one MAC address type (parsed, checked and printed the same everywhere);
//! - [`ratelimit`]: one log message per interval for errors a peer can trigger;
//! - [`cell`]: the configuration file the host hands a cell (MAC, addresses) through fw_cfg;
//! - [`v1`]: the control page that lets the protocol run on upstream QEMU's ivshmem-doorbell;
//! - [`v2`]: the state table and output sections of ivshmem 2.0 (Jailhouse, QEMU `ivshmem2`).
//!
//! Everything the peer writes is validated before use; each violation is a
//! [`ProtocolError`] variant (the caller logs it and resets the link), never a panic.
//!
//! ```
//! use ivnet_core::{queue::Queues, testmem::TestMem};
//! let size = 0x7f000;
//! let (a, b) = (TestMem::new(size), TestMem::new(size));
//! let mut left = Queues::new(a.region(), b.region(), vec![0u32; 2048]).unwrap();
//! let mut right = Queues::new(b.region(), a.region(), vec![0u32; 2048]).unwrap();
//! left.reset().unwrap();
//! right.reset().unwrap();
//! assert!(left.tx.send(&[0xab; 60]).unwrap());
//! left.tx.publish().unwrap();
//! let mut buf = [0u8; 1514];
//! assert_eq!(right.rx.recv(&mut buf).unwrap(), Some(60));
//! right.rx.publish().unwrap();
//! assert_eq!(left.tx.reclaim().unwrap(), 1);
//! ```
#![cfg_attr(not(any(test, feature = "test-utils")), no_std)]
#![deny(missing_docs)]

pub mod cell;
pub mod endpoint;
pub mod error;
pub mod geometry;
pub mod liveness;
pub mod mac;
pub mod queue;
pub mod ratelimit;
pub mod shm;
pub mod state;
#[cfg(any(test, feature = "test-utils"))]
pub mod testmem;
pub mod v1;
pub mod v2;

pub use error::ProtocolError;
