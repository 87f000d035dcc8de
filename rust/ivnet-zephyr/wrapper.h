/*
 * The Zephyr API the Rust driver binds to (bindgen's entry point). bindgen also writes C
 * wrappers for the static inline functions reached from here (syscall stubs, ivshmem API,
 * net_pkt_get_len, ...); the module's CMake compiles them into the image.
 * SPDX-License-Identifier: Apache-2.0
 */
/* With KERNEL defined the syscall headers expect the user-mode machinery; without USERSPACE
 * the plain inline stubs that call z_impl_* are what we want. */
#undef KERNEL

#include <zephyr/autoconf.h>
#include <zephyr/kernel.h>
#include <zephyr/device.h>
#include <zephyr/random/random.h>
#include <zephyr/drivers/virtualization/ivshmem.h>
#include <zephyr/net/net_if.h>
#include <zephyr/net/net_pkt.h>
#include <zephyr/net/net_core.h>
#include <zephyr/net/ethernet.h>
#include <zephyr/net/dhcpv4.h>
#include <zephyr/kernel/internal/mm.h>
#include <zephyr/stats/stats.h>

#include "eth_ivnet.h"

/* Values that are macros with casts or expressions, which bindgen does not evaluate. */
const uint32_t IVNET_SYS_TICKS_PER_SEC = CONFIG_SYS_CLOCK_TICKS_PER_SEC;
const int IVNET_AF_UNSPEC = AF_UNSPEC;
const uint32_t IVNET_POLL_TYPE_SIGNAL = K_POLL_TYPE_SIGNAL;
const uint32_t IVNET_THREAD_PRIORITY = CONFIG_ETH_IVNET_THREAD_PRIORITY;
const uint32_t IVNET_RX_BUDGET = CONFIG_ETH_IVNET_RX_BUDGET;
const uint32_t IVNET_RX_BUSY_MS = CONFIG_ETH_IVNET_RX_BUSY_MS;
#ifdef CONFIG_ETH_IVNET_RX_CHECKSUM_OFFLOAD
const bool IVNET_RX_CHECKSUM_OFFLOAD = true;
#else
const bool IVNET_RX_CHECKSUM_OFFLOAD = false;
#endif
const uint32_t IVNET_TX_WAIT_MS = CONFIG_ETH_IVNET_TX_WAIT_MS;
const uint32_t IVNET_PEER_TIMEOUT_MS = CONFIG_ETH_IVNET_PEER_TIMEOUT_MS;
const uint32_t IVNET_TX_WAIT_BUDGET_PCT = CONFIG_ETH_IVNET_TX_WAIT_BUDGET_PCT;
const uint32_t IVNET_MTU = NET_ETH_MTU;
const int IVNET_POLL_MODE_NOTIFY_ONLY = K_POLL_MODE_NOTIFY_ONLY;
const uint32_t IVNET_V2_PROTO_NET = IVSHMEM_V2_PROTO_NET;
const uint32_t IVNET_K_MEM_CACHE_NONE = K_MEM_CACHE_NONE;
const uint32_t IVNET_K_MEM_PERM_RW = K_MEM_PERM_RW;
/* QEMU's fw_cfg (the cell configuration), when the devicetree has one (the module's own
 * compatible: later Zephyr releases define "qemu,fw-cfg-mmio" for a driver of theirs); else 0. */
#if DT_HAS_COMPAT_STATUS_OKAY(ivnet_fw_cfg_mmio)
const uintptr_t IVNET_FW_CFG_BASE = DT_REG_ADDR_RAW(DT_COMPAT_GET_ANY_STATUS_OKAY(ivnet_fw_cfg_mmio));
#else
const uintptr_t IVNET_FW_CFG_BASE = 0;
#endif
