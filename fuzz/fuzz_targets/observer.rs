//! libFuzzer entry point of the `observer` target; the harness is
//! [`ivnet_fuzz_common::observer`] (shared with the corpus replay tool and the tests).
#![no_main]

use ivnet_fuzz_common::observer::{run, Input};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: Input| run(&input));
