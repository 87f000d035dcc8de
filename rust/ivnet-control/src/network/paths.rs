//! The files of a network's state directory, and names derived from the topology.

use super::*;

/// The files of one network's state directory, `<root>/<name>`.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The state root (one directory per network).
    pub root: PathBuf,
    /// The network's name (its bridge), checked by [`check_ifname`].
    pub name: String,
    /// The directory: `root/name`.
    pub dir: PathBuf,
}

impl Paths {
    /// The state directory of network `name` under `root`. `name` must pass
    /// [`check_ifname`], so the directory is always directly under the root.
    pub fn new(root: &Path, name: &str) -> io::Result<Paths> {
        check_ifname("network", name).map_err(err)?;
        if root.as_os_str().is_empty() {
            return Err(err("the state root is an empty path"));
        }
        // One spelling for one directory (`..`, `//`, symlinked parents): processes are
        // recognised by the paths in their command lines.
        let root = match root.canonicalize() {
            Ok(r) => r,
            Err(_) if root.is_absolute() => root.to_path_buf(),
            Err(_) => std::env::current_dir()?.join(root),
        };
        Ok(Paths {
            dir: root.join(name),
            root,
            name: name.to_string(),
        })
    }

    /// The paths of the state directory `dir` (its parent is the root, its name the network).
    pub fn of_dir(dir: &Path) -> io::Result<Paths> {
        let name = dir.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
            err(format!(
                "{}: not a network's state directory",
                dir.display()
            ))
        })?;
        Paths::new(dir.parent().unwrap_or(Path::new("")), name)
    }

    pub(super) fn f(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
    /// The copy of the topology the network runs.
    pub fn topology(&self) -> PathBuf {
        self.f("topology.toml")
    }
    /// The directory the topology's relative image paths are taken from.
    pub fn base(&self) -> PathBuf {
        self.f("base")
    }
    /// The supervisor's control socket.
    pub fn control(&self) -> PathBuf {
        self.f("control.sock")
    }
    /// What was created.
    pub fn record(&self) -> PathBuf {
        self.f("state.json")
    }
    /// The supervisor's log.
    pub fn log(&self) -> PathBuf {
        self.f("supervisor.log")
    }
    /// The ivshmem server socket of link `i`.
    pub fn link(&self, i: usize) -> PathBuf {
        self.f(&format!("link{i}.sock"))
    }
    /// A cell's serial console (a UNIX socket; `socat - UNIX-CONNECT:<path>`).
    pub fn console(&self, cell: &str) -> PathBuf {
        self.f(&format!("{cell}.console.sock"))
    }
    /// A cell's console output.
    pub fn console_log(&self, cell: &str) -> PathBuf {
        self.f(&format!("{cell}.console.log"))
    }
    pub(super) fn qemu_log(&self, cell: &str) -> PathBuf {
        self.f(&format!("{cell}.qemu.log"))
    }
    pub(super) fn cell_config(&self, cell: &str) -> PathBuf {
        self.f(&format!("{cell}.cfg"))
    }
    /// The copy of a cell's image that its QEMU boots (see `Supervisor::copy_images`).
    pub(super) fn image(&self, cell: &str) -> PathBuf {
        self.f(&format!("{cell}.elf"))
    }
    /// dnsmasq's lease file.
    pub fn leases(&self) -> PathBuf {
        self.f("dnsmasq.leases")
    }
    pub(super) fn dnsmasq_conf(&self) -> PathBuf {
        self.f("dnsmasq.conf")
    }
    pub(super) fn dnsmasq_log(&self) -> PathBuf {
        self.f("dnsmasq.log")
    }
}

/// The TAP of the host end of a cell's link.
pub fn tap_name(cell: &str) -> String {
    format!("ivt-{cell}")
}

/// Leases from dnsmasq's lease file: MAC -> address.
pub fn read_leases(path: &Path) -> BTreeMap<Mac, Ipv4Addr> {
    let mut out = BTreeMap::new();
    let Ok(text) = fs::read_to_string(path) else {
        return out;
    };
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 3 {
            continue;
        }
        if let (Ok(m), Ok(ip)) = (f[1].parse::<Mac>(), f[2].parse::<Ipv4Addr>()) {
            out.insert(m, ip);
        }
    }
    out
}
