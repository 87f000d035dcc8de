"""Network clients and an echo service the tests run inside a namespace (plain Python, no test
framework): `python3 ivnet_clients.py <function> <args...>` prints the function's result."""

import json
import random
import signal
import socket
import sys
import threading
import time


def tcp_echo(addr: str, port: int, total: int) -> int:
    """Streams `total` random bytes to an echo service and reads them back (no half-close:
    Zephyr's TCP drops the echo still in flight when the client sends FIN first). Returns the
    bytes echoed, or -1 when they differ from what was sent."""
    data = random.Random(total).randbytes(total)
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect((addr, port))
        got = bytearray()
        sent = 0
        while len(got) < total:
            if sent < total and sent - len(got) < 32768:
                sent += s.send(data[sent:sent + 4096])
                continue
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        return len(got) if bytes(got) == data else -1


def udp_echo(addr: str, port: int, count: int) -> int:
    """`count` datagrams of 1 to 1200 bytes, one at a time; how many came back byte-exact."""
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    ok = 0
    rng = random.Random(count)
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        for _ in range(count):
            d = rng.randbytes(rng.randrange(1, 1200))
            s.sendto(d, (addr, port))
            try:
                r, _ = s.recvfrom(2048)
                ok += r == d
            except socket.timeout:
                pass
    return ok


def echo_serve(addr: str, port: int, seconds: int) -> str:
    """An echo service (TCP and UDP, IPv4 and IPv6 on one dual-stack socket each) on `addr`
    (an IPv6 address or "::") and `port`, for at most `seconds` or until SIGTERM: a thread
    for UDP and one per TCP connection, so that no client waits for another. Prints, each
    second something changed and at the end, the TCP bytes and UDP datagrams echoed per family,
    as JSON."""
    echoed = {"tcp4": 0, "tcp6": 0, "udp4": 0, "udp6": 0}
    lock = threading.Lock()

    def fam(peer) -> str:
        return "4" if peer[0].startswith("::ffff:") and "." in peer[0] else "6"

    def count(key: str, n: int) -> None:
        with lock:
            echoed[key] += n

    def tcp(conn: socket.socket, key: str) -> None:
        with conn:
            try:
                while d := conn.recv(65536):
                    conn.sendall(d)
                    count(key, len(d))
            except OSError:
                pass

    def accept(lst: socket.socket) -> None:
        while True:
            conn, peer = lst.accept()
            conn.settimeout(30)
            threading.Thread(target=tcp, args=(conn, "tcp" + fam(peer)), daemon=True).start()

    def udp(sock: socket.socket) -> None:
        while True:
            try:
                d, peer = sock.recvfrom(65536)
                sock.sendto(d, peer)
            except OSError as e:  # e.g. an ICMP error from an earlier send: go on
                print(f"udp: {e}", file=sys.stderr, flush=True)
                continue
            count("udp" + fam(peer), 1)

    def stop(*_):
        raise TimeoutError

    signal.signal(signal.SIGTERM, stop)
    lst = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    dgram = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    for s in (lst, dgram):
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, port))
    lst.listen(8)
    threading.Thread(target=accept, args=(lst,), daemon=True).start()
    threading.Thread(target=udp, args=(dgram,), daemon=True).start()
    end = time.monotonic() + seconds
    shown: dict = {}
    try:
        while time.monotonic() < end:
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))
            with lock:
                now = dict(echoed)
            if now != shown:
                shown = now
                print(json.dumps(now), flush=True)
    except TimeoutError:
        pass
    with lock:
        return json.dumps(echoed)


if __name__ == "__main__":
    fn = {"tcp_echo": tcp_echo, "udp_echo": udp_echo, "echo_serve": echo_serve}[sys.argv[1]]
    print(fn(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
