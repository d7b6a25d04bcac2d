"""Free loopback ports for the processes a test starts."""

from __future__ import annotations

import contextlib
import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_consecutive_ports(count: int, attempts: int = 100) -> int:
    """A first port p with p .. p + count - 1 all free: smartgate worker i serves on the gRPC port + i."""
    for _ in range(attempts):
        first = free_port()
        if first + count - 1 > 65535:
            continue
        with contextlib.ExitStack() as held:
            try:
                for offset in range(1, count):
                    sock = held.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", first + offset))
            except OSError:
                continue
        return first
    raise RuntimeError(f"no {count} consecutive free ports")


def free_port_pair() -> int:
    """A port p with p and p + 1 both free (two smartgate workers)."""
    return free_consecutive_ports(2)
