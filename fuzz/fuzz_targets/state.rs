//! libFuzzer entry point of the `state` target; the harness is
//! [`ivnet_fuzz_common::state`] (shared with the corpus replay tool and the tests).
#![no_main]

use ivnet_fuzz_common::state::{run, Input};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: Input| run(&input));
