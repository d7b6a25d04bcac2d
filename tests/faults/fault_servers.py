"""Stand-ins for the parts smartgate depends on, in their failing shapes: a server that accepts
connections and never answers, an upstream FHIR server that counts everything that reaches it,
and signing keys to which an IdP can add a key (rotation)."""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from smartgate.dev.demo.http_server import DemoHTTPServer
from tests.integration.harness import SigningKeys, new_keys


class SilentServer:
    """Accepts TCP connections and never answers a byte: a hung IdP, introspection endpoint or
    FHIR server. ``accepted`` counts the connections it swallowed."""

    def __init__(self) -> None:
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(128)
        self._socket.settimeout(0.05)
        self.port = int(self._socket.getsockname()[1])
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                connection, _ = self._socket.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            self._held.append(connection)

    def close(self) -> None:
        self._closed.set()
        self._socket.close()
        for connection in self._held:
            connection.close()


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names

    @property
    def request_id(self) -> str:
        return self.headers.get("x-request-id", "")


class CountingUpstream:
    """A FHIR server that records every request of every method and answers each with a searchset
    Bundle of total 1 (0 for smartgate's probe patient, so compartment look-ups find members)."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                upstream.received.append(
                    Received(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
                total = 0 if "smartgate-probe-" in self.path else 1
                data = json.dumps({"resourceType": "Bundle", "type": "searchset", "total": total}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/fhir+json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._answer()

            def do_POST(self) -> None:
                self._answer()

            def do_PUT(self) -> None:
                self._answer()

            def do_PATCH(self) -> None:
                self._answer()

            def do_DELETE(self) -> None:
                self._answer()

        self.server = DemoHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}/fhir"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def forwarded(self, request_id_prefix: str) -> list[Received]:
        """Requests Envoy forwarded whose x-request-id starts with the prefix (look-ups carry none)."""
        return [entry for entry in list(self.received) if entry.request_id.startswith(request_id_prefix)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class RotatingKeys(SigningKeys):
    """The harness key pair plus keys added later, each under its own kid (all ES256)."""

    added: dict[str, ec.EllipticCurvePrivateKey] = field(default_factory=dict)

    @classmethod
    def generate(cls) -> RotatingKeys:
        base = new_keys()
        return cls(base.rsa_key, base.ec_key)

    def add(self, kid: str) -> ec.EllipticCurvePrivateKey:
        key = ec.generate_private_key(ec.SECP256R1())
        self.added[kid] = key
        return key

    def jwks(self) -> dict[str, Any]:
        document = super().jwks()
        for kid, key in list(self.added.items()):
            entry = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
            entry.update({"kid": kid, "use": "sig", "alg": "ES256"})
            document["keys"].append(entry)
        return document
