//! `ivnet-fuzz-replay`: runs corpus files through the fuzz harnesses without libFuzzer and
//! reports which `ProtocolError` variants they reached.
//!
//! ```text
//! ivnet-fuzz-replay CORPUS_ROOT          # every target, from CORPUS_ROOT/<target>/
//! ivnet-fuzz-replay CORPUS_ROOT rx tx    # only these targets
//! ```
//!
//! Exits 1 when, over all targets, a variant that a peer can cause was not reached (those no peer can
//! cause are listed in `tally::UNREACHABLE_BY_PEER` and reported, not required), 2 on a usage
//! error. A failing invariant panics, as in the fuzzer.

use std::path::Path;
use std::process::ExitCode;

use ivnet_fuzz_common::tally::{self, UNREACHABLE_BY_PEER, VARIANTS};
use ivnet_fuzz_common::{run_bytes, TARGETS};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(root) = args.first() else {
        eprintln!("usage: ivnet-fuzz-replay CORPUS_ROOT [TARGET...]");
        return ExitCode::from(2);
    };
    let targets: Vec<&str> = if args.len() > 1 {
        args[1..].iter().map(String::as_str).collect()
    } else {
        TARGETS.to_vec()
    };
    let mut total = [0u64; 9];
    println!("{:<14} {:>8}  variants reached", "target", "inputs");
    for t in targets {
        let dir = Path::new(root).join(t);
        let mut files: Vec<_> = match std::fs::read_dir(&dir) {
            Ok(d) => d.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(_) => Vec::new(),
        };
        files.sort();
        tally::clear();
        for f in &files {
            let data = std::fs::read(f).unwrap_or_default();
            if !run_bytes(t, &data) {
                eprintln!("unknown target {t}");
                return ExitCode::from(2);
            }
        }
        let counts = tally::snapshot();
        let reached: Vec<&str> = (0..9)
            .filter(|&i| counts[i] > 0)
            .map(|i| VARIANTS[i])
            .collect();
        println!("{t:<14} {:>8}  {}", files.len(), reached.join(" "));
        for i in 0..9 {
            total[i] += counts[i];
        }
    }
    println!("\nProtocolError variant           errors seen");
    let mut missing = 0;
    for (i, name) in VARIANTS.iter().enumerate() {
        let note = if UNREACHABLE_BY_PEER.contains(name) {
            "  (not reachable by a peer, by design)"
        } else if total[i] == 0 {
            missing += 1;
            "  NOT REACHED"
        } else {
            ""
        };
        println!("{name:<30} {:>12}{note}", total[i]);
    }
    if missing > 0 {
        println!("{missing} variant(s) not reached");
        // Only a replay of every target is expected to reach them all.
        if args.len() == 1 {
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}
