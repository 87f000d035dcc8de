//! libFuzzer entry point of the `tx` target; the harness is
//! [`ivnet_fuzz_common::tx`] (shared with the corpus replay tool and the tests).
#![no_main]

use ivnet_fuzz_common::tx::{run, Input};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: Input| run(&input));
