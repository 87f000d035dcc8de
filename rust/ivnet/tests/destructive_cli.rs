//! The command line never deletes or changes what ivnet did not create: every wrong argument
//! a user may type where a network is expected (a directory, `.`, `..`, a path as the bridge
//! of a topology, a bad `$IVNET_NETWORK`, a directory or symlink in the state root that is not
//! a network's) fails with an error naming the problem, and every file is still there
//! afterwards, byte for byte.
//!
//! These run the real `ivnet` binary. None of them reaches a step that needs root: each is
//! refused before anything is created.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A temporary tree for one test: `victim/` holds files a user cares about, `state/` is the
/// state root the commands are given.
struct Scene {
    top: PathBuf,
}

impl Scene {
    fn new(tag: &str) -> Scene {
        let top =
            std::env::temp_dir().join(format!("ivnet-destructive-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&top);
        fs::create_dir_all(top.join("victim/sub")).unwrap();
        fs::write(top.join("victim/precious.txt"), "do not delete\n").unwrap();
        fs::write(top.join("victim/sub/deeper.bin"), [0u8, 1, 2, 3]).unwrap();
        fs::create_dir_all(top.join("state")).unwrap();
        fs::write(
            top.join("state/notes.txt"),
            "the user's own file in the state root\n",
        )
        .unwrap();
        fs::write(top.join("sibling.txt"), "next to the state root\n").unwrap();
        // A cell image for topologies: the 20 bytes the topology checks, a 64-bit
        // little-endian AArch64 ELF executable.
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[16..18].copy_from_slice(&2u16.to_le_bytes());
        elf[18..20].copy_from_slice(&183u16.to_le_bytes());
        fs::write(top.join("cell.elf"), elf).unwrap();
        Scene { top }
    }
    fn p(&self, rel: &str) -> PathBuf {
        self.top.join(rel)
    }
    fn state(&self) -> PathBuf {
        self.p("state")
    }
    /// Every entry under the scene: path -> (kind, contents or link target).
    fn snapshot(&self) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        walk(&self.top, &mut out);
        out
    }
    /// Runs `ivnet args...` from `cwd` with `env`; as root, in a network namespace of its own
    /// (`unshare -n`), so that a regression that let `up` go on could not touch the machine's
    /// network.
    fn ivnet(&self, cwd: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
        let bin = env!("CARGO_BIN_EXE_ivnet");
        let mut c = if nix::unistd::geteuid().is_root() {
            let mut c = Command::new("unshare");
            c.args(["-n", bin]);
            c
        } else {
            Command::new(bin)
        };
        c.args(args).current_dir(cwd).env_remove("IVNET_NETWORK");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().expect("ivnet runs")
    }
    /// Writes a topology whose bridge is `bridge`, its cell running `cell.elf`.
    fn topology(&self, name: &str, bridge: &str) -> PathBuf {
        let f = self.p(name);
        fs::write(
            &f,
            format!(
                "[host]\nbridge = {bridge:?}\nsubnet = \"10.99.0.0/24\"\n\n\
                 [[cell]]\nname = \"c1\"\nimage = \"cell.elf\"\nmac = \"02:00:00:00:00:01\"\naddress = \"10.99.0.10\"\n\n\
                 [[link]]\nends = [\"c1\", \"host\"]\n"
            ),
        )
        .unwrap();
        f
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.top);
    }
}

fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
    let mut entries: Vec<_> = fs::read_dir(dir).unwrap().flatten().collect();
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let p = e.path();
        let m = fs::symlink_metadata(&p).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = m.permissions().mode();
        if m.file_type().is_symlink() {
            out.insert(
                p.clone(),
                format!("link -> {}", fs::read_link(&p).unwrap().display()),
            );
        } else if m.is_dir() {
            out.insert(p.clone(), format!("dir {mode:o}"));
            walk(&p, out);
        } else {
            out.insert(
                p.clone(),
                format!("file {mode:o} {:?}", fs::read(&p).unwrap()),
            );
        }
    }
}

/// Asserts the command failed, that its error says `why`, and that the scene is unchanged.
fn refused(s: &Scene, before: &BTreeMap<PathBuf, String>, out: &Output, why: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected a failure, got {}: {stderr}",
        out.status
    );
    assert!(stderr.contains(why), "error does not say {why:?}: {stderr}");
    assert_eq!(&s.snapshot(), before, "files changed; stderr: {stderr}");
}

#[test]
fn down_with_a_directory_deletes_nothing() {
    let s = Scene::new("dir");
    let before = s.snapshot();
    let state = s.state();
    let st = state.to_str().unwrap();
    let victim = s.p("victim");
    let v = victim.to_str().unwrap();
    for cmd in ["down", "status"] {
        // An absolute directory, as a new user tried it.
        let out = s.ivnet(&s.top, &[], &[cmd, v, "--state-root", st]);
        refused(&s, &before, &out, "is a path");
        refused(&s, &before, &out, "is a directory");
        // `.` and `..`, relative to the state root (and run from inside it).
        for rel in [".", ".."] {
            let out = s.ivnet(&state, &[], &[cmd, rel, "--state-root", st]);
            refused(&s, &before, &out, "names a directory");
        }
        // A relative path that climbs out of the state root.
        let out = s.ivnet(&state, &[], &[cmd, "../victim", "--state-root", st]);
        refused(&s, &before, &out, "is a path");
    }
}

#[test]
fn bridge_given_as_a_path_is_refused_everywhere() {
    let s = Scene::new("bridge");
    let st = s.state();
    let st = st.to_str().unwrap();
    for (i, bridge) in ["/srv", "..", ".", "../victim", "victim/sub", ""]
        .iter()
        .enumerate()
    {
        let topo = s.topology(&format!("t{i}.toml"), bridge);
        let t = topo.to_str().unwrap();
        let before = s.snapshot();
        let out = s.ivnet(&s.top, &[], &["check", t]);
        refused(&s, &before, &out, "bridge");
        refused(&s, &before, &out, "is not a valid network device name");
        let out = s.ivnet(&s.top, &[], &["down", t, "--state-root", st]);
        refused(&s, &before, &out, "is not a valid network device name");
        let out = s.ivnet(&s.top, &[], &["up", t, "--state-root", st]);
        refused(&s, &before, &out, "is not a valid network device name");
        let out = s.ivnet(&s.top, &[], &["status", t, "--state-root", st]);
        refused(&s, &before, &out, "is not a valid network device name");
    }
}

#[test]
fn bad_ivnet_network_is_refused() {
    let s = Scene::new("env");
    let before = s.snapshot();
    let st = s.state();
    let st = st.to_str().unwrap();
    let victim = s.p("victim");
    for v in ["..", ".", "../victim", victim.to_str().unwrap(), ""] {
        let env = [("IVNET_NETWORK", v)];
        for args in [
            vec!["down", "--state-root", st],
            vec!["status", "--state-root", st],
            vec!["inventory", "--list", "--state-root", st],
        ] {
            let out = s.ivnet(&s.top, &env, &args);
            refused(&s, &before, &out, "IVNET_NETWORK");
        }
    }
}

#[test]
fn only_a_networks_own_directory_is_removed() {
    let s = Scene::new("owned");
    let st = s.state();
    let st = st.to_str().unwrap();
    // A valid name, but its directory in the state root is the user's: no record.
    fs::create_dir_all(s.p("state/ivbr7")).unwrap();
    fs::write(s.p("state/ivbr7/mine.txt"), "user data\n").unwrap();
    // A symlink in the state root pointing at the user's files.
    symlink(s.p("victim"), s.p("state/ivbr8")).unwrap();
    // A directory holding the record of another network.
    fs::create_dir_all(s.p("state/ivbr9")).unwrap();
    fs::write(
        s.p("state/ivbr9/state.json"),
        r#"{"network": "other", "supervisor": null, "links": [], "nft_table": null,
            "ip_forward_before": null, "processes": []}"#,
    )
    .unwrap();
    // A state.json that is not ivnet's.
    fs::create_dir_all(s.p("state/ivbr6")).unwrap();
    fs::write(s.p("state/ivbr6/state.json"), "not json\n").unwrap();
    // A file where a network's directory would be.
    fs::write(s.p("state/ivbr5"), "a file\n").unwrap();
    let before = s.snapshot();
    for (name, why) in [
        ("ivbr7", "holds no ivnet record"),
        ("ivbr8", "is a symbolic link"),
        ("ivbr9", "holds the record of network \"other\""),
        ("ivbr6", "has a record ivnet cannot read"),
        ("ivbr5", "is not a directory"),
    ] {
        let out = s.ivnet(&s.top, &[], &["down", name, "--state-root", st]);
        refused(&s, &before, &out, why);
        refused(&s, &before, &out, "leaves it alone");
        // `up` of a topology with that bridge refuses before creating anything.
        let topo = s.topology("t.toml", name);
        let before_up = s.snapshot();
        let out = s.ivnet(
            &s.top,
            &[],
            &["up", topo.to_str().unwrap(), "--state-root", st],
        );
        refused(&s, &before_up, &out, why);
        fs::remove_file(&topo).unwrap();
    }
    // A state root given as the user's own directory with a valid name in it (`/` and `etc`,
    // played here by the scene's top and `victim`).
    let top = s.top.to_str().unwrap();
    let out = s.ivnet(&s.top, &[], &["down", "victim", "--state-root", top]);
    refused(&s, &before, &out, "holds no ivnet record");
    // A state root that is a file.
    let out = s.ivnet(
        &s.top,
        &[],
        &[
            "down",
            "ivbr1",
            "--state-root",
            s.p("sibling.txt").to_str().unwrap(),
        ],
    );
    refused(&s, &before, &out, "is not a directory");
}

#[test]
fn down_of_a_network_that_is_not_up_keeps_the_users_state_root() {
    let s = Scene::new("absent");
    let before = s.snapshot();
    let st = s.state();
    let out = s.ivnet(
        &s.top,
        &[],
        &["down", "ivbr3", "--state-root", st.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not up"));
    assert_eq!(s.snapshot(), before);
    // A state root ivnet makes for the occasion is removed again.
    let fresh = s.p("fresh-root");
    let out = s.ivnet(
        &s.top,
        &[],
        &["down", "ivbr3", "--state-root", fresh.to_str().unwrap()],
    );
    assert!(out.status.success());
    assert!(!fresh.exists());
    assert_eq!(s.snapshot(), before);
}

#[test]
fn a_state_root_others_may_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let s = Scene::new("shared-root");
    let shared = s.p("shared");
    fs::create_dir_all(shared.join("ivbr4")).unwrap();
    fs::write(
        shared.join("ivbr4/state.json"),
        r#"{"network": "ivbr4", "supervisor": null, "links": ["eth0"], "nft_table": null,
            "ip_forward_before": null, "processes": []}"#,
    )
    .unwrap();
    let down_is_refused = || {
        let before = s.snapshot();
        let out = s.ivnet(
            &s.top,
            &[],
            &["down", "ivbr4", "--state-root", shared.to_str().unwrap()],
        );
        refused(&s, &before, &out, "is writable by others");
    };
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
    down_is_refused();
    // A record others may write is refused the same way, in a private root.
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(
        shared.join("ivbr4/state.json"),
        fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    down_is_refused();
}
