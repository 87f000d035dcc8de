//! libFuzzer entry point of the `honest` target; the harness is
//! [`ivnet_fuzz_common::honest`] (shared with the corpus replay tool and the tests).
#![no_main]

use ivnet_fuzz_common::honest::{run, Input};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: Input| run(&input));
