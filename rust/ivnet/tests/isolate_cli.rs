//! `ivnet isolate` on this machine's kernel: the command runs in the group with the settings
//! asked for, its exit status comes back, the group is gone afterwards, and wrong input is
//! refused with an error naming it, creating nothing.

use std::path::Path;
use std::process::{Command, Output};

fn ivnet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ivnet"))
        .args(args)
        .output()
        .expect("ivnet runs")
}

/// Every directory named `name` in the cgroup hierarchies (v1: one per controller).
fn groups_named(name: &str) -> Vec<String> {
    fn walk(d: &Path, name: &str, depth: u32, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if e.file_name() == name {
                out.push(e.path().display().to_string());
            } else if depth > 0 {
                walk(&e.path(), name, depth - 1, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(Path::new("/sys/fs/cgroup"), name, 4, &mut out);
    out
}

fn usable() -> bool {
    let root = Path::new("/sys/fs/cgroup");
    let ok = nix::unistd::geteuid().is_root()
        && (root.join("cgroup.controllers").exists() || root.join("cpu/cgroup.procs").exists());
    if !ok {
        eprintln!("not root, or no cgroup file system at /sys/fs/cgroup: test skipped");
    }
    ok
}

#[test]
fn a_command_runs_in_its_group_and_the_group_goes() {
    if !usable() {
        return;
    }
    let name = format!("t{}", std::process::id());
    let group = format!("ivnet-{name}");
    let out = ivnet(&[
        "isolate",
        "--name",
        &name,
        "--cpu-weight",
        "300",
        "--",
        "sh",
        "-c",
        "cat /proc/self/cgroup; exit 3",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l.ends_with(&format!("/{group}"))),
        "{text}"
    );
    // The command's failure is ivnet's failure, naming it.
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("exit status: 3"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(groups_named(&group), Vec::<String>::new());

    let ok = ivnet(&["isolate", "--name", &name, "--cpus", "0", "--", "true"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(groups_named(&group), Vec::<String>::new());
}

#[test]
fn wrong_input_is_refused_and_nothing_is_made() {
    if !usable() {
        return;
    }
    let name = format!("u{}", std::process::id());
    for (args, says) in [
        (vec!["--cpu-weight", "0"], "cpu_weight 0"),
        (vec!["--cpus", "0-"], "CPU list"),
        (vec!["--cpus", "4095"], "offers only"),
        (vec![], "asks for nothing"),
    ] {
        let mut a = vec!["isolate", "--name", name.as_str()];
        a.extend(args.iter().copied());
        a.extend(["--", "true"]);
        let out = ivnet(&a);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{a:?}");
        assert!(err.contains(says), "{a:?}: {err}");
        assert_eq!(groups_named(&format!("ivnet-{name}")), Vec::<String>::new());
    }
    // A name that would be a path.
    let out = ivnet(&[
        "isolate",
        "--name",
        "../x",
        "--cpu-weight",
        "200",
        "--",
        "true",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("group name"));
}
