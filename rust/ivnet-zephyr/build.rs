//! Generates the Zephyr bindings (bindgen) and the C shim's header (cbindgen).
//!
//! Run by cargo from the module's CMake, which passes the build's include directories and
//! definitions (INCLUDE_DIRS, INCLUDE_DEFINES) and where to put the outputs
//! (IVNET_WRAPPER_FILE: C wrappers for static inline functions; IVNET_HEADER_FILE: the header).
//! What zephyr-lang-rust's `zephyr` crate covers (semaphores, sleep, uptime, the critical
//! section) is not bound here; that crate's own build takes the rest of the environment.

use std::env;
use std::path::PathBuf;

fn var(name: &str) -> String {
    println!("cargo:rerun-if-env-changed={name}");
    env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: this crate is built by the ivnet Zephyr module's CMake (west build)")
    })
}

fn main() {
    let crate_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let target = env::var("TARGET").unwrap();
    let includes = var("INCLUDE_DIRS");
    let defines = var("INCLUDE_DEFINES");
    let wrapper_c = PathBuf::from(var("IVNET_WRAPPER_FILE"));
    let header = PathBuf::from(var("IVNET_HEADER_FILE"));
    let shim_dir = crate_dir.join("../../drivers/ethernet");
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!(
        "cargo:rerun-if-changed={}",
        shim_dir.join("eth_ivnet.h").display()
    );
    println!("cargo:rerun-if-changed=src");

    // Kconfig symbols the Rust code depends on, from the build's autoconf.h.
    println!("cargo::rustc-check-cfg=cfg(ivshmem_v2)");
    println!("cargo::rustc-check-cfg=cfg(ivnet_cell_config)");
    println!("cargo::rustc-check-cfg=cfg(ivnet_dhcpv4)");
    println!("cargo::rustc-check-cfg=cfg(ivnet_ipv6)");
    println!("cargo::rustc-check-cfg=cfg(ivnet_stats)");
    println!("cargo::rustc-check-cfg=cfg(ivnet_eth_stats)");
    let autoconf = includes
        .split([';', ' '])
        .map(|d| PathBuf::from(d).join("zephyr/autoconf.h"))
        .find(|p| p.exists());
    if let Some(a) = &autoconf {
        println!("cargo:rerun-if-changed={}", a.display());
        let text = std::fs::read_to_string(a).unwrap_or_default();
        let set = |sym: &str| {
            let want = format!("#define CONFIG_{sym} 1");
            text.lines().any(|l| l.trim() == want)
        };
        for (sym, cfg) in [
            ("IVSHMEM_V2", "ivshmem_v2"),
            ("IVNET_CELL_CONFIG", "ivnet_cell_config"),
            ("NET_DHCPV4", "ivnet_dhcpv4"),
            ("NET_IPV6", "ivnet_ipv6"),
            ("ETH_IVNET_STATS", "ivnet_stats"),
            ("NET_STATISTICS_ETHERNET", "ivnet_eth_stats"),
        ] {
            if set(sym) {
                println!("cargo:rustc-cfg={cfg}");
            }
        }
    }

    let mut b = bindgen::Builder::default()
        .header(crate_dir.join("wrapper.h").to_str().unwrap())
        .use_core()
        .ctypes_prefix("core::ffi")
        .clang_arg(format!("--target={target}"))
        .clang_arg(format!("-I{}", shim_dir.display()))
        .clang_arg("-DRUST_BINDGEN");
    for i in includes.split([';', ' ']).filter(|s| !s.is_empty()) {
        b = b.clang_arg(format!("-I{i}"));
    }
    for d in defines.split([';', ' ']).filter(|s| !s.is_empty()) {
        b = b.clang_arg(format!("-D{d}"));
    }
    let bindings = b
        .wrap_static_fns(true)
        .wrap_static_fns_path(wrapper_c.with_extension(""))
        .wrap_static_fns_suffix("__ivnet")
        .derive_default(true)
        .layout_tests(false)
        .allowlist_function("net_pkt_(rx_alloc_with_buffer|rx_alloc_on_iface|alloc_buffer_raw|read|write|cursor_init|unref|get_len)")
        .allowlist_function("net_recv_data")
        .allowlist_function("net_buf_simple_(add|tailroom|reserve)")
        .allowlist_function("net_if_(carrier_off|set_link_addr|get_device|set_default)")
        .allowlist_function("net_if_ipv4_(addr_add|set_netmask_by_addr|set_gw)")
        .allowlist_function("net_if_ipv6_(addr_add|prefix_add)")
        .allowlist_function("net_dhcpv4_start")
        .allowlist_function("k_mem_map_phys_bare")
        .allowlist_function("stats_init_and_reg")
        .allowlist_type("stats_(hdr|name_map)")
        .allowlist_function("net_eth_carrier_(on|off)")
        .allowlist_function("ethernet_init")
        .allowlist_function("ivshmem_(get_mem|get_id|get_vectors|int_peer|register_handler)")
        .allowlist_function(
            "ivshmem_(get_output_mem_section|get_state|set_state|get_max_peers|get_protocol|enable_interrupts)",
        )
        .allowlist_function("k_poll|k_poll_event_init|k_poll_signal_(init|raise|reset)")
        .allowlist_function("k_yield")
        .allowlist_function("k_thread_(create|name_set)")
        .allowlist_function("k_(aligned_alloc|free)")
        .allowlist_function("k_fatal_halt")
        .allowlist_function("sys_rand_get")
        .allowlist_function("device_is_ready")
        .allowlist_function("ivnet_log")
        .allowlist_type("ivnet_(config|data)")
        .allowlist_type("ethernet_hw_caps|ethernet_config_type|ethernet_config")
        .allowlist_var("IVNET_.*")
        .allowlist_var("ETHERNET_.*")
        .allowlist_var("NET_LINK_ETHERNET")
        .allowlist_var("K_POLL_.*")
        .allowlist_var("E(NOBUFS|NETDOWN|NOMEM|IO|INVAL|MSGSIZE|NODEV|NOTSUP|AGAIN)")
        .generate()
        .expect("bindgen failed on the Zephyr headers");
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("writing bindings.rs");

    // From the sources, not `with_crate`: that runs `cargo metadata` here, without the build's
    // `--config` (zephyr-lang-rust's crate patched in), which would resolve `zephyr` anew and
    // rewrite Cargo.lock. The entry points are in lib.rs, the handles they take in dev.rs and
    // net.rs.
    let src = crate_dir.join("src");
    cbindgen::Builder::new()
        .with_src(src.join("lib.rs"))
        .with_src(src.join("dev.rs"))
        .with_src(src.join("net.rs"))
        .with_config(cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).unwrap())
        .generate()
        .expect("cbindgen failed")
        .write_to_file(&header);
}
