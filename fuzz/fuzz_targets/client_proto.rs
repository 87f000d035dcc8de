//! libFuzzer entry point of the `client_proto` target; the harness is
//! [`ivnet_fuzz_common::client_proto`] (shared with the corpus replay tool and the tests).
#![no_main]

use ivnet_fuzz_common::client_proto::{run, Input};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: Input| run(&input));
