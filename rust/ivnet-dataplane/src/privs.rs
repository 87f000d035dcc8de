//! Least privilege for the long-running processes of a network.
//!
//! `ivnet up` needs root to build a network (bridge, TAPs, nftables, DHCP). Once it is built,
//! the supervisor keeps running as uid 0, but with only the capabilities it still needs:
//! [`SUPERVISOR_CAPS`] permitted and in the bounding set (restarting dnsmasq and the cells,
//! which drop their user themselves), of which only [`SUPERVISOR_EFFECTIVE`] is effective
//! (links, nftables, `ip_forward` and IPv6 forwarding at teardown, signalling cells that run as another user),
//! and `no_new_privs`, so neither it nor anything it starts can regain the others.
//!
//! What this does not do: the threads stay uid 0, so a thread without capabilities can still
//! write files owned by root; and threads share one address space. A compromise of a worker
//! thread through memory corruption is therefore not contained; the capability drop limits
//! what a confused thread (a logic error, a hostile input that steers a system call) can do to
//! the network and the machine. The cells' QEMUs drop to an unprivileged user themselves once they have
//! opened their sockets (`-run-with user=`) and run under QEMU's seccomp sandbox (see
//! [`qemu_args`]).
//!
//! Capabilities belong to threads, not processes: [`keep_only`] changes the calling thread (and
//! what it starts later). The supervisor's worker threads, which handle what peers write (host
//! peers, ivshmem servers, the observer), drop every capability as they start
//! ([`drop_all_in_thread`]); the main thread keeps [`SUPERVISOR_CAPS`] once the network is
//! built. The standalone `ivnet server` and `ivnet peer` drop everything once their socket or
//! TAP is open.

use std::io;

/// A Linux capability number (see capabilities(7)).
pub type Cap = u32;

/// CAP_KILL: signal the cells' QEMUs, which run as another user.
pub const CAP_KILL: Cap = 5;
/// CAP_SETGID: dnsmasq and QEMU drop their group.
pub const CAP_SETGID: Cap = 6;
/// CAP_SETUID: dnsmasq and QEMU drop their user.
pub const CAP_SETUID: Cap = 7;
/// CAP_NET_BIND_SERVICE: dnsmasq binds the DHCP port.
pub const CAP_NET_BIND_SERVICE: Cap = 10;
/// CAP_NET_ADMIN: links, addresses, nftables, `ip_forward` and IPv6 forwarding, dnsmasq's ARP
/// entries.
pub const CAP_NET_ADMIN: Cap = 12;
/// CAP_NET_RAW: dnsmasq's DHCP socket.
pub const CAP_NET_RAW: Cap = 13;

/// What the supervisor may still use after set-up, or hand to what it starts (permitted and
/// bounding sets).
pub const SUPERVISOR_CAPS: [Cap; 6] = [
    CAP_KILL,
    CAP_SETGID,
    CAP_SETUID,
    CAP_NET_BIND_SERVICE,
    CAP_NET_ADMIN,
    CAP_NET_RAW,
];

/// What the supervisor's own thread keeps effective: signalling the cells (which run as
/// another user) and configuring the network. The others are only passed on to dnsmasq and
/// QEMU, which drop their user themselves.
pub const SUPERVISOR_EFFECTIVE: [Cap; 2] = [CAP_KILL, CAP_NET_ADMIN];

const PR_CAPBSET_DROP: libc::c_int = 24;
const PR_SET_NO_NEW_PRIVS: libc::c_int = 38;
const CAP_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn last_cap() -> Cap {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Keeps only `keep` in the calling thread's permitted and bounding sets, with `effective`
/// (a subset of `keep`) effective, none inheritable, and sets `no_new_privs`: children started
/// afterwards get at most `keep`. The bounding set is dropped first and on a best-effort basis
/// (it needs CAP_SETPCAP, which a thread started after its creator dropped it lacks); the
/// permitted and effective sets, and `no_new_privs`, are always set, or this fails.
pub fn keep_only(keep: &[Cap], effective: &[Cap]) -> io::Result<()> {
    for cap in 0..=last_cap() {
        if keep.contains(&cap) {
            continue;
        }
        // SAFETY: prctl(PR_CAPBSET_DROP, cap) takes plain integers and touches no memory.
        let r = unsafe {
            libc::prctl(
                PR_CAPBSET_DROP,
                cap as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            )
        };
        if r != 0 {
            // EINVAL: a capability this kernel does not know; EPERM: no CAP_SETPCAP. Either
            // way the capset below still takes the capability out of the permitted set, and
            // with no_new_privs nothing can bring it back.
            break;
        }
    }
    let mut data = [CapData::default(); 2];
    for &cap in keep {
        let (word, bit) = ((cap / 32) as usize, 1u32 << (cap % 32));
        data[word].permitted |= bit;
        if effective.contains(&cap) {
            data[word].effective |= bit;
        }
    }
    let mut hdr = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    // SAFETY: capset reads one header and two data structs of the layout the kernel defines
    // for version 3; both live on our stack for the call.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1) takes plain integers and touches no memory.
    let r = unsafe {
        libc::prctl(
            PR_SET_NO_NEW_PRIVS,
            1 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Drops every capability of the calling thread (and of what it starts later), when running
/// as root. For threads and processes that, once started, only use file descriptors they
/// already hold. An error means the thread still holds capabilities: its caller must not go on
/// to handle untrusted input.
pub fn drop_all_in_thread() -> io::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    keep_only(&[], &[]).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("could not drop the capabilities of this thread: {e}"),
        )
    })
}

/// The capability sets of a task from /proc (`CapEff`, `CapBnd`, ...): name -> mask. `tid`
/// names a thread of this process when given, else the process (its main thread). from /proc (`CapEff`, `CapBnd`, ...): name -> mask.
pub fn caps_of(pid: u32, tid: Option<u32>) -> io::Result<Vec<(String, u64)>> {
    let path = match tid {
        Some(t) => format!("/proc/{pid}/task/{t}/status"),
        None => format!("/proc/{pid}/status"),
    };
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let k = k.strip_prefix("Cap")?;
            Some((k.to_string(), u64::from_str_radix(v.trim(), 16).ok()?))
        })
        .collect())
}

/// The mask of `caps`.
pub fn mask(caps: &[Cap]) -> u64 {
    caps.iter().fold(0, |m, &c| m | (1u64 << c))
}

/// The user the cells' QEMUs drop to: `$IVNET_QEMU_USER`, else `nobody`. It must exist.
pub fn qemu_user() -> io::Result<String> {
    let user = std::env::var("IVNET_QEMU_USER").unwrap_or_else(|_| "nobody".into());
    if user.is_empty()
        || !user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(io::Error::other(format!(
            "IVNET_QEMU_USER {user:?} is not a user name"
        )));
    }
    let c = std::ffi::CString::new(user.clone()).map_err(io::Error::other)?;
    // SAFETY: getpwnam reads a NUL-terminated string; we only test the result for null.
    if unsafe { libc::getpwnam(c.as_ptr()) }.is_null() {
        return Err(io::Error::other(format!(
            "user {user:?} (IVNET_QEMU_USER, the user the cells' QEMUs run as) does not exist"
        )));
    }
    Ok(user)
}

/// QEMU's own hardening options: drop to `user` once the sockets are open, and the seccomp
/// sandbox (no obsolete system calls, no spawning processes, no changing its own scheduling or
/// resource limits). `elevateprivileges=deny` cannot be used with `-run-with user=`: QEMU
/// installs the filter before it changes user, and the filter would kill it then (SIGSYS);
/// once it runs as `user` it holds no capabilities and cannot get root back anyway.
pub fn qemu_args(user: &str) -> Vec<String> {
    vec![
        "-run-with".into(),
        format!("user={user}"),
        "-sandbox".into(),
        "on,obsolete=deny,spawn=deny,resourcecontrol=deny".into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_and_proc_parsing() {
        assert_eq!(mask(&[CAP_NET_ADMIN, CAP_KILL]), (1 << 12) | (1 << 5));
        let mine = caps_of(std::process::id(), None).unwrap();
        for k in ["Inh", "Prm", "Eff", "Bnd", "Amb"] {
            assert!(mine.iter().any(|(n, _)| n == k), "{k} missing: {mine:?}");
        }
    }

    #[test]
    fn qemu_user_names_are_checked() {
        std::env::set_var("IVNET_QEMU_USER", "../etc");
        assert!(qemu_user()
            .unwrap_err()
            .to_string()
            .contains("not a user name"));
        std::env::set_var("IVNET_QEMU_USER", "no-such-user-ivnet");
        assert!(qemu_user()
            .unwrap_err()
            .to_string()
            .contains("does not exist"));
        std::env::remove_var("IVNET_QEMU_USER");
    }
}
