/*
 * ivnet link test, run in QEMU by twister: the VM (192.0.2.1) exchanges real UDP and TCP
 * traffic over the ivnet link with echo servers on the host side (192.0.2.2:7777, in a
 * network namespace the pytest harness creates) and checks every byte that comes back.
 * SPDX-License-Identifier: Apache-2.0
 */
#include <zephyr/kernel.h>
#include <zephyr/ztest.h>
#include <zephyr/net/net_if.h>
#include <zephyr/net/socket.h>

#define HOST "192.0.2.2"
#define PORT 7777

static struct sockaddr_in host_addr(void)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(PORT)};

	zsock_inet_pton(AF_INET, HOST, &a.sin_addr);
	return a;
}

static void set_timeout(int s, int ms)
{
	struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};

	zsock_setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
}

static uint8_t pattern(size_t i, uint32_t seed)
{
	return (uint8_t)((i * 31u + seed * 7u) ^ (i >> 8));
}

ZTEST(ivnet_link, test_1_carrier)
{
	struct net_if *iface = net_if_get_default();
	int waited = 0;

	zassert_not_null(iface, "no network interface");
	while (!net_if_is_carrier_ok(iface) && waited < 10000) {
		k_msleep(50);
		waited += 50;
	}
	zassert_true(net_if_is_carrier_ok(iface), "carrier still off after 10 s");
	TC_PRINT("carrier on after %d ms\n", waited);
}

ZTEST(ivnet_link, test_2_udp_echo)
{
	static uint8_t out[1400], in[1500];
	struct sockaddr_in a = host_addr();
	int s = zsock_socket(AF_INET, SOCK_DGRAM, IPPROTO_UDP);
	int ok = 0;

	zassert_true(s >= 0, "socket: %d", errno);
	set_timeout(s, 1000);
	for (uint32_t k = 0; k < 200; k++) {
		size_t len = 1 + (k * 97u) % sizeof(out);

		for (size_t i = 0; i < len; i++) {
			out[i] = pattern(i, k);
		}
		zassert_equal(zsock_sendto(s, out, len, 0, (struct sockaddr *)&a, sizeof(a)),
			      (ssize_t)len, "sendto %u: %d", k, errno);
		ssize_t n = zsock_recv(s, in, sizeof(in), 0);

		if (n == (ssize_t)len && memcmp(in, out, len) == 0) {
			ok++;
		}
	}
	zsock_close(s);
	TC_PRINT("UDP: %d/200 datagrams echoed intact\n", ok);
	/* A datagram may be lost while ARP resolves; every one that comes back must be intact. */
	zassert_true(ok >= 199, "only %d/200 UDP datagrams echoed intact", ok);
}

ZTEST(ivnet_link, test_3_tcp_echo)
{
	static uint8_t out[1024], in[1024];
	const size_t total = 256 * 1024;
	struct sockaddr_in a = host_addr();
	int s = zsock_socket(AF_INET, SOCK_STREAM, IPPROTO_TCP);
	size_t sent = 0, got = 0;
	int64_t t0 = k_uptime_get();

	zassert_true(s >= 0, "socket: %d", errno);
	set_timeout(s, 5000);
	zassert_ok(zsock_connect(s, (struct sockaddr *)&a, sizeof(a)), "connect: %d", errno);
	while (got < total) {
		if (sent < total && sent - got < 8 * sizeof(out)) {
			for (size_t i = 0; i < sizeof(out); i++) {
				out[i] = pattern(sent + i, 1);
			}
			ssize_t n = zsock_send(s, out, sizeof(out), 0);

			zassert_true(n > 0, "send: %d", errno);
			sent += n;
			continue;
		}
		ssize_t n = zsock_recv(s, in, sizeof(in), 0);

		zassert_true(n > 0, "recv after %u bytes: %d", (unsigned)got, errno);
		for (ssize_t i = 0; i < n; i++) {
			zassert_equal(in[i], pattern(got + i, 1), "byte %u differs",
				      (unsigned)(got + i));
		}
		got += n;
	}
	zsock_close(s);
	TC_PRINT("TCP: %u bytes echoed intact in %lld ms\n", (unsigned)got,
		 k_uptime_get() - t0);
}

ZTEST_SUITE(ivnet_link, NULL, NULL, NULL, NULL, NULL);
