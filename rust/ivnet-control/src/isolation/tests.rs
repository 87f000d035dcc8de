//! Unit tests of [`super`].

use super::*;

#[test]
fn cpu_lists() {
    let s: CpuSet = "0,2-3".parse().unwrap();
    assert_eq!(s.to_string(), "0,2-3");
    assert_eq!("1".parse::<CpuSet>().unwrap().to_string(), "1");
    assert_eq!("3,0-1,2".parse::<CpuSet>().unwrap().to_string(), "0-3");
    for bad in ["", "a", "1-0", "0-", "-1", "0,,1", "99999"] {
        assert!(bad.parse::<CpuSet>().is_err(), "{bad:?}");
    }
    assert!("1"
        .parse::<CpuSet>()
        .unwrap()
        .is_subset(&"0-1".parse().unwrap()));
    assert!(!"2"
        .parse::<CpuSet>()
        .unwrap()
        .is_subset(&"0-1".parse().unwrap()));
}

#[test]
fn spec_checks() {
    assert!(Spec::default().check().is_err());
    let w = |n| Spec {
        cpu_weight: Some(n),
        ..Spec::default()
    };
    assert!(w(0).check().is_err());
    assert!(w(10001).check().is_err());
    assert!(w(100).check().is_ok());
}

#[test]
fn proc_cgroup_lines() {
    let own = own_paths("4:memory:/process_api/x\n2:cpu,cpuacct:/\n0::/user.slice\n");
    assert!(own.contains(&("memory".into(), "/process_api/x".into())));
    assert!(own.contains(&("cpuacct".into(), "/".into())));
    assert!(own.contains(&(String::new(), "/user.slice".into())));
}

/// A v2 hierarchy laid out as files (the kernel's cgroupfs makes these files itself;
/// this machine may have only v1 to test on, and the v1 path is tested on the real
/// kernel by the end-to-end tests).
#[test]
fn v2_layout_and_plausibility() {
    let dir = std::env::temp_dir().join(format!("ivnet-iso-test-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir(&dir).unwrap();
    let r = dir.as_path();
    fs::write(r.join("cgroup.controllers"), "cpuset cpu io memory pids\n").unwrap();
    fs::write(r.join("cgroup.subtree_control"), "cpu memory\n").unwrap();
    fs::write(r.join("cpuset.cpus.effective"), "0-1\n").unwrap();
    fs::write(r.join("cgroup.procs"), "").unwrap();
    let spec = Spec {
        cpu_weight: Some(1000),
        cpus: Some("1".parse().unwrap()),
        memory_min: Some(256 << 20),
    };
    // cpuset is not enabled for the root's children: refused, naming it, nothing made.
    let e = Group::create(r, "0::/\n", "net0", &spec).unwrap_err();
    assert!(
        e.to_string().contains("cpuset controller is not enabled"),
        "{e}"
    );
    assert!(!r.join("ivnet-net0").exists());
    fs::write(r.join("cgroup.subtree_control"), "cpuset cpu memory\n").unwrap();
    let g = Group::create(r, "0::/\n", "net0", &spec).unwrap();
    assert_eq!(g.version, 2);
    let d = r.join("ivnet-net0");
    assert_eq!(fs::read_to_string(d.join("cpu.weight")).unwrap(), "1000");
    assert_eq!(fs::read_to_string(d.join("cpuset.cpus")).unwrap(), "1");
    assert_eq!(
        fs::read_to_string(d.join("memory.min")).unwrap(),
        "268435456"
    );
    assert!(g.is_plausible(r, "net0"));
    assert!(!g.is_plausible(r, "net1"));
    let mut forged = g.clone();
    forged.made[0].dir = PathBuf::from("/etc/ivnet-net0");
    assert!(!forged.is_plausible(r, "net0"));
    forged.made[0].dir = r.join("x/../../ivnet-net0");
    assert!(!forged.is_plausible(r, "net0"));
    // A second group of that name is refused, naming the directory.
    let e = Group::create(r, "0::/\n", "net0", &spec).unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");
    // More CPUs than the machine has.
    let many = Spec {
        cpus: Some("0-7".parse().unwrap()),
        ..Spec::default()
    };
    let e = Group::create(r, "0::/\n", "big", &many).unwrap_err();
    assert!(e.to_string().contains("offers only 0-1"), "{e}");
    assert!(!r.join("ivnet-big").exists());
    fs::remove_dir_all(&dir).unwrap();
}

/// The real kernel, when it has v1 hierarchies (this machine's kind) and we are root: a
/// group is made, takes a process, and is removed.
#[test]
fn v1_on_this_kernel() {
    let root = Path::new(CGROUP_ROOT);
    if is_v2(root) || !root.join("cpu/cgroup.procs").exists() || !nix::unistd::geteuid().is_root() {
        eprintln!("no writable cgroup v1 cpu hierarchy here: test skipped");
        return;
    }
    let me = fs::read_to_string("/proc/self/cgroup").unwrap();
    let name = format!("unit-{}", std::process::id());
    let spec = Spec {
        cpu_weight: Some(500),
        cpus: Some("0".parse().unwrap()),
        memory_min: None,
    };
    let g = Group::create(root, &me, &name, &spec).unwrap();
    assert_eq!(g.version, 1);
    let mut child = std::process::Command::new("sleep")
        .arg("5")
        .spawn()
        .unwrap();
    g.add(child.id()).unwrap();
    assert_eq!(g.pids(), vec![child.id()]);
    let cg = fs::read_to_string(format!("/proc/{}/cgroup", child.id())).unwrap();
    assert!(cg.contains(&format!("ivnet-{name}")), "{cg}");
    assert_eq!(read(&g.made[0].dir, "cpu.shares").unwrap(), "5120");
    child.kill().unwrap();
    child.wait().unwrap();
    g.remove();
    assert!(g.made.iter().all(|m| !m.dir.exists()));
}
