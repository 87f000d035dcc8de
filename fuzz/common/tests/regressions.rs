//! Crashing inputs the fuzzers found, kept in `fuzz/regressions/<target>/` and replayed here
//! (and by `run.sh`, which seeds each corpus with them).

use std::path::Path;

use ivnet_fuzz_common::client_proto::{self, FdKind, Input, Msg, Val};
use ivnet_fuzz_common::{run_bytes, TARGETS};

/// Every kept input runs through its target's harness without breaking an invariant.
/// The client_proto harness counts this process's open descriptors: its runs must not overlap.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn kept_inputs_pass() {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../regressions");
    let mut n = 0;
    for t in TARGETS {
        let Ok(dir) = std::fs::read_dir(root.join(t)) else {
            continue;
        };
        for f in dir {
            let data = std::fs::read(f.unwrap().path()).unwrap();
            assert!(run_bytes(t, &data));
            n += 1;
        }
    }
    assert!(n >= 2, "the kept inputs are missing ({n} found)");
}

/// The server sends one message with three descriptors. `recv_msg` has room for fewer, the
/// kernel truncates the control data (MSG_CTRUNC) after installing two of them, nix's
/// `cmsgs()` then refuses to list them, and the two installed descriptors are never closed.
/// Found by the `client_proto` target (`fuzz/regressions/client_proto/recv-msg-fd-leak-3-fds`);
/// fixed in `rust/ivnet-dataplane/src/proto.rs` (room for SCM_MAX_FD descriptors).
#[test]
fn recv_msg_does_not_leak_descriptors_of_a_truncated_message() {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let input = Input {
        vectors: 0,
        greeting: None,
        script: vec![Msg::Whole(
            Val::Zero,
            vec![
                FdKind::Pipe,
                FdKind::EventFd,
                FdKind::Memfd {
                    size: 0,
                    sealed: false,
                },
            ],
        )],
    };
    client_proto::run_with(&input, 3);
}
