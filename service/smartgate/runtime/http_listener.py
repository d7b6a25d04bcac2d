"""The HTTP listener: ``/healthz`` (alive), ``/readyz`` (every issuer has usable keys),
``/metrics`` (Prometheus) and ``/.well-known/smart-configuration`` (SMART discovery)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

# A route answers (status line, content type, body, extra headers).
Response = tuple[str, str, bytes, dict[str, str]]
Route = Callable[[], Awaitable[Response]]

_NOT_FOUND: Response = ("404 Not Found", "text/plain", b"not found\n", {})


def text(status: str, body: str) -> Response:
    return status, "text/plain; charset=utf-8", body.encode(), {}


class HttpListener:
    def __init__(self, address: str, routes: dict[str, Route]) -> None:
        host, _, port = address.rpartition(":")
        self._host = host.strip("[]")
        self._port = int(port)
        self._routes = routes
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self._host, self._port, reuse_address=True)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), timeout=5)
            for _ in range(100):  # headers are not needed; read past them, bounded
                if (await asyncio.wait_for(reader.readline(), timeout=5)) in (b"\r\n", b"\n", b""):
                    break
            parts = request_line.decode("latin-1").split()
            method, path = (parts[0], parts[1].partition("?")[0]) if len(parts) >= 2 else ("", "")
            if method == "OPTIONS":
                response: Response = ("204 No Content", "text/plain", b"", {
                    "access-control-allow-origin": "*", "access-control-allow-methods": "GET, OPTIONS",
                    "access-control-allow-headers": "*"})
            elif method not in ("GET", "HEAD"):
                response = text("405 Method Not Allowed", "method not allowed\n")
            else:
                route = self._routes.get(path)
                response = await route() if route is not None else _NOT_FOUND
            status, content_type, body, headers = response
            head = [f"HTTP/1.1 {status}", f"content-type: {content_type}", f"content-length: {len(body)}",
                    "connection: close", *(f"{k}: {v}" for k, v in headers.items())]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, UnicodeDecodeError):
            pass
        finally:
            writer.close()
