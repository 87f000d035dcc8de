//! Unit tests of [`super`].

use super::*;

#[test]
fn verify_catches_every_kind_of_bad_frame() {
    let p = pattern(1500);
    let mut f = vec![0u8; 1500];
    let make = |f: &mut Vec<u8>, seq: u64, len: usize| {
        f[..SEQ_BYTES].copy_from_slice(&seq.to_le_bytes());
        f[SEQ_BYTES..len].copy_from_slice(body(&p, seq, len));
    };
    make(&mut f, 7, 1500);
    assert!(verify(&p, &f, 1500, 1500, 7).is_ok());
    assert!(verify(&p, &f, 1499, 1500, 7)
        .unwrap_err()
        .contains("received 1499 bytes"));
    assert!(verify(&p, &f, 1500, 1500, 6)
        .unwrap_err()
        .contains("lost, duplicated or reordered"));
    f[1000] ^= 1;
    assert!(verify(&p, &f, 1500, 1500, 7)
        .unwrap_err()
        .contains("byte 1000"));
    // A stale copy of the frame one ring (or any other distance) earlier is caught by its
    // sequence number, and its body differs too.
    make(&mut f, 8, 64);
    let old = f.clone();
    make(&mut f, 8 + 2048, 64);
    assert_ne!(old[SEQ_BYTES..64], f[SEQ_BYTES..64]);
}

#[test]
fn settings_are_checked() {
    let ok = Config {
        seconds: 1.0,
        sizes: vec![64, 1500],
        shm_size: 1 << 20,
        wait: WaitMode::Eventfd,
    };
    assert!(ok.validate().is_ok());
    let bad = |f: fn(&mut Config)| {
        let mut c = ok.clone();
        f(&mut c);
        c.validate().unwrap_err()
    };
    assert!(bad(|c| c.sizes = vec![13]).contains("13 bytes"));
    assert!(bad(|c| c.sizes = vec![]).contains("at least one"));
    assert!(bad(|c| c.seconds = 0.0).contains("--seconds"));
    assert!(bad(|c| c.shm_size = 3 << 20).contains("power of two"));
    assert!(bad(|c| {
        c.shm_size = 1 << 16;
        c.sizes = vec![65535];
    })
    .contains("does not fit"));
    assert_eq!("spin".parse(), Ok(WaitMode::Spin));
    assert!("busy".parse::<WaitMode>().is_err());
}

/// A short real run in both wait modes: frames flow, all verified, none lost.
#[test]
fn short_runs_move_verified_frames() {
    let stop = AtomicBool::new(false);
    for wait in [WaitMode::Eventfd, WaitMode::Spin] {
        for size in [64, 1500] {
            let r = run_frames(1 << 20, size, Duration::from_millis(150), wait, &stop)
                .unwrap_or_else(|e| panic!("{wait} {size}: {e}"));
            assert!(r.frames > 0);
            assert!(r.frames_per_s() > 0.0 && r.gbit_per_s() > 0.0);
        }
    }
}

#[test]
fn output_has_one_result_line_per_figure() {
    let cfg = Config {
        seconds: 0.1,
        sizes: vec![64, 1500],
        shm_size: 1 << 20,
        wait: WaitMode::Eventfd,
    };
    let mut out = Vec::new();
    run(&cfg, &AtomicBool::new(false), &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let results: Vec<&str> = text.lines().filter(|l| l.starts_with("RESULT ")).collect();
    // frames/s and Gbit/s per size, memcpy per size and the large copy.
    assert_eq!(results.len(), 2 * 2 + 3, "{text}");
    for l in results {
        let keys: Vec<&str> = l[7..]
            .split(' ')
            .map(|kv| kv.split_once('=').expect("key=value").0)
            .collect();
        assert_eq!(keys, ["metric", "size", "value", "unit"], "{l}");
    }
    assert!(text.contains("RESULT metric=frames_per_s size=64 "));
    assert!(text.contains("RESULT metric=gbit_per_s size=1500 "));
    assert!(text.contains("doorbell: eventfd"));
}
