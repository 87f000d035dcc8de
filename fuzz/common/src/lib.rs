//! Harnesses of the ivnet fuzz targets.
//!
//! Each module is one target: a structure-aware input (an `Input` derived with
//! [`arbitrary::Arbitrary`], mostly a list of operations interleaving what a peer writes into
//! shared memory with calls of the API under test) and `run(&Input)`, which executes it and
//! panics when an invariant breaks. The libFuzzer entry points in `fuzz/fuzz_targets/` only
//! call `run`; the `ivnet-fuzz-replay` tool and this crate's tests replay corpora through the
//! same functions without libFuzzer, and [`tally`] counts the [`ProtocolError`] variants the
//! inputs reached.
//!
//! [`ProtocolError`]: ivnet_core::ProtocolError

pub mod cell;
pub mod client_proto;
pub mod honest;
pub mod observer;
pub mod peer;
pub mod rx;
pub mod state;
pub mod tally;
pub mod tx;
pub mod v1;

/// Section size of the queue targets: a 64-entry queue and a data area of a few frames, so
/// that indices and the data area wrap quickly and each execution is cheap.
pub const SMALL_SECTION: usize = 0x4000;
/// The other section size the queue targets may choose (128 entries).
pub const LARGER_SECTION: usize = 0x8000;

/// Runs the input of target `name` from raw fuzzer bytes (as libFuzzer would hand them),
/// returning false for an unknown target. Used by the replay tool; with `IVNET_FUZZ_DEBUG`
/// set in the environment, prints the structured input first.
pub fn run_bytes(name: &str, data: &[u8]) -> bool {
    fn go<T: for<'a> arbitrary::Arbitrary<'a> + std::fmt::Debug>(data: &[u8], f: fn(&T)) {
        // libfuzzer-sys builds the input with `arbitrary_take_rest`; do the same so that a
        // corpus file means the same input here as in the fuzzer.
        if let Ok(input) = T::arbitrary_take_rest(arbitrary::Unstructured::new(data)) {
            if std::env::var_os("IVNET_FUZZ_DEBUG").is_some() {
                eprintln!("{input:#?}");
            }
            f(&input);
        }
    }
    match name {
        "rx" => go(data, rx::run),
        "tx" => go(data, tx::run),
        "honest" => go(data, honest::run),
        "state" => go(data, state::run),
        "v1" => go(data, v1::run),
        "cell" => go(data, cell::run),
        "observer" => go(data, observer::run),
        "client_proto" => go(data, client_proto::run),
        _ => return false,
    }
    true
}

/// Names of all targets, in the order `run.sh` runs them.
pub const TARGETS: [&str; 8] = [
    "rx",
    "tx",
    "honest",
    "state",
    "v1",
    "cell",
    "observer",
    "client_proto",
];
