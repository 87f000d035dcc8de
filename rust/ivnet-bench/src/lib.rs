//! # ivnet-bench: tools that measure and attack the data plane
//!
//! - [`core_bench`]: `ivnet bench-core`, a microbenchmark of the protocol core over shared
//!   memory (two threads, one link, no QEMU);
//! - [`hostile`]: the hostile peer of the tests (`ivnet-hostile`): honest, then an attack,
//!   then honest again.
//!
//! The end-to-end benchmark (cells in QEMU against virtio-net) is `scripts/bench.sh`; see
//! docs/benchmark.md.
#![deny(missing_docs)]

pub mod core_bench;
pub mod hostile;
