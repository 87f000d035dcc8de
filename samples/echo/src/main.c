/*
 * ivnet echo: echoes UDP datagrams and TCP streams on port 4242 over the ivnet link.
 * SPDX-License-Identifier: Apache-2.0
 */
#include <zephyr/kernel.h>
#include <zephyr/logging/log.h>
#include <zephyr/net/socket.h>

LOG_MODULE_REGISTER(ivnet_echo, LOG_LEVEL_INF);

#define ECHO_PORT 4242

static void udp_echo(void *a, void *b, void *c)
{
	struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(ECHO_PORT)};
	static uint8_t buf[1500];
	int s = zsock_socket(AF_INET, SOCK_DGRAM, IPPROTO_UDP);

	if (s < 0 || zsock_bind(s, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		LOG_ERR("UDP echo: socket/bind failed: %d", errno);
		return;
	}
	for (;;) {
		struct sockaddr_in from;
		socklen_t fl = sizeof(from);
		ssize_t n = zsock_recvfrom(s, buf, sizeof(buf), 0, (struct sockaddr *)&from, &fl);

		if (n > 0) {
			zsock_sendto(s, buf, n, 0, (struct sockaddr *)&from, fl);
		}
	}
}

static void tcp_echo(void *a, void *b, void *c)
{
	struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(ECHO_PORT)};
	static uint8_t buf[1460];
	int s = zsock_socket(AF_INET, SOCK_STREAM, IPPROTO_TCP);

	if (s < 0 || zsock_bind(s, (struct sockaddr *)&addr, sizeof(addr)) < 0 ||
	    zsock_listen(s, 1) < 0) {
		LOG_ERR("TCP echo: socket/bind/listen failed: %d", errno);
		return;
	}
	for (;;) {
		int c = zsock_accept(s, NULL, NULL);
		ssize_t n;

		if (c < 0) {
			continue;
		}
		while ((n = zsock_recv(c, buf, sizeof(buf), 0)) > 0) {
			if (zsock_send(c, buf, n, 0) < 0) {
				break;
			}
		}
		zsock_close(c);
	}
}

K_THREAD_DEFINE(udp_echo_tid, 2048, udp_echo, NULL, NULL, NULL, 7, 0, 0);
K_THREAD_DEFINE(tcp_echo_tid, 2048, tcp_echo, NULL, NULL, NULL, 7, 0, 0);

int main(void)
{
	LOG_INF("ivnet echo: UDP and TCP echo on port %d; shell: net iface, net ping, zperf",
		ECHO_PORT);
	return 0;
}
