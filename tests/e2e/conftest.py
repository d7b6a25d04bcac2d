"""The end-to-end stack, real components only, session-scoped, on free loopback ports:

    httpx ──► Envoy 1.40 (config rendered by smartgate.envoy_glue.bootstrap) ──► Medplum FHIR router (Node 22)
                 │ ext_authz gRPC                                           ▲ compartment look-ups
                 ▼                                                          │
              smartgate serve ──── discovery, JWKS, RFC 7662 introspection ──► oidc-provider (Node 22)

Seed data from carebundle is loaded straight into the FHIR server before smartgate starts.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from smartgate.config.model import VerificationMode
from smartgate.envoy_glue.bootstrap import EnvoySettings
from tests.support.ports import free_port
from tests.support.processes import running
from tests.support.stack import start_envoy, start_smartgate

from . import seed
from .components import FhirServer, IdentityProvider, ensure_node_modules, start_node, wait_ready
from .smart_auth import REDIRECT_URI, TokenResponse, authorization_code_token, client_credentials_token

MAX_REQUEST_BYTES = 65_536
BASIC_SECRET = "s3cret/with:colon+plus%and space"  # exercises RFC 6749 2.3.1 form-encoding before Basic
POST_SECRET = "p0st-secret&with=form+chars"
BACKEND_SECRET = "backend-secret"
INTROSPECTION_CACHE_SECONDS = 3
LOOKUP_CACHE_SECONDS = 1


@dataclass
class E2EStack:
    base_url: str  # where this gateway's Envoy listens (FHIR base path included)
    public_url: str  # the public FHIR base: smartgate's fhir.base_url, the tokens' audience
    fhir: FhirServer  # Medplum, directly
    idp: IdentityProvider
    issuer: str  # JWT tokens; opaque tokens introspected with client_secret_basic
    issuer_post: str  # opaque tokens introspected with client_secret_post
    data: seed.Dataset
    workdir: Path
    client: httpx.Client
    _tokens: dict[tuple[str, str, str, str], TokenResponse] = field(default_factory=dict)

    def token(self, user: str, scope: str, client_id: str = "smart-rs256", issuer: str | None = None) -> str:
        """An access token from the real IdP's authorization-code + PKCE flow (cached per session)."""
        return self.token_response(user, scope, client_id, issuer).access_token

    def token_response(self, user: str, scope: str, client_id: str = "smart-rs256",
                       issuer: str | None = None) -> TokenResponse:
        key = (issuer or self.issuer, client_id, user, scope)
        if key not in self._tokens:
            self._tokens[key] = authorization_code_token(key[0], client_id, user, scope, self.public_url)
        return self._tokens[key]

    def fresh_token(self, user: str, scope: str, client_id: str, issuer: str | None = None) -> str:
        return authorization_code_token(issuer or self.issuer, client_id, user, scope, self.public_url).access_token

    def backend_token(self, scope: str) -> str:
        return client_credentials_token(self.issuer, "backend", BACKEND_SECRET, scope, self.public_url).access_token

    def request(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        url = path if path.startswith("http") else self.base_url + path
        return self.client.request(method, url, headers=headers, **kwargs)

    def get(self, path: str, token: str | None = None, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, token, **kwargs)

    def _log_entries(self) -> list[dict[str, Any]]:
        text = (self.workdir / "decisions.jsonl").read_text(encoding="utf-8")
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def decisions(self) -> list[dict[str, Any]]:
        """The request decisions (ext_authz); response checks share the log and the request id."""
        return [entry for entry in self._log_entries() if "stage" not in entry]

    def response_checks(self) -> list[dict[str, Any]]:
        """The response verification entries (``"stage": "response"``)."""
        return [entry for entry in self._log_entries() if entry.get("stage") == "response"]


def _idp_config(host: str, base_url: str, ports: list[int], data: seed.Dataset) -> dict[str, Any]:
    users: dict[str, dict[str, str]] = {
        "alice": {"patient": data.patients["A"].patient_id,
                  "fhirUser": f"{base_url}/Patient/{data.patients['A'].patient_id}"},
        "bob": {"patient": data.patients["B"].patient_id, "fhirUser": f"Patient/{data.patients['B'].patient_id}"},
        "carol": {"patient": data.patients["C"].patient_id, "fhirUser": f"Patient/{data.patients['C'].patient_id}"},
        "drsmith": {"fhirUser": data.patients["A"].practitioner},
    }
    return {
        "host": host, "resource": base_url, "redirect_uri": REDIRECT_URI, "users": users,
        "providers": [
            {"port": ports[0], "backend_secret": BACKEND_SECRET, "introspection_client": {
                "client_id": "smartgate", "client_secret": BASIC_SECRET, "auth_method": "client_secret_basic"}},
            {"port": ports[1], "backend_secret": BACKEND_SECRET, "introspection_client": {
                "client_id": "smartgate-post", "client_secret": POST_SECRET, "auth_method": "client_secret_post"}},
        ],
    }


def _smartgate_config(workdir: Path, ports: dict[str, int], issuers: list[str], fhir_url: str,
                      base_url: str) -> dict[str, Any]:
    (workdir / "introspection-basic.secret").write_text(BASIC_SECRET + "\n", encoding="utf-8")
    (workdir / "introspection-post.secret").write_text(POST_SECRET + "\n", encoding="utf-8")
    return {
        "listen": {"grpc": f"127.0.0.1:{ports['grpc']}", "http": f"127.0.0.1:{ports['http']}"},
        # A short look-up cache, so that a test can see a compartment change within a second.
        "fhir": {"base_url": base_url, "upstream_url": fhir_url, "lookup": {"cache_ttl_seconds": LOOKUP_CACHE_SECONDS}},
        "issuers": [
            {"issuer": issuers[0], "algorithms": ["RS256", "ES256"], "introspection": {
                "endpoint": f"{issuers[0]}/token/introspection", "client_id": "smartgate",
                "client_secret_file": str(workdir / "introspection-basic.secret"),
                "auth_method": "client_secret_basic", "cache_max_ttl_seconds": INTROSPECTION_CACHE_SECONDS}},
            {"issuer": issuers[1], "algorithms": ["RS256", "ES256"], "introspection": {
                "endpoint": f"{issuers[1]}/token/introspection", "client_id": "smartgate-post",
                "client_secret_file": str(workdir / "introspection-post.secret"),
                "auth_method": "client_secret_post", "cache_max_ttl_seconds": INTROSPECTION_CACHE_SECONDS}},
        ],
        "max_request_bytes": MAX_REQUEST_BYTES,
        "decision_log": str(workdir / "decisions.jsonl"),
    }


@contextlib.contextmanager
def _node_process(script: str, args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with running(start_node(script, args, log)) as process:
        yield process


@dataclass
class Components:
    """The real third-party parts, shared by every gateway: FHIR server, IdP, seed data."""

    public_url: str  # the public FHIR base: the IdP's resource indicator and the tokens' audience
    public_port: int  # the default gateway's Envoy listens here
    fhir: FhirServer
    idp: IdentityProvider
    data: seed.Dataset
    workdir: Path


@pytest.fixture(scope="session")
def components(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Components]:
    started = time.monotonic()
    ensure_node_modules()
    workdir = tmp_path_factory.mktemp("e2e")
    ports = {name: free_port() for name in ("fhir", "idp", "idp_post", "envoy")}
    public_url = f"http://127.0.0.1:{ports['envoy']}/fhir"
    with ThreadPoolExecutor(1) as pool, contextlib.ExitStack() as stack:
        fhir_log = workdir / "fhir-server.log"
        fhir_process = stack.enter_context(_node_process("fhir-server.mjs", ["--port", str(ports["fhir"])], fhir_log))
        data = pool.submit(seed.build_dataset).result()  # carebundle works while Node starts
        idp_config = workdir / "idp.json"
        idp_config.write_text(json.dumps(_idp_config("127.0.0.1", public_url, [ports["idp"], ports["idp_post"]],
                                                     data)), encoding="utf-8")
        idp_log = workdir / "idp.log"
        idp_process = stack.enter_context(_node_process("idp.mjs", [str(idp_config)], idp_log))
        idp = IdentityProvider("127.0.0.1", [ports["idp"], ports["idp_post"]])
        wait_ready(f"http://127.0.0.1:{ports['fhir']}/__e2e/ready", fhir_process, fhir_log)
        fhir = FhirServer(ports["fhir"])
        stack.callback(fhir.close)
        seed.load(fhir, data)
        for issuer in idp.issuers:
            wait_ready(f"{issuer}/__e2e/ready", idp_process, idp_log)
        print(f"\n[e2e] FHIR server and IdP up, seed data loaded in {time.monotonic() - started:.1f}s ({workdir})")
        yield Components(public_url, ports["envoy"], fhir, idp, data, workdir)


@contextlib.contextmanager
def _gateway(
    parts: Components, name: str, envoy_port: int, response_verification: VerificationMode
) -> Iterator[E2EStack]:
    """smartgate + Envoy (rendered by smartgate.envoy_glue.bootstrap) in front of the shared FHIR server."""
    started = time.monotonic()
    workdir = parts.workdir / name
    workdir.mkdir()
    ports = {"grpc": free_port(), "http": free_port(), "admin": free_port()}
    config = _smartgate_config(workdir, ports, parts.idp.issuers, parts.fhir.base_url, parts.public_url)
    config["response_verification"] = {"mode": response_verification}
    settings = EnvoySettings(
        listen_host="127.0.0.1", listen_port=envoy_port, admin_port=ports["admin"], authz_port=ports["grpc"],
        upstream_url=parts.fhir.base_url, base_path="/fhir", max_request_bytes=MAX_REQUEST_BYTES,
        smartgate_http_port=ports["http"], response_verification=response_verification,
    )
    with running(start_smartgate(config, workdir)), running(start_envoy(settings, workdir)), \
            httpx.Client(timeout=30) as client:
        print(f"\n[e2e] gateway {name!r} up in {time.monotonic() - started:.1f}s")
        yield E2EStack(f"http://127.0.0.1:{envoy_port}/fhir", parts.public_url, parts.fhir, parts.idp,
                       parts.idp.issuers[0], parts.idp.issuers[1], parts.data, workdir, client)


@pytest.fixture(scope="session")
def e2e(components: Components) -> Iterator[E2EStack]:
    """The gateway as shipped: smartgate's defaults (response verification off)."""
    with _gateway(components, "default", components.public_port, "off") as stack:
        yield stack


@pytest.fixture(scope="session")
def e2e_verified(components: Components) -> Iterator[E2EStack]:
    """A second gateway on the same public base, with response verification (ext_proc) enforcing."""
    with _gateway(components, "verified", free_port(), "enforce") as stack:
        yield stack


@pytest.fixture(scope="session")
def e2e_reporting(components: Components) -> Iterator[E2EStack]:
    """A third gateway with response verification in report mode."""
    with _gateway(components, "reporting", free_port(), "report") as stack:
        yield stack


@pytest.fixture(params=["default", "verified"])
def gateway(request: pytest.FixtureRequest) -> E2EStack:
    """Each gateway in turn: as shipped, and with response verification enforcing."""
    stack: E2EStack = request.getfixturevalue("e2e" if request.param == "default" else "e2e_verified")
    return stack
