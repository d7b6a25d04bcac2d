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

    @property
    def request_id(self) -> str:
        return self.headers.get("x-request-id", "")
