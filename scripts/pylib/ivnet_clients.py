"""Network clients the tests run inside a namespace (plain Python, no test framework):
`python3 ivnet_clients.py <function> <args...>` prints the function's result."""

import random
import socket
import sys


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


if __name__ == "__main__":
    fn = {"tcp_echo": tcp_echo, "udp_echo": udp_echo}[sys.argv[1]]
    print(fn(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
