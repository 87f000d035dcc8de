//! Resource isolation: a control group of ivnet's own for a network's processes (its
//! supervisor with the host peers and ivshmem servers, dnsmasq, and the cells' QEMUs), with a
//! CPU weight, a CPU set and memory protection.
//!
//! Both cgroup generations are spoken, because both are deployed:
//!
//! - **v2** (one unified hierarchy, `cgroup.controllers` at the mount's root): the group is
//!   `<root>/ivnet-<name>`, a child of the root, the only cgroup that may hold processes and
//!   still hand controllers down without a service manager's delegation. Settings:
//!   `cpu.weight`, `cpuset.cpus`, `memory.min`; each needs its controller enabled for the
//!   root's children (`cgroup.subtree_control`), which is the machine's setting: ivnet
//!   refuses rather than change it.
//! - **v1** (one hierarchy per controller): the group is `ivnet-<name>` under the cgroup the
//!   creating process is in, in each hierarchy a setting needs (so limits set on that cgroup
//!   keep applying). Settings: `cpu.shares` (the weight times 1024/100, the conversion
//!   systemd uses), `cpuset.cpus` with the parent's `cpuset.mems`, and
//!   `memory.soft_limit_in_bytes` for the memory protection: v1 has no protected minimum;
//!   under memory pressure the kernel reclaims first from groups above their soft limit, so
//!   the group's first `memory_min` bytes are reclaimed last, no more.
//!
//! A [`Group`] says what it created, so that it can be removed by a process other than the
//! one that made it (`ivnet down` after a supervisor died): it is recorded in the network's
//! `state.json`, and [`Group::is_plausible`] refuses a recorded group that ivnet cannot have
//! made.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use log::{info, warn};
use serde::{Deserialize, Serialize};

/// Where cgroup file systems are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The most CPUs a [`CpuSet`] may name.
const MAX_CPUS: u32 = 4096;

fn err(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

/// A set of CPUs, written as Linux writes them: `0`, `0-3`, `0,2-3`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuSet(BTreeSet<u32>);

impl CpuSet {
    /// True when every CPU of `self` is in `other`.
    pub fn is_subset(&self, other: &CpuSet) -> bool {
        self.0.is_subset(&other.0)
    }
}

impl FromStr for CpuSet {
    type Err = String;

    fn from_str(s: &str) -> Result<CpuSet, String> {
        let bad =
            || format!("CPU list {s:?}: write CPUs and ranges like \"1\", \"0-3\" or \"0,2-3\"");
        let mut set = BTreeSet::new();
        for part in s.trim().split(',') {
            let part = part.trim();
            let (a, b) = match part.split_once('-') {
                Some((a, b)) => (a.trim(), b.trim()),
                None => (part, part),
            };
            let a: u32 = a.parse().map_err(|_| bad())?;
            let b: u32 = b.parse().map_err(|_| bad())?;
            if a > b || b >= MAX_CPUS {
                return Err(bad());
            }
            set.extend(a..=b);
        }
        Ok(CpuSet(set))
    }
}

impl fmt::Display for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v: Vec<u32> = self.0.iter().copied().collect();
        let mut i = 0;
        let mut first = true;
        while i < v.len() {
            let mut j = i;
            while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
                j += 1;
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if i == j {
                write!(f, "{}", v[i])?;
            } else {
                write!(f, "{}-{}", v[i], v[j])?;
            }
            i = j + 1;
        }
        Ok(())
    }
}

/// What isolation to apply; `None` fields are left as the kernel's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Spec {
    /// CPU weight in cgroup v2's units: 1..=10000, the default being 100.
    pub cpu_weight: Option<u32>,
    /// The CPUs the processes may run on.
    pub cpus: Option<CpuSet>,
    /// Memory protected from reclaim, in bytes.
    pub memory_min: Option<u64>,
}

impl Spec {
    /// True when nothing is asked for.
    pub fn is_empty(&self) -> bool {
        self.cpu_weight.is_none() && self.cpus.is_none() && self.memory_min.is_none()
    }

    /// A CPU weight as given (a topology's integer may be anything): 1..=10000.
    pub fn cpu_weight(w: i64) -> Result<u32, String> {
        u32::try_from(w)
            .ok()
            .filter(|v| (1..=10000).contains(v))
            .ok_or_else(|| format!("cpu_weight {w}: use 1..10000 (100 is every process's default)"))
    }

    /// Checks the values that can be checked without the machine.
    pub fn check(&self) -> Result<(), String> {
        if let Some(w) = self.cpu_weight {
            Spec::cpu_weight(w.into())?;
        }
        if self.is_empty() {
            return Err("isolation asks for nothing: give cpu_weight, cpus or memory_min".into());
        }
        Ok(())
    }
}

/// One directory ivnet created in a cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Made {
    /// The group's directory.
    pub dir: PathBuf,
    /// The cgroup the creating process was in (where it goes back before the removal).
    pub origin: PathBuf,
}

/// A control group ivnet created (in one hierarchy for v2, in one per controller for v1).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// The group's name: `ivnet-<name>`.
    pub name: String,
    /// 1 or 2.
    pub version: u8,
    /// The directories created.
    pub made: Vec<Made>,
    /// What was written: (file, value), for `status` and reports.
    pub settings: Vec<(String, String)>,
}

/// The controller -> cgroup path map of `/proc/<pid>/cgroup` (`""` for the v2 line).
fn own_paths(proc_cgroup: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in proc_cgroup.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(_), Some(ctrls), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if ctrls.is_empty() {
            out.push((String::new(), path.to_string()));
        }
        for c in ctrls.split(',').filter(|c| !c.is_empty()) {
            out.push((c.to_string(), path.to_string()));
        }
    }
    out
}

fn rel(path: &str) -> &str {
    path.trim_start_matches('/')
}

fn write(dir: &Path, file: &str, value: &str) -> io::Result<()> {
    fs::write(dir.join(file), value).map_err(|e| {
        err(format!(
            "{}: writing {value:?}: {e}",
            dir.join(file).display()
        ))
    })
}

fn read(dir: &Path, file: &str) -> io::Result<String> {
    fs::read_to_string(dir.join(file))
        .map(|s| s.trim().to_string())
        .map_err(|e| err(format!("{}: {e}", dir.join(file).display())))
}

/// True when `root` holds a cgroup v2 hierarchy at its top.
pub fn is_v2(root: &Path) -> bool {
    root.join("cgroup.controllers").exists()
}

impl Group {
    /// The directory name of the group of `name`.
    pub fn dir_name(name: &str) -> String {
        format!("ivnet-{name}")
    }

    /// Creates group `ivnet-<name>` under the cgroup mounts in `root` ([`CGROUP_ROOT`]),
    /// for a process whose `/proc/self/cgroup` reads `proc_cgroup`, and applies `spec`. A
    /// group of that name must not exist. On an error, what was created is removed.
    pub fn create(root: &Path, proc_cgroup: &str, name: &str, spec: &Spec) -> io::Result<Group> {
        spec.check().map_err(err)?;
        let mut g = Group {
            name: Group::dir_name(name),
            version: if is_v2(root) { 2 } else { 1 },
            ..Group::default()
        };
        let r = if g.version == 2 {
            g.create_v2(root, proc_cgroup, spec)
        } else {
            g.create_v1(root, proc_cgroup, spec)
        };
        if let Err(e) = r {
            g.remove();
            return Err(e);
        }
        info!(
            "cgroup v{} group {}: {}",
            g.version,
            g.name,
            g.settings
                .iter()
                .map(|(f, v)| format!("{f}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        Ok(g)
    }

    fn mkdir(&mut self, dir: PathBuf, origin: PathBuf) -> io::Result<PathBuf> {
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(err(format!(
                    "cgroup {} already exists: another network or study of that name, or a \
                     leftover (ivnet down; or rmdir it when it holds no process)",
                    dir.display()
                )))
            }
            Err(e) => return Err(err(format!("cgroup {}: {e}", dir.display()))),
        }
        self.made.push(Made {
            dir: dir.clone(),
            origin,
        });
        Ok(dir)
    }

    fn set(&mut self, dir: &Path, file: &str, value: String) -> io::Result<()> {
        write(dir, file, &value)?;
        self.settings.push((file.to_string(), value));
        Ok(())
    }

    fn check_cpus(cpus: &CpuSet, available: &str, whence: &Path) -> io::Result<()> {
        let avail: CpuSet = available
            .parse()
            .map_err(|e| err(format!("{}: {e}", whence.display())))?;
        if !cpus.is_subset(&avail) {
            return Err(err(format!(
                "cpus {cpus}: this machine offers only {avail} here ({})",
                whence.display()
            )));
        }
        Ok(())
    }

    fn create_v1(&mut self, root: &Path, proc_cgroup: &str, spec: &Spec) -> io::Result<()> {
        let own = own_paths(proc_cgroup);
        let name = self.name.clone();
        let path_of = |ctrl: &str| -> io::Result<(PathBuf, PathBuf)> {
            let mount = root.join(ctrl);
            if !mount.join("cgroup.procs").exists() {
                return Err(err(format!(
                    "cgroup v1: no {ctrl} hierarchy at {} (the controller is not mounted; \
                     note that `ip netns exec` mounts a /sys without the cgroup file systems: \
                     use `nsenter --net=/run/netns/<name>` to run ivnet in a namespace)",
                    mount.display()
                )));
            }
            let p = own
                .iter()
                .find(|(c, _)| c == ctrl)
                .map(|(_, p)| p.as_str())
                .unwrap_or("/");
            let origin = mount.join(rel(p));
            Ok((origin.join(&name), origin))
        };
        if let Some(w) = spec.cpu_weight {
            let (dir, origin) = path_of("cpu")?;
            let dir = self.mkdir(dir, origin)?;
            let shares = (u64::from(w) * 1024 / 100).clamp(2, 262_144);
            self.set(&dir, "cpu.shares", shares.to_string())?;
        }
        if let Some(cpus) = &spec.cpus {
            let (dir, origin) = path_of("cpuset")?;
            let avail =
                read(&origin, "cpuset.effective_cpus").or_else(|_| read(&origin, "cpuset.cpus"))?;
            Group::check_cpus(cpus, &avail, &origin)?;
            let mems =
                read(&origin, "cpuset.effective_mems").or_else(|_| read(&origin, "cpuset.mems"))?;
            let dir = self.mkdir(dir, origin)?;
            self.set(&dir, "cpuset.cpus", cpus.to_string())?;
            self.set(&dir, "cpuset.mems", mems)?;
        }
        if let Some(m) = spec.memory_min {
            let (dir, origin) = path_of("memory")?;
            let dir = self.mkdir(dir, origin)?;
            self.set(&dir, "memory.soft_limit_in_bytes", m.to_string())?;
        }
        Ok(())
    }

    fn create_v2(&mut self, root: &Path, proc_cgroup: &str, spec: &Spec) -> io::Result<()> {
        let own = own_paths(proc_cgroup);
        let p = own
            .iter()
            .find(|(c, _)| c.is_empty())
            .map(|(_, p)| p.as_str())
            .unwrap_or("/");
        let origin = root.join(rel(p));
        let mut need = Vec::new();
        if spec.cpu_weight.is_some() {
            need.push("cpu");
        }
        if spec.cpus.is_some() {
            need.push("cpuset");
        }
        if spec.memory_min.is_some() {
            need.push("memory");
        }
        let available = read(root, "cgroup.controllers")?;
        let enabled = read(root, "cgroup.subtree_control")?;
        for c in &need {
            if !available.split_whitespace().any(|a| a == *c) {
                return Err(err(format!(
                    "cgroup v2: the {c} controller is not available at {} (its cgroup.controllers reads {available:?})",
                    root.display()
                )));
            }
            if !enabled.split_whitespace().any(|a| a == *c) {
                // The root's subtree_control is the machine's, not ivnet's to change.
                return Err(err(format!(
                    "cgroup v2: the {c} controller is not enabled for the root's children \
                     ({}/cgroup.subtree_control reads {enabled:?}); enable it first \
                     (echo +{c} > {}/cgroup.subtree_control), or drop that setting",
                    root.display(),
                    root.display()
                )));
            }
        }
        if let Some(cpus) = &spec.cpus {
            let avail = read(root, "cpuset.cpus.effective")?;
            Group::check_cpus(cpus, &avail, root)?;
        }
        let dir = self.mkdir(root.join(&self.name), origin)?;
        if let Some(w) = spec.cpu_weight {
            self.set(&dir, "cpu.weight", w.to_string())?;
        }
        if let Some(cpus) = &spec.cpus {
            self.set(&dir, "cpuset.cpus", cpus.to_string())?;
        }
        if let Some(m) = spec.memory_min {
            self.set(&dir, "memory.min", m.to_string())?;
        }
        Ok(())
    }

    /// Moves process `pid` (all its threads) into the group; its children from then on are
    /// born there.
    pub fn add(&self, pid: u32) -> io::Result<()> {
        for m in &self.made {
            write(&m.dir, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    /// The processes in the group (the union over its directories).
    pub fn pids(&self) -> Vec<u32> {
        let mut out = BTreeSet::new();
        for m in &self.made {
            if let Ok(t) = fs::read_to_string(m.dir.join("cgroup.procs")) {
                out.extend(t.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
            }
        }
        out.into_iter().collect()
    }

    /// True when the group can be one ivnet made for `name` under `root`: each directory is
    /// named `ivnet-<name>` and lies inside `root`, as does its origin. A group read from a
    /// state file that fails this is left alone.
    pub fn is_plausible(&self, root: &Path, name: &str) -> bool {
        let want = Group::dir_name(name);
        let inside = |p: &Path| {
            p.is_absolute()
                && p.starts_with(root)
                && !p
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
        };
        self.name == want
            && self.made.iter().all(|m| {
                m.dir.file_name().is_some_and(|n| n == want.as_str())
                    && inside(&m.dir)
                    && inside(&m.origin)
            })
    }

    /// Removes the group: this process leaves it first (back to where it was), then each
    /// directory is removed, waiting up to 5 s for processes that are exiting. A group that
    /// still holds processes after that is left, and named in the log.
    pub fn remove(&self) {
        let me = std::process::id().to_string();
        for m in self.made.iter().rev() {
            if !m.dir.exists() {
                continue;
            }
            let inside = fs::read_to_string(m.dir.join("cgroup.procs")).unwrap_or_default();
            if inside.lines().any(|l| l.trim() == me) {
                let back = if m.origin.join("cgroup.procs").exists() {
                    &m.origin
                } else {
                    m.dir.parent().unwrap_or(&m.origin)
                };
                if let Err(e) = write(back, "cgroup.procs", &me) {
                    warn!("leaving cgroup {}: {e}", m.dir.display());
                }
            }
            let end = Instant::now() + Duration::from_secs(5);
            loop {
                match fs::remove_dir(&m.dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) if Instant::now() >= end => {
                        let left =
                            fs::read_to_string(m.dir.join("cgroup.procs")).unwrap_or_default();
                        warn!(
                            "cgroup {}: {e}; processes still in it: {}",
                            m.dir.display(),
                            left.split_whitespace().collect::<Vec<_>>().join(" ")
                        );
                        break;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
