//! What a supervisor created, and undoing it: the record in `state.json`, the lock of the
//! state root, the checks that a state directory and the processes it names are this
//! network's own, and `down`.

use super::*;

/// A file in a state root that `ivnet` created: the root is removed with the last network
/// only when it holds this mark (a state root the user made stays).
pub(super) const ROOT_MARK: &str = ".ivnet-root";

/// What a supervisor created, written to `state.json` so that `down` can undo it even when
/// the supervisor is gone.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Record {
    /// The network (its bridge) this record belongs to. A state directory is only ever
    /// removed when it holds a record naming its own network.
    pub network: Option<String>,
    /// The supervisor's pid.
    pub supervisor: Option<u32>,
    /// Links (bridge and TAPs) created.
    pub links: Vec<String>,
    /// nftables table created.
    pub nft_table: Option<String>,
    /// `ip_forward` before we turned it on.
    pub ip_forward_before: Option<bool>,
    /// `net.ipv6.conf.all.forwarding` before we turned it on.
    pub ipv6_forwarding_before: Option<bool>,
    /// Child processes: (what, pid).
    pub processes: Vec<(String, u32)>,
    /// The control group made for `[host] isolation` (removed last).
    #[serde(default)]
    pub isolation: Option<Group>,
}

/// Whether process `pid` is still one we started: its command line names the state directory
/// `dir` or a file in it, so a recycled pid is never signalled.
pub(super) fn pid_is_ours(pid: u32, dir: &Path) -> bool {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| names_dir(&String::from_utf8_lossy(&c), dir))
        .unwrap_or(false)
}

/// Whether a command line (NUL-separated arguments) names `dir` or a file in it: an argument
/// that is the directory, starts with `dir/`, or holds `=dir/` (QEMU's `path=`, dnsmasq's
/// `--conf-file=`). A path that merely ends like `dir` (another state root) does not count.
pub(super) fn names_dir(cmdline: &str, dir: &Path) -> bool {
    let dir = dir.display().to_string();
    let in_dir = format!("{dir}/");
    let after_eq = format!("={in_dir}");
    cmdline
        .split('\0')
        .any(|a| a == dir || a.starts_with(&in_dir) || a.contains(&after_eq))
}

/// Undoes what a record says was created: kills its processes (those whose command line
/// still names `dir`), removes its links and its nftables tables, restores `ip_forward` and IPv6
/// forwarding. Each
/// step is tried even when another fails.
pub fn undo(r: &Record, dir: &Path) {
    for (what, pid) in &r.processes {
        if pid_is_ours(*pid, dir) {
            info!("stopping {what} (pid {pid})");
            let p = nix::unistd::Pid::from_raw(*pid as i32);
            let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGTERM);
            for _ in 0..100 {
                if !pid_is_ours(*pid, dir) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if pid_is_ours(*pid, dir) {
                let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
    if let Some(t) = &r.nft_table {
        if let Err(e) = nft::delete(t) {
            error!("nftables table {t}: {e}");
        }
    }
    for l in r.links.iter().rev() {
        if let Err(e) = netcfg::delete_link(l) {
            error!("{l}: {e}");
        }
    }
    if let Some(before) = r.ipv6_forwarding_before {
        if let Err(e) = netcfg::set_ipv6_forwarding(before) {
            error!("ipv6 forwarding: {e}");
        }
    }
    if let Some(before) = r.ip_forward_before {
        if let Err(e) = netcfg::set_ip_forward(before) {
            error!("ip_forward: {e}");
        }
    }
    if let Some(g) = &r.isolation {
        g.remove();
    }
}

pub(super) fn read_record(paths: &Paths) -> io::Result<Option<Record>> {
    match fs::read_to_string(paths.record()) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| err(format!("{}: {e}", paths.record().display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The pid of the network's supervisor, if that process still runs.
pub(super) fn live_supervisor(paths: &Paths) -> Option<u32> {
    let pid = read_record(paths).ok().flatten()?.supervisor?;
    pid_is_ours(pid, &paths.dir).then_some(pid)
}

/// Holds the state root locked: one `up` or `down` at a time under it.
pub struct NetworkLock(#[allow(dead_code)] fs::File);

/// Locks the state root of `paths` (waits for another `up`/`down`). The lock is on the
/// directory itself. With `create`, a root that does not exist yet is created with a mark
/// saying so ([`ROOT_MARK`]), so that the last `down` removes it again; without, a missing root
/// means there is nothing to lock (`Ok(None)`). The root must be the user's own and writable by
/// nobody else: records in it are trusted to say what to remove.
pub fn lock(paths: &Paths, create: bool) -> io::Result<Option<NetworkLock>> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    let root = &paths.root;
    loop {
        match fs::symlink_metadata(root) {
            Ok(m) if m.is_dir() => check_private(root, &m, "state root")?,
            Ok(_) => {
                return Err(err(format!(
                    "state root {} exists and is not a directory",
                    root.display()
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && !create => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(root)
                    .map_err(|e| err(format!("state root {}: {e}", root.display())))?;
                fs::write(
                    root.join(ROOT_MARK),
                    "made by ivnet; removed with its last network\n",
                )?;
            }
            Err(e) => return Err(err(format!("state root {}: {e}", root.display()))),
        }
        let f = fs::File::open(root)?;
        // SAFETY: flock on a file descriptor we own; released when the file is closed.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // The last `down` may have removed the root while we waited for it: then lock the
        // one that is there now.
        let held = f.metadata()?;
        match fs::symlink_metadata(root) {
            Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => {
                return Ok(Some(NetworkLock(f)))
            }
            _ => continue,
        }
    }
}

/// Refuses a directory or file of the state that is not the user's own, or that others may
/// write (they could forge a record that tells `down` what to remove).
pub(super) fn check_private(path: &Path, m: &fs::Metadata, what: &str) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    if m.uid() != me {
        return Err(err(format!(
            "{what} {} belongs to uid {}, not to this user (uid {me}): choose a directory of \
             your own (--state-root)",
            path.display(),
            m.uid()
        )));
    }
    if m.mode() & 0o022 != 0 {
        return Err(err(format!(
            "{what} {} is writable by others (mode {:o}): choose a private directory \
             (--state-root)",
            path.display(),
            m.mode() & 0o7777
        )));
    }
    Ok(())
}

/// Removes the state root when `ivnet` made it and no network is left in it (its only entry
/// is the mark). Called with the root locked.
pub(super) fn remove_root_if_unused(root: &Path) {
    let Ok(rd) = fs::read_dir(root) else { return };
    let names: Vec<_> = rd.flatten().map(|e| e.file_name()).collect();
    if names.len() == 1 && names[0] == ROOT_MARK {
        let _ = fs::remove_file(root.join(ROOT_MARK));
        let _ = fs::remove_dir(root);
    }
}

/// Whether the network's state directory exists and is its own: a real directory (not a
/// symlink) directly under the state root, holding a record that names this network.
/// `Ok(false)`: nothing is there. An error: something else is there, which ivnet leaves alone.
pub fn owned(paths: &Paths) -> io::Result<bool> {
    let meta = match fs::symlink_metadata(&paths.dir) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(err(format!("{}: {e}", paths.dir.display()))),
    };
    let not_ours = |why: String| {
        err(format!(
            "{} {why}: it is not the state directory of network {}, so ivnet leaves it alone",
            paths.dir.display(),
            paths.name
        ))
    };
    if meta.file_type().is_symlink() {
        return Err(not_ours("is a symbolic link".into()));
    }
    if !meta.is_dir() {
        return Err(not_ours("is not a directory".into()));
    }
    check_private(&paths.dir, &meta, "state directory")?;
    match fs::symlink_metadata(paths.record()) {
        Ok(m) if m.is_file() => check_private(&paths.record(), &m, "record")?,
        Ok(_) => {
            return Err(not_ours(
                "has a state.json that is not a regular file".into(),
            ))
        }
        Err(_) => return Err(not_ours("holds no ivnet record (state.json)".into())),
    }
    match read_record(paths) {
        Ok(Some(r)) if r.network.as_deref() == Some(paths.name.as_str()) => Ok(true),
        Ok(Some(r)) => Err(not_ours(format!(
            "holds the record of {}",
            r.network
                .map(|n| format!("network {n:?}"))
                .unwrap_or_else(|| "no named network".into())
        ))),
        Ok(None) => Err(not_ours("holds no ivnet record (state.json)".into())),
        Err(e) => Err(not_ours(format!("has a record ivnet cannot read ({e})"))),
    }
}

/// `ivnet down`: stops the network and removes everything it created, also when its
/// supervisor died. Ok when the network is not up; an error, touching nothing, when its
/// state directory is not its own (see [`owned`]).
pub fn down(paths: &Paths) -> io::Result<()> {
    let Some(_lock) = lock(paths, false)? else {
        warn!(
            "network {} is not up (no state root {}): nothing to do",
            paths.name,
            paths.root.display()
        );
        return Ok(());
    };
    if !owned(paths)? {
        warn!(
            "network {} is not up (nothing in {}): nothing to do",
            paths.name,
            paths.root.display()
        );
    } else {
        down_locked(paths)?;
    }
    remove_root_if_unused(&paths.root);
    Ok(())
}

/// Takes the network down and removes its state directory; only on a directory that
/// [`owned`] accepted.
pub(super) fn down_locked(paths: &Paths) -> io::Result<()> {
    if paths.control().exists() {
        match request(paths, Request::Down, Duration::from_secs(60)) {
            Ok(_) => info!("supervisor stopped the network"),
            Err(e) => warn!("supervisor did not answer ({e})"),
        }
    }
    // The supervisor must be gone before its record is read: it records what it creates
    // until its last moment. One that does not answer (still coming up) gets SIGTERM, which
    // it handles by tearing down; SIGKILL after 30 s.
    if let Some(pid) = live_supervisor(paths) {
        let p = nix::unistd::Pid::from_raw(pid as i32);
        let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..1500 {
            if !pid_is_ours(pid, &paths.dir) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if pid_is_ours(pid, &paths.dir) {
            warn!("supervisor {pid} did not stop: killing it");
            let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // Checked again right before removal: the directory must still be this network's.
    if owned(paths)? {
        if let Some(r) = read_record(paths)? {
            undo(&only_ours(r, &paths.name), &paths.dir);
        }
        fs::remove_dir_all(&paths.dir)?;
    }
    Ok(())
}

/// A record read from disk, keeping only what network `name` can have created: its bridge,
/// TAPs named `ivt-<cell>`, its own nftables table. Anything else in it (a damaged or forged
/// record) is reported and left alone.
pub(super) fn only_ours(mut r: Record, name: &str) -> Record {
    r.links.retain(|l| {
        let ours = l == name
            || l.strip_prefix("ivt-")
                .is_some_and(|c| !c.is_empty() && check_ifname("TAP", l).is_ok());
        if !ours {
            error!("the record of network {name} names link {l:?}, which it cannot have created: left alone");
        }
        ours
    });
    if let Some(g) = &r.isolation {
        if !g.is_plausible(Path::new(CGROUP_ROOT), name) {
            error!("the record of network {name} names control group {g:?}, which it cannot have created: left alone");
            r.isolation = None;
        }
    }
    if let Some(t) = &r.nft_table {
        if *t != nft::table_name(name) {
            error!(
                "the record of network {name} names nftables table {t:?}, not its own: left alone"
            );
            r.nft_table = None;
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn a_record_from_disk_keeps_only_what_its_network_can_have_made() {
        let r = Record {
            network: Some("ivbr0".into()),
            links: vec![
                "ivbr0".into(),
                "ivt-c1".into(),
                "eth0".into(),
                "ivbr1".into(),
                "ivt-".into(),
                "ivt-a/b".into(),
            ],
            nft_table: Some("inet_filter".into()),
            ..Record::default()
        };
        let k = only_ours(r, "ivbr0");
        assert_eq!(k.links, ["ivbr0", "ivt-c1"]);
        assert_eq!(k.nft_table, None);
        let r = Record {
            nft_table: Some(nft::table_name("ivbr0")),
            ..Record::default()
        };
        assert_eq!(
            only_ours(r, "ivbr0").nft_table,
            Some(nft::table_name("ivbr0"))
        );
    }

    #[test]
    pub(super) fn processes_are_recognised_by_the_exact_state_directory() {
        let dir = Path::new("/run/ivnet/ivbr0");
        let cmd = |args: &[&str]| args.join("\0");
        assert!(names_dir(
            &cmd(&["ivnet", "supervise", "--state-dir", "/run/ivnet/ivbr0"]),
            dir
        ));
        assert!(names_dir(
            &cmd(&["qemu", "-kernel", "/run/ivnet/ivbr0/c1.elf"]),
            dir
        ));
        assert!(names_dir(
            &cmd(&[
                "qemu",
                "-chardev",
                "socket,id=con,path=/run/ivnet/ivbr0/c1.console.sock"
            ]),
            dir
        ));
        assert!(names_dir(
            &cmd(&["dnsmasq", "--conf-file=/run/ivnet/ivbr0/dnsmasq.conf"]),
            dir
        ));
        // Another state root that merely ends the same way, or another network.
        assert!(!names_dir(
            &cmd(&["qemu", "-kernel", "/tmp/x/run/ivnet/ivbr0/c1.elf"]),
            dir
        ));
        assert!(!names_dir(
            &cmd(&["qemu", "path=/srv/run/ivnet/ivbr0/c1"]),
            dir
        ));
        assert!(!names_dir(
            &cmd(&["qemu", "-kernel", "/run/ivnet/ivbr01/c1.elf"]),
            dir
        ));
    }
}
