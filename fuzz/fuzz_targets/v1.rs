//! libFuzzer entry point of the `v1` target; the harness is
//! [`ivnet_fuzz_common::v1`] (shared with the corpus replay tool and the tests).
#![no_main]

use ivnet_fuzz_common::v1::{run, Input};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: Input| run(&input));
