/*
 * ivnet echo: echoes UDP datagrams and TCP streams on port 4242 over the ivnet link, and
 * discards UDP datagrams sent to port 9 (a sink for load tests, IPv4); the echo services answer
 * in IPv6 too when the image has it (CONFIG_NET_IPV6: the network cells).
 * When the link goes away the stack may fail the sockets; each loop then reopens its socket
 * after a pause instead of spinning.
 * SPDX-License-Identifier: Apache-2.0
 */
#include <zephyr/kernel.h>
#include <zephyr/logging/log.h>
#include <zephyr/net/socket.h>
#include <zephyr/stats/stats.h>

LOG_MODULE_REGISTER(ivnet_echo, LOG_LEVEL_INF);

/* The echo services' counters, readable over MCUmgr's stat group ("echo") when CONFIG_STATS. */
STATS_SECT_START(echo_stats)
STATS_SECT_ENTRY32(udp_rx)
STATS_SECT_ENTRY32(udp_tx)
STATS_SECT_ENTRY32(discarded)
STATS_SECT_ENTRY32(tcp_conns)
STATS_SECT_ENTRY32(tcp_bytes)
STATS_SECT_ENTRY32(send_errors)
STATS_SECT_END;

STATS_NAME_START(echo_stats)
STATS_NAME(echo_stats, udp_rx)
STATS_NAME(echo_stats, udp_tx)
STATS_NAME(echo_stats, discarded)
STATS_NAME(echo_stats, tcp_conns)
STATS_NAME(echo_stats, tcp_bytes)
STATS_NAME(echo_stats, send_errors)
STATS_NAME_END(echo_stats);

STATS_SECT_DECL(echo_stats) echo_stats;

#define ECHO_PORT 4242
#define DISCARD_PORT 9
#define TCP_BUF 1460

/* A service's port and address family, packed into one thread argument. */
#define SERVICE(port, family) ((void *)(uintptr_t)((port) | ((family) << 16)))
#define SERVICE_PORT(arg)     ((uint16_t)((uintptr_t)(arg) & 0xffff))
#define SERVICE_FAMILY(arg)   ((int)((uintptr_t)(arg) >> 16))

static int open_bound_port(int family, int type, int proto, uint16_t port)
{
	struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
	struct sockaddr_in6 addr6 = {.sin6_family = AF_INET6, .sin6_port = htons(port)};
	struct sockaddr *a = family == AF_INET6 ? (struct sockaddr *)&addr6 : (struct sockaddr *)&addr;
	socklen_t al = family == AF_INET6 ? sizeof(addr6) : sizeof(addr);
	int s = zsock_socket(family, type, proto);

	if (s < 0) {
		return -errno;
	}
	if (zsock_bind(s, a, al) < 0 ||
	    (type == SOCK_STREAM && zsock_listen(s, 1) < 0)) {
		int err = -errno;

		zsock_close(s);
		return err;
	}
	return s;
}

/*
 * One UDP service on `port`: echoes each datagram back, or (discard, RFC 863) drops it; the
 * discard port on 9 is a sink for load tests, whose arrivals `net stats` counts.
 */
static void udp_serve(void *service, void *echo, void *buf)
{
	for (;;) {
		int s = open_bound_port(SERVICE_FAMILY(service), SOCK_DGRAM, IPPROTO_UDP,
					SERVICE_PORT(service));

		while (s >= 0) {
			struct sockaddr_in6 from; /* the larger of the two families' */
			socklen_t fl = sizeof(from);
			ssize_t n = zsock_recvfrom(s, buf, 1500, 0, (struct sockaddr *)&from, &fl);

			if (n < 0) {
				break;
			}
			if (echo) {
				STATS_INC(echo_stats, udp_rx);
				if (zsock_sendto(s, buf, n, 0, (struct sockaddr *)&from, fl) == n) {
					STATS_INC(echo_stats, udp_tx);
				} else {
					STATS_INC(echo_stats, send_errors);
				}
			} else {
				STATS_INC(echo_stats, discarded);
			}
		}
		if (s >= 0) {
			zsock_close(s);
		}
		k_sleep(K_SECONDS(1));
	}
}

static void tcp_echo(void *service, void *tcp_buf, void *c)
{
	uint8_t *buf = tcp_buf;

	for (;;) {
		int s = open_bound_port(SERVICE_FAMILY(service), SOCK_STREAM, IPPROTO_TCP,
					SERVICE_PORT(service));

		while (s >= 0) {
			int conn = zsock_accept(s, NULL, NULL);
			ssize_t n;

			if (conn < 0) {
				break;
			}
			STATS_INC(echo_stats, tcp_conns);
			while ((n = zsock_recv(conn, buf, TCP_BUF, 0)) > 0) {
				ssize_t sent = 0;

				STATS_INCN(echo_stats, tcp_bytes, n);
				/* A send may take only part of the data: echo all of it. */
				while (sent < n) {
					ssize_t r = zsock_send(conn, buf + sent, n - sent, 0);

					if (r < 0) {
						break;
					}
					sent += r;
				}
				if (sent < n) {
					STATS_INC(echo_stats, send_errors);
					break;
				}
			}
			zsock_close(conn);
		}
		if (s >= 0) {
			zsock_close(s);
		}
		k_sleep(K_SECONDS(1));
	}
}

static uint8_t echo_buf[1500], discard_buf[1500], tcp_buf[TCP_BUF];

K_THREAD_DEFINE(udp_echo_tid, 2048, udp_serve, SERVICE(ECHO_PORT, AF_INET), (void *)1, echo_buf, 7,
		0, 0);
K_THREAD_DEFINE(udp_discard_tid, 2048, udp_serve, SERVICE(DISCARD_PORT, AF_INET), NULL,
		discard_buf, 7, 0, 0);
K_THREAD_DEFINE(tcp_echo_tid, 2048, tcp_echo, SERVICE(ECHO_PORT, AF_INET), tcp_buf, NULL, 7, 0, 0);

#if defined(CONFIG_NET_IPV6)
static uint8_t echo6_buf[1500], tcp6_buf[TCP_BUF];

K_THREAD_DEFINE(udp_echo6_tid, 2048, udp_serve, SERVICE(ECHO_PORT, AF_INET6), (void *)1,
		echo6_buf, 7, 0, 0);
K_THREAD_DEFINE(tcp_echo6_tid, 2048, tcp_echo, SERVICE(ECHO_PORT, AF_INET6), tcp6_buf, NULL, 7,
		0, 0);
#endif

int main(void)
{
	(void)STATS_INIT_AND_REG(echo_stats, STATS_SIZE_32, "echo");
	LOG_INF("ivnet echo: UDP and TCP echo on port %d, UDP discard on %d; shell: net iface, "
		"net ping, zperf", ECHO_PORT, DISCARD_PORT);
	return 0;
}
