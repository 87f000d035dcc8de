/*
 * ivnet: per-instance configuration the C shim hands to the Rust driver.
 * Declarations only; the driver logic is in rust/ivnet-zephyr.
 * SPDX-License-Identifier: Apache-2.0
 */
#ifndef IVNET_ETH_IVNET_H_
#define IVNET_ETH_IVNET_H_

#include <zephyr/kernel.h>
#include <zephyr/device.h>
#include <zephyr/net/net_stats.h>

/** What devicetree says about one instance, plus its thread's stack. */
struct ivnet_config {
	/** The ivshmem device carrying the link. */
	const struct device *ivshmem;
	/** local-mac-address (all zero when absent). */
	uint8_t mac[6];
	/** zephyr,random-mac-address. */
	bool random_mac;
	/** Devicetree instance number. */
	int instance;
	/** The driver thread and its stack. */
	struct k_thread *thread;
	k_thread_stack_t *stack;
	size_t stack_size;
};

/** Per-instance run-time state: a pointer to the Rust driver object. */
struct ivnet_data {
	void *driver;
#if defined(CONFIG_NET_STATISTICS_ETHERNET)
	/** Zephyr's Ethernet statistics (`net stats`): the Ethernet L2 counts frames, bytes,
	 * broadcast and multicast; the driver its own drops, timeouts and restarts. */
	struct net_stats_eth stats;
#endif
};

/** Logs one message from Rust through Zephyr's logging (level: 1 err .. 4 dbg). */
void ivnet_log(int level, const char *msg);

#endif /* IVNET_ETH_IVNET_H_ */
