"""Stage 1: turn Envoy's CheckRequest into a plain HttpRequest (no gRPC types beyond here)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from envoy.service.auth.v3 import external_auth_pb2

# Envoy sets this header on the CheckRequest when it sent only part of the body.
PARTIAL_BODY_HEADER = "x-envoy-auth-partial-body"


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


def from_check_request(check_request: external_auth_pb2.CheckRequest) -> HttpRequest:
    http = check_request.attributes.request.http
    headers = dict(http.headers)
    body: bytes | None = None
    if http.raw_body:
        body = bytes(http.raw_body)
    elif http.body:
        body = http.body.encode("utf-8")
    truncated = headers.get(PARTIAL_BODY_HEADER, "") == "true"
    declared = headers.get("content-length")
    if declared is not None and body is not None:
        truncated = truncated or not declared.isdigit() or int(declared) != len(body)
    return HttpRequest(
        method=http.method.upper(), path=http.path, headers=headers, body=body, body_truncated=truncated
    )
