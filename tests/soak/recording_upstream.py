"""The demo FHIR server, recording which soak requests reached it.

Every soak request carries a unique ``x-soak-request`` header; smartgate's own compartment
look-ups do not. The set of markers received is the upstream's own account of what Envoy let
through, to compare with what should have been denied. A batch/transaction POST to the base
(which the demo server does not implement) is answered with an empty batch-response.
"""

from __future__ import annotations

import threading
from urllib.parse import urlsplit

from smartgate.dev.demo.http_server import DemoHTTPServer
from smartgate.dev.demo.upstream import SEED, FhirStore, make_handler

from ..integration.harness import free_port

MARKER_HEADER = "x-soak-request"


class RecordingFhirServer:
    def __init__(self, base_path: str = "/fhir") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}{base_path}"
        self.markers: set[str] = set()
        self._lock = threading.Lock()
        recorder = self
        demo = make_handler(FhirStore(SEED), base_path)

        class Handler(demo):  # type: ignore[valid-type,misc]
            def _record(self) -> None:
                marker = self.headers.get(MARKER_HEADER)
                if marker:
                    with recorder._lock:
                        recorder.markers.add(marker)

            def do_GET(self) -> None:  # noqa: N802 (BaseHTTPRequestHandler names)
                self._record()
                super().do_GET()

            def do_PUT(self) -> None:  # noqa: N802 (BaseHTTPRequestHandler names)
                self._record()
                super().do_PUT()

            def do_DELETE(self) -> None:  # noqa: N802 (BaseHTTPRequestHandler names)
                self._record()
                super().do_DELETE()

            def do_POST(self) -> None:  # noqa: N802 (BaseHTTPRequestHandler names)
                self._record()
                if urlsplit(self.path).path.rstrip("/") == base_path:
                    self._read_body()
                    self._send(200, {"resourceType": "Bundle", "type": "batch-response", "entry": []})
                    return
                super().do_POST()

        self.server = DemoHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), name="soak-fhir", daemon=True).start()

    def received(self, marker: str) -> bool:
        with self._lock:
            return marker in self.markers

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

