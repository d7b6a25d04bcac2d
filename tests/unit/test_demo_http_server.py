"""The demo upstream accepts a burst of connections while it is busy, instead of dropping SYNs.

With ``ThreadingHTTPServer``'s backlog of 5, the seventh connection opened before the server
accepts waits for a SYN retransmission (1 s), longer than Envoy's connect timeout: a 503 that
no component decided. This test holds the server's accept loop still and opens a burst.
"""

from __future__ import annotations

import contextlib
import socket
from http.server import BaseHTTPRequestHandler

from smartgate.dev.demo.http_server import DemoHTTPServer

BURST = 64


def test_a_burst_of_connections_completes_while_nothing_is_accepted() -> None:
    server = DemoHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)  # serve_forever never runs
    port = int(server.server_address[1])
    connected: list[socket.socket] = []
    try:
        with contextlib.ExitStack() as stack:
            for _ in range(BURST):
                conn = socket.create_connection(("127.0.0.1", port), timeout=0.5)
                stack.callback(conn.close)
                connected.append(conn)
        assert len(connected) == BURST
    finally:
        server.server_close()
