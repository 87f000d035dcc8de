//! libFuzzer entry point of the `cell` target; the harness is
//! [`ivnet_fuzz_common::cell`] (shared with the corpus replay tool and the tests).
#![no_main]

use ivnet_fuzz_common::cell::{run, Input};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: Input| run(&input));
