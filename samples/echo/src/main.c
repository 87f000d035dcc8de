/*
 * ivnet echo: echoes UDP datagrams and TCP streams on port 4242 over the ivnet link, and
 * discards UDP datagrams sent to port 9 (a sink for load tests).
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

static int open_bound_port(int type, int proto, uint16_t port)
{
	struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
	int s = zsock_socket(AF_INET, type, proto);

	if (s < 0) {
		return -errno;
	}
	if (zsock_bind(s, (struct sockaddr *)&addr, sizeof(addr)) < 0 ||
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
static void udp_serve(void *port, void *echo, void *buf)
{
	for (;;) {
		int s = open_bound_port(SOCK_DGRAM, IPPROTO_UDP, (uint16_t)(uintptr_t)port);

		while (s >= 0) {
			struct sockaddr_in from;
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

static void tcp_echo(void *a, void *b, void *c)
{
	static uint8_t buf[1460];

	for (;;) {
		int s = open_bound_port(SOCK_STREAM, IPPROTO_TCP, ECHO_PORT);

		while (s >= 0) {
			int conn = zsock_accept(s, NULL, NULL);
			ssize_t n;

			if (conn < 0) {
				break;
			}
			STATS_INC(echo_stats, tcp_conns);
			while ((n = zsock_recv(conn, buf, sizeof(buf), 0)) > 0) {
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

static uint8_t echo_buf[1500], discard_buf[1500];

K_THREAD_DEFINE(udp_echo_tid, 2048, udp_serve, (void *)ECHO_PORT, (void *)1, echo_buf, 7, 0, 0);
K_THREAD_DEFINE(udp_discard_tid, 2048, udp_serve, (void *)DISCARD_PORT, NULL, discard_buf, 7, 0,
		0);
K_THREAD_DEFINE(tcp_echo_tid, 2048, tcp_echo, NULL, NULL, NULL, 7, 0, 0);

int main(void)
{
	(void)STATS_INIT_AND_REG(echo_stats, STATS_SIZE_32, "echo");
	LOG_INF("ivnet echo: UDP and TCP echo on port %d, UDP discard on %d; shell: net iface, "
		"net ping, zperf", ECHO_PORT, DISCARD_PORT);
	return 0;
}
