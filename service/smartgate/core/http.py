"""The plain HTTP request every stage after Envoy's adapter works on (no protobuf here)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """What the client asked Envoy for: method, raw path with query, lower-cased headers, body."""

    method: str
    path: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None
    body_truncated: bool = False
    # The TLS client certificate (PEM) Envoy saw on the downstream connection, when its ext_authz filter
    # sets include_peer_certificate; certificate-bound tokens (RFC 8705) are checked against it.
    peer_certificate: str | None = None

    @property
    def request_id(self) -> str:
        return self.headers.get("x-request-id", "")
