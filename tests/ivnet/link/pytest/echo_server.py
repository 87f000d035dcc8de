"""UDP and TCP echo server for the ivnet link test (run inside the test's namespace).
Exits after --lifetime seconds at the latest."""

import argparse
import socket
import threading
import time


def udp(addr, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, port))
    while True:
        data, peer = s.recvfrom(65535)
        s.sendto(data, peer)


def tcp_conn(c):
    with c:
        while True:
            d = c.recv(65536)
            if not d:
                return
            c.sendall(d)


def tcp(addr, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(4)
    while True:
        c, _ = s.accept()
        threading.Thread(target=tcp_conn, args=(c,), daemon=True).start()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", required=True)
    ap.add_argument("--port", type=int, default=7777)
    ap.add_argument("--lifetime", type=float, default=300)
    a = ap.parse_args()
    for f in (udp, tcp):
        threading.Thread(target=f, args=(a.addr, a.port), daemon=True).start()
    print("echo server ready", flush=True)
    time.sleep(a.lifetime)
