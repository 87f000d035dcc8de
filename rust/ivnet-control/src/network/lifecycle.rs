//! The commands on a network: `ivnet up` (start, or reconcile a running one), the supervisor
//! process (`ivnet supervise`), and finding the network a command names.

use super::*;

/// Sends one request to a network's supervisor (see [`crate::control`]) and returns its
/// reply.
pub fn request(paths: &Paths, req: Request, timeout: Duration) -> io::Result<Reply> {
    control::call(&paths.control(), req, timeout)
}

/// The status of the network at `paths`, from its supervisor.
pub fn status(paths: &Paths, timeout: Duration) -> io::Result<Status> {
    control::status(&paths.control(), timeout)
}

/// Whether a live supervisor answers on the control socket.
pub fn running(paths: &Paths) -> bool {
    status(paths, Duration::from_secs(5)).is_ok()
}

/// `ivnet up`: starts the network described by `file` (the reply is its status) or, when it
/// runs, restarts what died (the reply says what).
/// `exe` is this program (the supervisor is `exe supervise`).
pub fn up(file: &Path, root: &Path, metrics: &str, exe: &Path) -> io::Result<Reply> {
    let text = fs::read_to_string(file).map_err(|e| err(format!("{}: {e}", file.display())))?;
    let base = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .canonicalize()?;
    let topo =
        Topology::parse(&text, &base).map_err(|e| err(format!("{}: {e}", file.display())))?;
    let paths = Paths::new(root, &topo.host.bridge)?;
    let _lock = lock(&paths, true)?;
    let r = up_locked(&paths, &topo, &text, &base, metrics, exe);
    if r.is_err() {
        remove_root_if_unused(&paths.root);
    }
    r
}

pub(super) fn up_locked(
    paths: &Paths,
    topo: &Topology,
    text: &str,
    base: &Path,
    metrics: &str,
    exe: &Path,
) -> io::Result<Reply> {
    // Something in the way that is not this network's: refuse before touching anything.
    let exists = owned(paths)?;
    if exists && running(paths) {
        let old = fs::read_to_string(paths.topology()).unwrap_or_default();
        let old_base = fs::read_to_string(paths.base()).unwrap_or_default();
        if old != text || Path::new(old_base.trim()) != base {
            return Err(err(format!(
                "network {} runs a different topology: `ivnet down` it first",
                topo.host.bridge
            )));
        }
        return request(paths, Request::Reconcile, Duration::from_secs(60));
    }
    if let Some(pid) = live_supervisor(paths) {
        // Alive but not answering: never tear down a network because it was slow.
        return Err(err(format!(
            "network {}: its supervisor (pid {pid}) does not answer; try again, or `ivnet down` it",
            topo.host.bridge
        )));
    }
    // A leftover of a supervisor that died: clean it up first.
    if exists {
        warn!(
            "{} is left from an earlier run: cleaning up",
            paths.dir.display()
        );
        down_locked(paths)?;
    }
    {
        use std::os::unix::fs::DirBuilderExt;
        // The control socket and consoles are root's business. `create`, not `create_all`:
        // the directory is new, and ours.
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&paths.dir)
            .map_err(|e| err(format!("{}: {e}", paths.dir.display())))?;
    }
    // The record first: from here on the directory is known as this network's.
    let record = Record {
        network: Some(paths.name.clone()),
        ..Record::default()
    };
    fs::write(
        paths.record(),
        serde_json::to_string_pretty(&record).expect("serialisable"),
    )?;
    fs::write(paths.topology(), text)?;
    fs::write(paths.base(), base.display().to_string())?;
    let log = fs::File::create(paths.log())?;
    let mut child = Command::new(exe)
        .arg("supervise")
        .arg("--state-dir")
        .arg(&paths.dir)
        .arg("--metrics")
        .arg(metrics)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()?;
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(st) = child.try_wait()? {
            let log = fs::read_to_string(paths.log()).unwrap_or_default();
            // Whatever it left (it may have died without tearing down) goes by its record.
            down_locked(paths)?;
            // The supervisor's last words name the cause.
            let cause = log
                .lines()
                .rev()
                .find_map(|l| l.strip_prefix("ivnet: error: "))
                .unwrap_or("(no error logged)");
            return Err(err(format!(
                "the network did not come up ({st}): {cause}; everything it created was removed"
            )));
        }
        if let Ok(v) = status(paths, Duration::from_secs(5)) {
            return Ok(Reply::Status(Box::new(v)));
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            down_locked(paths)?;
            return Err(err(
                "the supervisor did not answer within 120 s; everything it created was removed",
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `ivnet supervise`: the supervisor process (started by `up`).
pub fn supervise(dir: &Path, metrics: &str, term: &AtomicBool) -> io::Result<()> {
    // Everything the supervisor and its children create (sockets, consoles, logs) is private.
    // SAFETY: umask only sets this process's file mode mask.
    unsafe { libc::umask(0o077) };
    let root = nix::unistd::geteuid().is_root();
    let paths = Paths::of_dir(dir)?;
    if !owned(&paths)? {
        return Err(err(format!("{}: no such network", dir.display())));
    }
    let text = fs::read_to_string(paths.topology())?;
    let base = PathBuf::from(fs::read_to_string(paths.base())?.trim());
    let topo = Topology::parse(&text, &base).map_err(|e| err(e.to_string()))?;
    if topo.host.bridge != paths.name {
        return Err(err(format!(
            "{}: the topology's bridge is {}",
            dir.display(),
            topo.host.bridge
        )));
    }
    let metrics_listener =
        TcpListener::bind(metrics).map_err(|e| err(format!("metrics endpoint {metrics}: {e}")))?;
    let mut sup = Supervisor::new(topo, paths.clone(), metrics.to_string());
    if root {
        sup.qemu_user = Some(ivnet_dataplane::privs::qemu_user()?);
    }
    sup.save_record();
    sup.up()?;
    let _ = fs::remove_file(paths.control());
    let control = match UnixListener::bind(paths.control()).and_then(|c| {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(paths.control(), fs::Permissions::from_mode(0o600))?;
        Ok(c)
    }) {
        Ok(c) => c,
        Err(e) => {
            sup.teardown();
            return Err(err(format!("control socket: {e}")));
        }
    };

    info!(
        "network {} is up; metrics on http://{metrics}/metrics",
        sup.topo.host.bridge
    );
    // Returns after teardown; what is left of the state directory is `down`'s to remove.
    sup.serve(control, metrics_listener, term);
    Ok(())
}

/// The network a command names. `arg` is a topology file (the network is its bridge) or a
/// network's name; without it, `env` (the value of `$IVNET_NETWORK`), else the only network
/// under `root`. Every name is checked ([`check_ifname`]) before it becomes a path.
pub fn resolve(root: &Path, arg: Option<&str>, env: Option<&str>) -> Result<Paths, String> {
    let name = match (arg, env) {
        (Some(a), _) if a.ends_with(".toml") || Path::new(a).is_file() => {
            let text = fs::read_to_string(a).map_err(|e| format!("{a}: {e}"))?;
            let v: toml::Value = toml::from_str(&text).map_err(|e| format!("{a}: {e}"))?;
            let bridge = v
                .get("host")
                .and_then(|h| h.get("bridge"))
                .and_then(|b| b.as_str())
                .ok_or_else(|| format!("{a}: no [host] bridge"))?;
            check_ifname("bridge", bridge).map_err(|e| format!("{a}: {e}"))?;
            Some(bridge.to_string())
        }
        (Some(a), _) => {
            check_ifname("network", a).map_err(|e| {
                if Path::new(a).is_dir() {
                    format!(
                        "{e}; {a:?} is a directory: give a topology file (.toml) or a \
                         network's bridge name"
                    )
                } else {
                    e
                }
            })?;
            Some(a.to_string())
        }
        (None, Some(e)) => {
            check_ifname("IVNET_NETWORK", e)?;
            Some(e.to_string())
        }
        (None, None) => None,
    };
    match name {
        Some(n) => Paths::new(root, &n).map_err(|e| e.to_string()),
        None => find(root).map_err(|e| e.to_string()),
    }
}

/// The only network running under `root`: its directory holds its own record or control
/// socket (entries that are not valid network names are ignored).
pub fn find(root: &Path) -> io::Result<Paths> {
    let mut found = Vec::new();
    if let Ok(rd) = fs::read_dir(root) {
        for e in rd.flatten() {
            let Some(name) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let Ok(p) = Paths::new(root, &name) else {
                continue;
            };
            if owned(&p).unwrap_or(false) {
                found.push(p);
            }
        }
    }
    match found.len() {
        1 => Ok(found.pop().expect("one")),
        0 => Err(err(format!(
            "no network is up (nothing in {})",
            root.display()
        ))),
        _ => Err(err(format!(
            "several networks are up ({}): name one",
            found
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}
