"""The HTTP listener: ``/healthz`` (alive), ``/readyz`` (every issuer has usable keys),
``/metrics`` (Prometheus) and ``/.well-known/smart-configuration`` (SMART discovery).

It is reachable from the pod network (probes and scrapes come from outside the pod), so a
client gets at most ``CONNECTION_DEADLINE_SECONDS`` for its whole connection (request line,
headers, route and answer), and at most ``MAX_CONNECTIONS`` connections are served at once.
A connection over the cap is closed at once, unread and unanswered: answering it would mean
reading its request first, which is the work the cap exists to refuse. Probes and scrapes
retry, and a refused probe counts as a failed one, as a 503 would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

# A route answers (status line, content type, body, extra headers).
Response = tuple[str, str, bytes, dict[str, str]]
Route = Callable[[], Awaitable[Response]]

_NOT_FOUND: Response = ("404 Not Found", "text/plain", b"not found\n", {})

CONNECTION_DEADLINE_SECONDS = 10.0
MAX_CONNECTIONS = 64
_MAX_HEADER_LINES = 100  # headers are not needed; read past them, bounded


def text(status: str, body: str) -> Response:
    return status, "text/plain; charset=utf-8", body.encode(), {}


class HttpListener:
    def __init__(
        self,
        address: str,
        routes: dict[str, Route],
        *,
        deadline_seconds: float = CONNECTION_DEADLINE_SECONDS,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        host, _, port = address.rpartition(":")
        self._host = host.strip("[]")
        self._port = int(port)
        self._routes = routes
        self._deadline_seconds = deadline_seconds
        self._max_connections = max_connections
        self._open_connections = 0
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The port listened on (the one the OS chose, when the address asked for port 0)."""
        if self._server is None or not self._server.sockets:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self._host, self._port, reuse_address=True)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._open_connections >= self._max_connections:
            writer.close()  # over the cap: refused before a byte is read
            return
        self._open_connections += 1
        try:
            async with asyncio.timeout(self._deadline_seconds):
                await self._serve(reader, writer)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, UnicodeDecodeError, ValueError):
            pass  # ValueError: a line longer than the reader's limit
        finally:
            self._open_connections -= 1
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read one request, answer it from the route table."""
        request_line = await reader.readline()
        for _ in range(_MAX_HEADER_LINES):
            if (await reader.readline()) in (b"\r\n", b"\n", b""):
                break
        parts = request_line.decode("latin-1").split()
        method, path = (parts[0], parts[1].partition("?")[0]) if len(parts) >= 2 else ("", "")
        if method == "OPTIONS":
            response: Response = (
                "204 No Content",
                "text/plain",
                b"",
                {
                    "access-control-allow-origin": "*",
                    "access-control-allow-methods": "GET, OPTIONS",
                    "access-control-allow-headers": "*",
                },
            )
        elif method not in ("GET", "HEAD"):
            response = text("405 Method Not Allowed", "method not allowed\n")
        else:
            route = self._routes.get(path)
            response = await route() if route is not None else _NOT_FOUND
        status, content_type, body, headers = response
        head = [
            f"HTTP/1.1 {status}",
            f"content-type: {content_type}",
            f"content-length: {len(body)}",
            "connection: close",
            *(f"{k}: {v}" for k, v in headers.items()),
        ]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (b"" if method == "HEAD" else body))
        await writer.drain()
