"""The HTTP listener's own limits: a whole-connection deadline and a cap on open connections."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from smartgate.runtime.http_listener import HttpListener, Response, text

DEADLINE = 0.5


async def _ok() -> Response:
    return text("200 OK", "ok\n")


@pytest.fixture
async def listener() -> AsyncIterator[HttpListener]:
    server = HttpListener("127.0.0.1:0", {"/healthz": _ok}, deadline_seconds=DEADLINE, max_connections=2)
    await server.start()
    yield server
    await server.stop()


async def _connect(listener: HttpListener) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", listener.port)


async def _get(listener: HttpListener) -> bytes:
    reader, writer = await _connect(listener)
    writer.write(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), timeout=5)
    writer.close()
    return answer


async def test_a_whole_request_is_answered(listener: HttpListener) -> None:
    assert (await _get(listener)).startswith(b"HTTP/1.1 200 OK\r\n")


async def test_a_client_trickling_its_headers_is_cut_off_at_the_deadline(listener: HttpListener) -> None:
    """Each header line arrives well within any per-line timeout; only the whole-connection
    deadline ends it."""
    reader, writer = await _connect(listener)
    started = time.monotonic()
    writer.write(b"GET /healthz HTTP/1.1\r\n")
    closed_after: float | None = None
    for index in range(40):
        await asyncio.sleep(DEADLINE / 10)
        if reader.at_eof() or writer.is_closing():
            break
        try:
            writer.write(f"x-slow-{index}: 1\r\n".encode())
            await writer.drain()
        except ConnectionError:
            break
        if await _closed(reader):
            break
    closed_after = time.monotonic() - started
    assert await _closed(reader), "the connection outlived the deadline"
    assert closed_after < DEADLINE * 3
    writer.close()


async def _closed(reader: asyncio.StreamReader) -> bool:
    """True when the server has closed the connection (EOF with no answer, or a reset)."""
    try:
        data = await asyncio.wait_for(reader.read(1), timeout=0.01)
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    assert data == b"", f"an answer to an unfinished request: {data!r}"
    return True


async def test_connections_over_the_cap_are_closed_while_the_others_are_served(listener: HttpListener) -> None:
    held = [await _connect(listener) for _ in range(2)]  # the cap: two open, idle connections
    await asyncio.sleep(0.05)
    reader, writer = await _connect(listener)
    assert await asyncio.wait_for(_closed_eventually(reader), timeout=DEADLINE / 2)
    writer.close()
    # The held connections are still served.
    for held_reader, held_writer in held:
        held_writer.write(b"GET /healthz HTTP/1.1\r\n\r\n")
        await held_writer.drain()
        assert (await asyncio.wait_for(held_reader.read(), timeout=5)).startswith(b"HTTP/1.1 200 OK")
        held_writer.close()
    await asyncio.sleep(0.05)
    assert (await _get(listener)).startswith(b"HTTP/1.1 200 OK"), "a slot freed by a closed connection is reused"


async def _closed_eventually(reader: asyncio.StreamReader) -> bool:
    while not await _closed(reader):
        await asyncio.sleep(0.01)
    return True
