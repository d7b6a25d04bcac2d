"""The HTTP listener: ``/healthz`` (alive) and ``/readyz`` (every issuer has a usable key set)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class HealthHttpServer:
    def __init__(self, address: str, is_ready: Callable[[], bool]) -> None:
        host, _, port = address.rpartition(":")
        self._host = host.strip("[]")
        self._port = int(port)
        self._is_ready = is_ready
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self._host, self._port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), timeout=5)
            while (await asyncio.wait_for(reader.readline(), timeout=5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request_line.decode("latin-1").split()
            path = parts[1] if len(parts) >= 2 else ""
            status, body = self._route(parts[0] if parts else "", path)
            writer.write(
                f"HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {len(body)}\r\n"
                f"connection: close\r\n\r\n{body}".encode()
            )
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def _route(self, method: str, path: str) -> tuple[str, str]:
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "method not allowed\n"
        if path == "/healthz":
            return "200 OK", "ok\n"
        if path == "/readyz":
            return ("200 OK", "ready\n") if self._is_ready() else ("503 Service Unavailable", "not ready\n")
        return "404 Not Found", "not found\n"
