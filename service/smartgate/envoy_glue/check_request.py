"""Stage 1: turn Envoy's CheckRequest into a plain HttpRequest (no protobuf beyond here)."""

from __future__ import annotations

from urllib.parse import unquote

from envoy.service.auth.v3 import external_auth_pb2

from smartgate.core.http import HttpRequest

# Envoy sets this header on the CheckRequest when it sent only part of the body.
PARTIAL_BODY_HEADER = "x-envoy-auth-partial-body"


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
    # attributes.source.certificate: the peer's certificate, URL-encoded PEM (include_peer_certificate).
    certificate = check_request.attributes.source.certificate
    return HttpRequest(
        method=http.method.upper(),
        path=http.path,
        headers=headers,
        body=body,
        body_truncated=truncated,
        peer_certificate=unquote(certificate) if certificate else None,
    )
