"""One stack for the integration suite: IdP stand-in + demo FHIR server + smartgate + real Envoy."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from smartgate.dev.demo.upstream import start_upstream
from smartgate.envoy_glue.bootstrap import EnvoySettings

from .harness import IdentityProvider, SigningKeys, free_port, new_keys, running, start_envoy, start_smartgate

MAX_REQUEST_BYTES = 8192


@dataclass
class Stack:
    base_url: str  # the public FHIR base, through Envoy
    keys: SigningKeys
    issuer: str
    audience: str
    workdir: Path
    client: httpx.Client
    smartgate_http: str  # smartgate's own HTTP listener (metrics, health), not through Envoy

    def token(self, scope: str = "launch/patient patient/*.rs", patient: str | None = "123",
              alg: str = "ES256", **overrides: Any) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer, "aud": self.audience, "sub": "user-1", "client_id": "app-1",
            "scope": scope, "iat": now, "exp": now + 600, "jti": uuid.uuid4().hex,
        }
        if patient is not None:
            claims["patient"] = patient
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        key, kid = (self.keys.ec_key, "ec-1") if alg == "ES256" else (self.keys.rsa_key, "rsa-1")
        return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid, "typ": "at+jwt"})

    def get(self, path: str, token: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        return self.client.get(self.base_url + path, headers=headers, **kwargs)

    def post(self, path: str, token: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        return self.client.post(self.base_url + path, headers=headers, **kwargs)

    def decision_log(self) -> str:
        return (self.workdir / "decisions.jsonl").read_text(encoding="utf-8")

    def metric(self, name: str, **labels: str) -> float:
        """The current value of one sample on smartgate's /metrics (0 when it has not appeared yet)."""
        text = self.client.get(f"{self.smartgate_http}/metrics").text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return float(sample.value)
        return 0.0


@contextlib.contextmanager
def start_stack(workdir: Path, config_overrides: dict[str, Any] | None = None,
                envoy_overrides: dict[str, Any] | None = None) -> Iterator[Stack]:
    """IdP stand-in + demo FHIR server + smartgate + Envoy on free loopback ports."""
    keys = new_keys()
    idp = IdentityProvider(keys)
    upstream_port, grpc_port, http_port = free_port(), free_port(), free_port()
    envoy_port, admin_port = free_port(), free_port()
    upstream = start_upstream("127.0.0.1", upstream_port)
    base_url = f"http://127.0.0.1:{envoy_port}/fhir"
    audience = "https://fhir.example.org/r4"
    config: dict[str, Any] = {
        "listen": {"grpc": f"127.0.0.1:{grpc_port}", "http": f"127.0.0.1:{http_port}"},
        "fhir": {"base_url": base_url, "upstream_url": f"http://127.0.0.1:{upstream_port}/fhir"},
        "issuers": [{"issuer": idp.issuer, "audiences": [audience, base_url]}],
        "max_request_bytes": MAX_REQUEST_BYTES,
        "decision_log": str(workdir / "decisions.jsonl"),
        **(config_overrides or {}),
    }
    try:
        with running(start_smartgate(config, workdir)):
            settings = EnvoySettings(
                listen_host="127.0.0.1", listen_port=envoy_port, admin_port=admin_port, authz_port=grpc_port,
                upstream_url=f"http://127.0.0.1:{upstream_port}/fhir", base_path="/fhir",
                max_request_bytes=MAX_REQUEST_BYTES, smartgate_http_port=http_port, **(envoy_overrides or {}),
            )
            with running(start_envoy(settings, workdir)), httpx.Client(timeout=10) as client:
                yield Stack(base_url, keys, idp.issuer, audience, workdir, client, f"http://127.0.0.1:{http_port}")
    finally:
        upstream.shutdown()
        idp.close()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with start_stack(tmp_path_factory.mktemp("stack")) as started:
        yield started
