"""A FHIR API behind real Envoy and a real smartgate process, with a counting upstream and the
identity providers a fault test chooses (up, down, hung), on free loopback ports."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from smartgate.envoy_glue.bootstrap import EnvoySettings, render
from tests.integration.harness import SigningKeys, free_port
from tests.integration.production_helpers import (
    Envoy,
    Smartgate,
    base_claims,
    launch_smartgate,
    running_envoy,
    smartgate_config,
    stop,
)

from .fault_servers import CountingUpstream

PATIENT_SCOPE = "launch/patient patient/*.rs patient/*.cud"


@dataclass
class FaultStack:
    base_url: str  # the public FHIR base through Envoy, also the token audience
    issuer: str  # the issuer tokens are signed for by default
    keys: SigningKeys
    smartgate: Smartgate
    envoy: Envoy
    upstream: CountingUpstream
    client: httpx.Client
    config: dict[str, Any]  # the smartgate config as started

    def token(self, patient: str = "123", *, kid: str | None = None,
              signing_key: ec.EllipticCurvePrivateKey | None = None, issuer: str | None = None) -> str:
        claims = {**base_claims(issuer or self.issuer, self.base_url), "sub": "user-1", "client_id": "app-1",
                  "scope": PATIENT_SCOPE, "patient": patient}
        return jwt.encode(claims, signing_key or self.keys.ec_key, algorithm="ES256",
                          headers={"kid": kid or "ec-1", "typ": "at+jwt"})

    def send(self, method: str, path: str, token: str | None = None, *, request_id: str = "",
             headers: Mapping[str, str] | None = None, content: bytes | None = None,
             timeout: float = 10.0) -> httpx.Response:
        sent = dict(headers or {})
        if token is not None:
            sent["authorization"] = f"Bearer {token}"
        if request_id:
            sent["x-request-id"] = request_id
        return self.client.request(method, self.base_url + path, headers=sent, content=content, timeout=timeout)

    def get(self, path: str, token: str | None = None, **kwargs: Any) -> httpx.Response:
        return self.send("GET", path, token, **kwargs)

    def ready(self) -> bool:
        try:
            return httpx.get(self.smartgate.url("/readyz"), timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def restart_smartgate(self, workdir: Path) -> Smartgate:
        """Start a new smartgate process with the same config (same ports), logging under ``workdir``."""
        workdir.mkdir(parents=True, exist_ok=True)
        self.smartgate = launch_smartgate(self.config, workdir)
        return self.smartgate


def wait_until_true(condition: Any, seconds: float, interval: float = 0.05) -> float | None:
    """Seconds until ``condition()`` held, or None when it never did within ``seconds``."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if condition():
            return time.monotonic() - start
        time.sleep(interval)
    return None


@contextlib.contextmanager
def fault_stack(workdir: Path, *, keys: SigningKeys, issuers: list[dict[str, Any]],
                upstream: CountingUpstream, lookup_url: str | None = None, lookup: Mapping[str, Any] | None = None,
                wait: str = "ready",
                env: Mapping[str, str] | None = None, envoy: Mapping[str, Any] | None = None,
                **config: Any) -> Iterator[FaultStack]:
    """Start smartgate (waiting for ``wait``: ready, alive) and Envoy in front of ``upstream``.
    ``lookup_url`` and ``lookup`` (``fhir.lookup``) set the compartment look-ups; ``config`` entries
    are added to the smartgate config, ``envoy`` entries to EnvoySettings."""
    grpc_port, http_port, envoy_port, admin_port = free_port(), free_port(), free_port(), free_port()
    base_url = f"http://127.0.0.1:{envoy_port}/fhir"
    settings = smartgate_config(grpc_port=grpc_port, http_port=http_port, base_url=base_url,
                                upstream_url=lookup_url or upstream.url, issuers=issuers, workdir=workdir, **config)
    if lookup is not None:
        settings["fhir"]["lookup"] = dict(lookup)
    envoy_config = render(EnvoySettings(**{
        "listen_host": "127.0.0.1", "listen_port": envoy_port, "admin_port": admin_port, "authz_port": grpc_port,
        "upstream_url": upstream.url, "smartgate_http_port": http_port,
        "max_request_bytes": settings.get("max_request_bytes", 1_048_576), **(envoy or {})}))
    smartgate = launch_smartgate(settings, workdir, wait=wait, env=env)
    stack: FaultStack | None = None
    try:
        with running_envoy(envoy_config, workdir) as proxy, httpx.Client(timeout=10) as client:
            stack = FaultStack(base_url, issuers[0]["issuer"], keys, smartgate, proxy, upstream, client, settings)
            yield stack
    finally:
        stop(stack.smartgate.process if stack is not None else smartgate.process)
        stop(smartgate.process)
