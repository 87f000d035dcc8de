//! The processes a supervisor starts besides its own threads: dnsmasq and the cells' QEMUs
//! (their command lines, configuration and images), and the NAT and forwards that follow the
//! cells' leases.

use super::*;

/// The QEMU with the project's ivshmem 2.0 device: $IVNET_QEMU_V2, else the newest build of
/// scripts/qemu-build.sh in the invoking user's cache (~/.cache/ivnet/qemu, also when run with
/// sudo), else none.
pub(super) fn qemu_v2() -> Option<String> {
    if let Ok(q) = std::env::var("IVNET_QEMU_V2") {
        return Some(q);
    }
    let mut homes: Vec<PathBuf> = std::env::var_os("HOME")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    if let Ok(u) = std::env::var("SUDO_USER") {
        if let Ok(Some(user)) = nix::unistd::User::from_name(&u) {
            homes.push(user.dir);
        }
    }
    for h in homes {
        let cache = h.join(".cache/ivnet/qemu");
        let Ok(rd) = fs::read_dir(&cache) else {
            continue;
        };
        let mut builds: Vec<PathBuf> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("qemu-system-aarch64"))
            .filter(|p| {
                p.parent()
                    .and_then(|d| d.file_name())
                    .is_some_and(|n| n.to_string_lossy().starts_with("build-"))
                    && p.is_file()
            })
            .collect();
        builds.sort();
        if let Some(b) = builds.pop() {
            return Some(b.to_string_lossy().into_owned());
        }
    }
    None
}

pub(super) fn kill(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let end = Instant::now() + grace;
    while Instant::now() < end {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Supervisor {
    /// Copies every cell's image into the state directory while the supervisor still has all
    /// of root's rights: a cell restarted later (by a supervisor that no longer may read what
    /// root can read only by overriding permissions, say an image under a user's private home)
    /// boots the same image it was started with.
    pub(super) fn copy_images(&self) -> io::Result<()> {
        for c in &self.topo.cells {
            fs::copy(&c.image, self.paths.image(&c.name))
                .map_err(|e| err(format!("cell {}: image {}: {e}", c.name, c.image.display())))?;
        }
        Ok(())
    }

    pub(super) fn start_dnsmasq(&mut self) -> io::Result<()> {
        let h = &self.topo.host;
        let mut conf = format!(
            "# Written by ivnet up for network {b}.\n\
             interface={b}\nbind-interfaces\nexcept-interface=lo\nport=0\nno-resolv\nno-hosts\n\
             dhcp-leasefile={l}\ndhcp-authoritative\nlog-dhcp\nlog-facility={log}\n",
            b = h.bridge,
            l = self.paths.leases().display(),
            log = self.paths.dnsmasq_log().display(),
        );
        let mut serves = Vec::new();
        if let Some((lo, hi)) = h.dhcp {
            let mask = Ipv4Addr::from(ivnet_core::cell::netmask(h.subnet.prefix));
            conf += &format!(
                "dhcp-range={lo},{hi},{mask},1h\ndhcp-option=option:router,{r}\n",
                r = h.address
            );
            serves.push(format!("DHCP {lo} - {hi}"));
        }
        if let Some(p6) = h.subnet6 {
            // Router advertisements of the bridge's /64 (SLAAC, the host as default router);
            // no DHCPv6.
            conf += &format!("enable-ra\ndhcp-range={p6},ra-only,64,1h\n");
            serves.push(format!("router advertisements of {p6}/64"));
        }
        for c in &self.topo.cells {
            if c.address == Addressing::Dhcp {
                conf += &format!("dhcp-host={},{}\n", c.mac, c.name);
            }
        }
        fs::write(self.paths.dnsmasq_conf(), conf)?;
        let child = Command::new("dnsmasq")
            .arg("--keep-in-foreground")
            .arg(format!(
                "--conf-file={}",
                self.paths.dnsmasq_conf().display()
            ))
            .arg("--pid-file")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(
                self.paths.dnsmasq_log().with_extension("err"),
            )?)
            .process_group(0)
            .spawn()
            .map_err(|e| err(format!("dnsmasq: {e} (is dnsmasq installed?)")))?;
        let pid = child.id();
        self.dnsmasq = Some(child);
        self.note_process("dnsmasq".into(), pid);
        std::thread::sleep(Duration::from_millis(300));
        if let Some(st) = self
            .dnsmasq
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            let msg = fs::read_to_string(self.paths.dnsmasq_log().with_extension("err"))
                .unwrap_or_default();
            return Err(err(format!("dnsmasq exited ({st}): {}", msg.trim())));
        }
        info!("dnsmasq (pid {pid}) serves {}", serves.join(", "));
        Ok(())
    }

    pub(super) fn qemu_command(&self, i: usize) -> io::Result<Command> {
        let c = &self.topo.cells[i];
        fs::write(
            self.paths.cell_config(&c.name),
            format!("name={}\n{}", c.name, self.topo.cell_config(i)),
        )?;
        let con = self.paths.console(&c.name);
        let _ = fs::remove_file(&con);
        let ifaces = self.topo.cell_ifaces(i);
        let v2 = ifaces
            .first()
            .is_some_and(|f| self.topo.links[f.link].ivshmem == 2);
        let mut cmd = Command::new(self.qemu_for(v2));
        cmd.args([
            "-cpu",
            "cortex-a53",
            "-nographic",
            "-machine",
            "virt,gic-version=3",
        ])
        .args(["-net", "none", "-monitor", "none", "-name", &c.name])
        .arg("-chardev")
        .arg(format!(
            "socket,id=con,path={},server=on,wait=off,logfile={},logappend=on",
            con.display(),
            self.paths.console_log(&c.name).display()
        ))
        .args(["-serial", "chardev:con"]);
        for (k, f) in ifaces.iter().enumerate() {
            cmd.arg("-chardev")
                .arg(format!(
                    "socket,path={},id=ivs{k}",
                    self.paths.link(f.link).display()
                ))
                .arg("-device")
                .arg(if self.topo.links[f.link].ivshmem == 2 {
                    format!("ivshmem2,chardev=ivs{k}")
                } else {
                    format!("ivshmem-doorbell,vectors=2,chardev=ivs{k}")
                });
        }
        cmd.arg("-fw_cfg").arg(format!(
            "name={},file={}",
            ivnet_core::cell::FW_CFG_NAME,
            self.paths.cell_config(&c.name).display()
        ));
        cmd.arg("-kernel").arg(self.paths.image(&c.name));
        if let Some(user) = &self.qemu_user {
            cmd.args(ivnet_dataplane::privs::qemu_args(user));
        }
        // One file in append mode for both streams: a restart keeps why the cell died.
        let log = fs::File::options()
            .create(true)
            .append(true)
            .open(self.paths.qemu_log(&c.name))?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        Ok(cmd)
    }

    /// The QEMU binary for a cell (on ivshmem 2.0 links or not).
    pub(super) fn qemu_for(&self, v2: bool) -> &str {
        match (&self.qemu_v2, v2) {
            (Some(q), true) => q,
            _ => &self.qemu,
        }
    }

    pub(super) fn start_cell(&mut self, i: usize) -> io::Result<()> {
        let name = self.topo.cells[i].name.clone();
        let mut cmd = self.qemu_command(i)?;
        let mut child = cmd.spawn().map_err(|e| {
            let prog = cmd.get_program().to_string_lossy().into_owned();
            err(format!("cell {name}: {prog}: {e}"))
        })?;
        let pid = child.id();
        // Recorded at once, so that no path (a kill of the supervisor included) leaks it.
        self.note_process(format!("cell {name}"), pid);
        std::thread::sleep(Duration::from_millis(300));
        if let Ok(Some(st)) = child.try_wait() {
            let log = fs::read_to_string(self.paths.qemu_log(&name)).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            return Err(err(format!(
                "cell {name}: QEMU exited at once ({st}): {}",
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            )));
        }
        info!("cell {name}: QEMU pid {pid}");
        self.cells[i].child = Some(child);
        Ok(())
    }

    /// The forwards whose cell has an address now (DHCP cells once they have a lease).
    pub(super) fn resolved_forwards(&self) -> Vec<nft::Forward> {
        self.topo
            .host
            .forwards
            .iter()
            .filter_map(|f| {
                let addr = self.cell_address(f.cell)?;
                Some(nft::Forward {
                    port: f.port,
                    proto: f.proto.parse().ok()?,
                    to_addr: addr,
                    to_addr6: self.topo.cell_address6(f.cell),
                    to_port: f.to,
                })
            })
            .collect()
    }

    /// The address of a cell on the host bridge (static, or its DHCP lease).
    pub(super) fn cell_address(&self, i: usize) -> Option<Ipv4Addr> {
        let c = &self.topo.cells[i];
        match c.address {
            Addressing::Static(a) => Some(a),
            Addressing::Dhcp => self.leases.get(&c.mac).copied(),
            Addressing::None => None,
        }
    }

    pub(super) fn apply_nat(&mut self) -> io::Result<()> {
        let forwards = self.resolved_forwards();
        if self.applied_forwards.as_ref() == Some(&forwards) {
            return Ok(());
        }
        let h = &self.topo.host;
        nft::apply(&nft::NatConfig {
            table: nft::table_name(&h.bridge),
            bridge: h.bridge.clone(),
            subnet: (h.subnet.network, h.subnet.prefix),
            subnet6: h.subnet6,
            uplink: h.uplink.clone(),
            forwards: forwards.clone(),
        })?;
        info!("nftables: {} forward(s) in place", forwards.len());
        self.applied_forwards = Some(forwards);
        Ok(())
    }
}
