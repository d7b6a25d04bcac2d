"""The one fake FHIR server the suites put behind Envoy: it records every request that reached it.

It answers in one of two ways:
- ``"search_totals"`` (default): every request gets a searchset Bundle of total 1 (0 for
  smartgate's probe patient, so compartment look-ups find members), after ``delay`` seconds when
  the path holds ``slow_marker`` (never for the probe): a FHIR server whose searches can be slow.
- ``"demo"``: the shipped demo FHIR server's answers over its seed data, plus an empty
  batch-response for a batch/transaction POST to the base (which the demo server does not implement).

``received`` is the upstream's own account of what Envoy and smartgate's look-ups sent it, to
compare with what should have been denied.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any, Literal
from urllib.parse import urlsplit

from smartgate.dev.demo.http_server import DemoHTTPServer
from smartgate.dev.demo.upstream import SEED, FhirStore, make_handler

PROBE_MARKER = "smartgate-probe-"  # smartgate's membership probe uses a patient id starting so


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names

    @property
    def request_id(self) -> str:
        return self.headers.get("x-request-id", "")


class RecordingUpstream:
    """A FHIR server on a free loopback port that records every request of every method."""

    def __init__(
        self,
        delay: float = 0.0,
        slow_marker: str = "",
        *,
        answers: Literal["search_totals", "demo"] = "search_totals",
        base_path: str = "/fhir",
    ) -> None:
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._header_values: dict[str, tuple[int, frozenset[str]]] = {}  # name -> (requests seen, values)
        handler = (
            _demo_handler(self, base_path) if answers == "demo" else _search_totals_handler(self, delay, slow_marker)
        )
        self.server = DemoHTTPServer(("127.0.0.1", 0), handler)
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}{base_path}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), name="fake-fhir", daemon=True).start()

    def record(self, request: BaseHTTPRequestHandler) -> None:
        entry = Received(request.command, request.path, {k.lower(): v for k, v in request.headers.items()})
        with self._lock:
            self.received.append(entry)

    def requests(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def headers_for(self, marker: str) -> list[dict[str, str]]:
        """Headers of the requests whose path holds ``marker``."""
        return [entry.headers for entry in self.requests() if marker in entry.path]

    def forwarded(self, request_id_prefix: str) -> list[Received]:
        """Requests Envoy forwarded whose x-request-id starts with the prefix (look-ups carry none)."""
        return [entry for entry in self.requests() if entry.request_id.startswith(request_id_prefix)]

    def saw_header(self, name: str, value: str) -> bool:
        """Whether a request carrying header ``name: value`` reached this server (``name`` lower-cased).

        The values are indexed once per batch of new requests: the soak asks this for every one
        of tens of thousands of requests."""
        received = self.requests()
        counted, values = self._header_values.get(name, (-1, frozenset()))
        if counted != len(received):
            values = frozenset(entry.headers[name] for entry in received if name in entry.headers)
            self._header_values[name] = (len(received), values)
        return value in values

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _search_totals_handler(upstream: RecordingUpstream, delay: float, slow_marker: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return

        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            upstream.record(self)
            probe = PROBE_MARKER in self.path
            if delay and slow_marker in self.path and not probe:
                time.sleep(delay)
            data = json.dumps({"resourceType": "Bundle", "type": "searchset", "total": 0 if probe else 1}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/fhir+json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer  # noqa: N815 (BaseHTTPRequestHandler names)

    return Handler


def _demo_handler(upstream: RecordingUpstream, base_path: str) -> type[BaseHTTPRequestHandler]:
    demo = make_handler(FhirStore(SEED), base_path)

    # make_handler builds its class per store, and declares it as BaseHTTPRequestHandler, which has none of the
    # demo's do_* methods or its _send/_read_body: mypy cannot take a class held in a variable as a base.
    class Handler(demo):  # type: ignore[valid-type,misc]
        def do_GET(self) -> None:  # noqa: N802 (BaseHTTPRequestHandler names)
            upstream.record(self)
            super().do_GET()

        def do_PUT(self) -> None:  # noqa: N802 (BaseHTTPRequestHandler names)
            upstream.record(self)
            super().do_PUT()

        def do_DELETE(self) -> None:  # noqa: N802 (BaseHTTPRequestHandler names)
            upstream.record(self)
            super().do_DELETE()

        def do_POST(self) -> None:  # noqa: N802 (BaseHTTPRequestHandler names)
            upstream.record(self)
            if urlsplit(self.path).path.rstrip("/") == base_path:
                self._read_body()
                self._send(200, {"resourceType": "Bundle", "type": "batch-response", "entry": []})
                return
            super().do_POST()

    return Handler
