"""Manage a Zephyr cell over MCUmgr: SMP over UDP (Zephyr's CONFIG_MCUMGR_TRANSPORT_UDP).

A small synchronous wrapper around the `smpclient` package (pinned in bench/requirements.txt),
which is asyncio-only: every call opens a UDP socket, sends one SMP request, waits for the one
response and closes the socket (asyncio.run inside, so do not call these from a running event
loop). The cell side is enabled by the ivnet-cell snippet
(snippets/ivnet-cell/boards/qemu_cortex_a53.conf).

    echo(host, text)          os group, echo              -> the echoed text
    stat_list(host)           stat group, list of groups  -> ["group", ...]
    stat_read(host, group)    stat group, read a group    -> {"counter": value, ...}
    shell(host, cmd)          shell group, execute        -> (command's return code, output)
    reset(host)               os group, reset             -> None (the cell reboots ~250 ms later)

Every function takes `port=1337` and `timeout=5` (seconds, for the whole exchange) and raises:
    McumgrTimeout         no response within `timeout` (also a TimeoutError): cell down, no
                          route, MCUmgr not built in, or nothing listening (the message says so
                          when the host answered with ICMP port unreachable);
    McumgrErrorResponse   the cell answered with an SMP error (rc, group and name attached);
    McumgrError           anything else (bad response, socket error); base of the two above.

Transport limits: one request must fit in one datagram (Zephyr does not reassemble UDP SMP
frames; smpclient splits requests larger than MTU - 28 bytes, which Zephyr would then reject),
and the cell's reply is one datagram of at most CONFIG_MCUMGR_TRANSPORT_UDP_MTU bytes. Hosts are
IPv4 addresses or names (an IPv6 literal also works with smpclient, but the cells are IPv4-only).

CLI: python mcumgr.py [--port P] [--timeout S] <host> echo TEXT | stats | stat GROUP |
     shell "CMD" | reset
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shlex
import sys
from typing import Any

from smp import error as smperr
from smpclient import SMPClient
from smpclient.exceptions import SMPClientException
from smpclient.generics import error as smp_is_error
from smpclient.requests.os_management import EchoWrite, ResetWrite
from smpclient.requests.shell_management import Execute
from smpclient.requests.statistics_management import GroupData, ListOfGroups
from smpclient.transport.udp import SMPUDPTransport

DEFAULT_PORT = 1337
DEFAULT_TIMEOUT = 5.0
# Link MTU given to smpclient: it only uses it to split large requests (MTU - 28 B for IPv4).
LINK_MTU = 1500

# smpclient logs timeouts and bad frames at ERROR level; we raise instead. A NullHandler keeps
# Python's last-resort handler from printing them when the caller has not configured logging.
for _name in ("smpclient", "smp"):
    logging.getLogger(_name).addHandler(logging.NullHandler())

__all__ = ["McumgrError", "McumgrTimeout", "McumgrErrorResponse", "echo", "stat_list",
           "stat_read", "shell", "reset", "DEFAULT_PORT", "DEFAULT_TIMEOUT"]


class McumgrError(Exception):
    """Any MCUmgr failure: base class of McumgrTimeout and McumgrErrorResponse."""


class McumgrTimeout(McumgrError, TimeoutError):
    """No (valid) SMP response arrived within the timeout."""


class McumgrErrorResponse(McumgrError):
    """The cell answered with an SMP error response.

    `rc`: the error code (int); `name`: its symbolic name when known (e.g. "ENOTSUP", or the
    group's own code such as "ERR_INVALID_GROUP"); `group`: the SMP group id for version-2
    errors (None for version-1 errors, whose rc is a general MGMT_ERR code); `reason`: the
    optional "rsn" text of version-1 errors.
    """

    def __init__(self, what: str, rc: int, name: str, group: int | None, reason: str | None):
        self.rc, self.name, self.group, self.reason = rc, name, group, reason
        where = f" (group {group})" if group is not None else ""
        why = f": {reason}" if reason else ""
        super().__init__(f"{what}: SMP error {name} ({rc}){where}{why}")


def _strip_host(host: str) -> str:
    """Accept "[v6addr]" too; smpclient wants a bare address or name."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _check(what: str, response: Any) -> Any:
    """Return `response` if it is a success response, else raise McumgrErrorResponse."""
    if not smp_is_error(response):
        return response
    if isinstance(response, smperr.ErrorV1):
        rc = int(response.rc)
        name = getattr(response.rc, "name", str(rc))
        raise McumgrErrorResponse(what, rc, name, None, response.rsn)
    err = response.err  # ErrorV2: group-specific code
    rc = int(err.rc)
    raise McumgrErrorResponse(what, rc, getattr(err.rc, "name", str(rc)), int(err.group), None)


async def _exchange(host: str, port: int, timeout: float, request: Any,
                    socket_errors: list[BaseException]) -> Any:
    transport = SMPUDPTransport(mtu=LINK_MTU)
    await transport.connect(_strip_host(host), timeout, port)
    try:
        # The transport is already connected: SMPClient.connect() would also send an
        # "mcumgr params" request and wait up to a full timeout for it, so it is skipped.
        client = SMPClient(transport, host, timeout_s=timeout)
        # The outer wait_for enforces the deadline; give the inner one slack so it never wins.
        return await client.request(request, timeout_s=timeout + 1)
    finally:
        # smpclient queues socket errors (ICMP port unreachable arrives as
        # ConnectionRefusedError) without failing the request: collect them for the message.
        try:
            queue = transport._client._protocol.error_queue  # private, best effort
            while not queue.empty():
                socket_errors.append(queue.get_nowait())
        except AttributeError:
            pass
        await transport.disconnect()


def _run(what: str, host: str, port: int, timeout: float, request: Any) -> Any:
    """Send one request and return the validated success response (or raise)."""
    if timeout <= 0:
        raise ValueError("timeout must be > 0")
    socket_errors: list[BaseException] = []

    async def main() -> Any:
        return await asyncio.wait_for(
            _exchange(host, port, timeout, request, socket_errors), timeout)

    try:
        return _check(what, asyncio.run(main()))
    except (TimeoutError, asyncio.TimeoutError):
        hint = ""
        if any(isinstance(e, ConnectionRefusedError) for e in socket_errors):
            hint = " (ICMP port unreachable: nothing listens on that port)"
        raise McumgrTimeout(f"{what}: no response from {host}:{port} within {timeout:g} s{hint}") \
            from None
    except McumgrError:
        raise
    except SMPClientException as exc:
        raise McumgrError(f"{what}: {host}:{port}: {exc}") from exc
    except OSError as exc:
        raise McumgrError(f"{what}: {host}:{port}: {exc}") from exc
    except Exception as exc:  # pydantic/smp validation of a malformed response, etc.
        raise McumgrError(f"{what}: {host}:{port}: {type(exc).__name__}: {exc}") from exc


def echo(host: str, text: str, port: int = DEFAULT_PORT, timeout: float = DEFAULT_TIMEOUT) -> str:
    """OS group echo: send `text`, return what the cell echoed (equal to `text`).

    Needs CONFIG_MCUMGR_GRP_OS + CONFIG_MCUMGR_GRP_OS_ECHO on the cell.
    Raises McumgrTimeout, McumgrErrorResponse or McumgrError.
    """
    return _run("echo", host, port, timeout, EchoWrite(d=text)).r


def stat_list(host: str, port: int = DEFAULT_PORT, timeout: float = DEFAULT_TIMEOUT) -> list[str]:
    """Stat group list: names of the STATS groups registered on the cell (may be empty).

    Needs CONFIG_MCUMGR_GRP_STAT (with CONFIG_STATS). These are Zephyr STATS-subsystem groups,
    not the network stack's NET_STATISTICS (read those with shell(host, "net stats")).
    Raises McumgrTimeout, McumgrErrorResponse or McumgrError.
    """
    return list(_run("stat list", host, port, timeout, ListOfGroups()).stat_list)


def stat_read(host: str, group: str, port: int = DEFAULT_PORT,
              timeout: float = DEFAULT_TIMEOUT) -> dict[str, int]:
    """Stat group read: {counter name: value} of STATS group `group`.

    Names are "s0", "s1", ... unless the cell has CONFIG_STATS_NAMES. An unknown group raises
    McumgrErrorResponse (ENOENT, or ERR_INVALID_GROUP from clients using SMP version 2).
    Raises McumgrTimeout, McumgrErrorResponse or McumgrError.
    """
    response = _run(f"stat read {group}", host, port, timeout, GroupData(name=group))
    return {str(k): int(v) for k, v in response.fields.items()}


def shell(host: str, cmd: str, port: int = DEFAULT_PORT,
          timeout: float = DEFAULT_TIMEOUT) -> tuple[int, str]:
    """Shell group execute: run `cmd` on the cell's dummy shell backend.

    `cmd` is split like a POSIX shell line (shlex). Returns (return code of the command, its
    captured output). The output is cut at CONFIG_SHELL_BACKEND_DUMMY_BUF_SIZE bytes on the cell,
    and only what the command prints before it returns is captured (e.g. `net ping` replies that
    arrive later are not). A non-zero return code is returned, not raised; SMP-level failures
    (command too long, empty command, shell group not built in) raise McumgrErrorResponse.
    Raises McumgrTimeout, McumgrErrorResponse or McumgrError.
    """
    argv = shlex.split(cmd)
    if not argv:
        raise ValueError("empty shell command")
    response = _run(f"shell {cmd!r}", host, port, timeout, Execute(argv=argv))
    return int(response.ret), response.o


def reset(host: str, port: int = DEFAULT_PORT, timeout: float = DEFAULT_TIMEOUT) -> None:
    """OS group reset: the cell acknowledges, then reboots CONFIG_MCUMGR_GRP_OS_RESET_MS later.

    The acknowledgement only means the reset was scheduled: whether the cell really reboots
    depends on its sys_reboot() (on qemu_cortex_a53 see
    snippets/ivnet-cell/boards/qemu_cortex_a53.conf). A lost acknowledgement raises
    McumgrTimeout even if the cell does reset.
    Raises McumgrTimeout, McumgrErrorResponse or McumgrError.
    """
    _run("reset", host, port, timeout, ResetWrite())


def _main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="MCUmgr (SMP over UDP) client for Zephyr cells.",
        epilog='examples: mcumgr.py 192.0.2.10 echo hello | stats | stat net | '
               'shell "net iface" | reset')
    p.add_argument("host", help="cell IPv4 address or host name")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds")
    sub = p.add_subparsers(dest="op", required=True)
    sub.add_parser("echo", help="os echo").add_argument("text")
    sub.add_parser("stats", help="list stat groups")
    sub.add_parser("stat", help="read one stat group").add_argument("group")
    sub.add_parser("shell", help="run a shell command").add_argument("cmd")
    sub.add_parser("reset", help="reset the cell")
    a = p.parse_args(argv)
    kw = {"port": a.port, "timeout": a.timeout}
    try:
        if a.op == "echo":
            print(echo(a.host, a.text, **kw))
        elif a.op == "stats":
            for name in stat_list(a.host, **kw):
                print(name)
        elif a.op == "stat":
            for name, value in stat_read(a.host, a.group, **kw).items():
                print(f"{name}: {value}")
        elif a.op == "shell":
            rc, out = shell(a.host, a.cmd, **kw)
            sys.stdout.write(out if out.endswith("\n") or not out else out + "\n")
            return 0 if rc == 0 else 1
        elif a.op == "reset":
            reset(a.host, **kw)
            print("reset scheduled")
    except (McumgrError, ValueError) as exc:
        print(f"mcumgr: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_main())
