"""Free loopback ports for the processes a test starts.

A port the OS picks with ``bind(0)`` comes from the ephemeral range, the same range the kernel gives to
outgoing connections: after a few thousand requests (the leak test sends 2,500) a port handed to a server
that starts later can already be the local end of a client connection, and the server fails to bind it.
So ports are drawn below the ephemeral range, never twice in one test session, and checked free.
"""

from __future__ import annotations

import contextlib
import random
import socket
from pathlib import Path

_LOWEST = 20_000  # above the well-known and registered ports the suite uses itself (make run: 9190, 9191, 10000)
_handed_out: set[int] = set()
_random = random.Random()  # noqa: S311 - spreading test ports, not a secret


def _ephemeral_floor() -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text(encoding="ascii").split()[0])
    return 32_768


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _os_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, outside the ephemeral range."""
    ceiling = _ephemeral_floor() - 1
    if ceiling - _LOWEST < 1_000:  # an unusual ephemeral range: let the OS pick
        return _os_port()
    for _ in range(200):
        port = _random.randint(_LOWEST, ceiling)
        if port not in _handed_out and _bindable(port):
            _handed_out.add(port)
            return port
    return _os_port()


def free_consecutive_ports(count: int, attempts: int = 100) -> int:
    """A first port p with p .. p + count - 1 all free: smartgate worker i serves on the gRPC port + i."""
    for _ in range(attempts):
        first = free_port()
        if first + count - 1 > 65535:
            continue
        if all(first + offset not in _handed_out and _bindable(first + offset) for offset in range(1, count)):
            _handed_out.update(first + offset for offset in range(1, count))
            return first
    raise RuntimeError(f"no {count} consecutive free ports")


def free_port_pair() -> int:
    """A port p with p and p + 1 both free (two smartgate workers)."""
    return free_consecutive_ports(2)
