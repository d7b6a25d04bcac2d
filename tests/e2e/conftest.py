"""The end-to-end stack, real components only, session-scoped, on free loopback ports:

    httpx ──► Envoy 1.40 (config rendered by smartgate.envoy_glue.bootstrap) ──► Medplum FHIR router (Node 22)
                 │ ext_authz gRPC                                           ▲ compartment look-ups
                 ▼                                                          │
              smartgate serve ──── discovery, JWKS, RFC 7662 introspection ──► oidc-provider (Node 22)

Seed data from carebundle is loaded straight into the FHIR server before smartgate starts. The default
gateway's Envoy also has its optional mTLS listener, and the IdP an HTTPS token endpoint that asks for a
client certificate, for certificate-bound tokens (RFC 8705); the test certificates are made here.
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
from smartgate.envoy_glue.bootstrap import DownstreamTls, EnvoySettings
from tests.support.logs import settled_text
from tests.support.ports import free_port
from tests.support.processes import running
from tests.support.stack import start_envoy, start_smartgate
from tests.support.tls import TlsFiles, make_tls_files

from . import seed
from .components import FhirServer, IdentityProvider, ensure_node_modules, start_node, wait_ready
from .smart_auth import (
    REDIRECT_URI,
    MtlsTokenEndpoint,
    TokenResponse,
    authorization_code_token,
    client_credentials_token,
)

MAX_REQUEST_BYTES = 65_536
BASIC_SECRET = "s3cret/with:colon+plus%and space"  # exercises RFC 6749 2.3.1 form-encoding before Basic
POST_SECRET = "p0st-secret&with=form+chars"
BACKEND_SECRET = "backend-secret"
INTROSPECTION_CACHE_SECONDS = 3
LOOKUP_CACHE_SECONDS = 1


@dataclass(frozen=True)
class ClientCertificates:
    """``own``: a test CA, the server certificate of the IdP's HTTPS port and of Envoy's mTLS listener, and the
    client certificate that certificate-bound tokens are bound to. ``thief``: another CA's client certificate,
    which Envoy's listener trusts too (``trusted_cas``), so a thief's TLS handshake succeeds."""

    own: TlsFiles
    thief: TlsFiles
    trusted_cas: Path

    @classmethod
    def make(cls, directory: Path) -> ClientCertificates:
        (directory / "own").mkdir(parents=True)
        (directory / "thief").mkdir()
        own, thief = make_tls_files(directory / "own"), make_tls_files(directory / "thief", "thief test CA")
        trusted_cas = directory / "trusted-cas.pem"
        trusted_cas.write_bytes(own.ca.read_bytes() + thief.ca.read_bytes())
        return cls(own, thief, trusted_cas)


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
    certificates: ClientCertificates
    idp_mtls_token_url: str  # the first issuer's token endpoint on its HTTPS port (client certificates)
    mtls_base_url: str | None  # this gateway's mTLS listener (FHIR base path included), when it has one
    _tokens: dict[tuple[str, str, str, str], TokenResponse] = field(default_factory=dict)

    def token(self, user: str, scope: str, client_id: str = "smart-rs256", issuer: str | None = None) -> str:
        """An access token from the real IdP's authorization-code + PKCE flow (cached per session)."""
        return self.token_response(user, scope, client_id, issuer).access_token

    def token_response(
        self, user: str, scope: str, client_id: str = "smart-rs256", issuer: str | None = None
    ) -> TokenResponse:
        key = (issuer or self.issuer, client_id, user, scope)
        if key not in self._tokens:
            self._tokens[key] = authorization_code_token(key[0], client_id, user, scope, self.public_url)
        return self._tokens[key]

    def fresh_token(self, user: str, scope: str, client_id: str, issuer: str | None = None) -> str:
        return authorization_code_token(issuer or self.issuer, client_id, user, scope, self.public_url).access_token

    def certificate_bound_token(self, user: str, scope: str) -> str:
        """An access token bound to ``certificates.own``'s client certificate (``cnf.x5t#S256``): the code is
        exchanged at the IdP's HTTPS token endpoint with that certificate."""
        own = self.certificates.own
        endpoint = MtlsTokenEndpoint(self.idp_mtls_token_url, own.ca, own.client_cert, own.client_key)
        return authorization_code_token(
            self.issuer, "smart-mtls", user, scope, self.public_url, mtls=endpoint
        ).access_token

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
        text = settled_text(self.workdir / "decisions.jsonl")
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def decisions(self) -> list[dict[str, Any]]:
        """The request decisions (ext_authz); response checks share the log and the request id."""
        return [entry for entry in self._log_entries() if "stage" not in entry]

    def response_checks(self) -> list[dict[str, Any]]:
        """The response verification entries (``"stage": "response"``)."""
        return [entry for entry in self._log_entries() if entry.get("stage") == "response"]


def _idp_config(host: str, base_url: str, ports: list[int], data: seed.Dataset, mtls: dict[str, Any]) -> dict[str, Any]:
    users: dict[str, dict[str, str]] = {
        "alice": {
            "patient": data.patients["A"].patient_id,
            "fhirUser": f"{base_url}/Patient/{data.patients['A'].patient_id}",
        },
        "bob": {"patient": data.patients["B"].patient_id, "fhirUser": f"Patient/{data.patients['B'].patient_id}"},
        "carol": {"patient": data.patients["C"].patient_id, "fhirUser": f"Patient/{data.patients['C'].patient_id}"},
        "drsmith": {"fhirUser": data.patients["A"].practitioner},
    }
    return {
        "host": host,
        "resource": base_url,
        "redirect_uri": REDIRECT_URI,
        "users": users,
        "providers": [
            {
                "port": ports[0],
                "backend_secret": BACKEND_SECRET,
                "mtls": mtls,
                "introspection_client": {
                    "client_id": "smartgate",
                    "client_secret": BASIC_SECRET,
                    "auth_method": "client_secret_basic",
                },
            },
            {
                "port": ports[1],
                "backend_secret": BACKEND_SECRET,
                "introspection_client": {
                    "client_id": "smartgate-post",
                    "client_secret": POST_SECRET,
                    "auth_method": "client_secret_post",
                },
            },
        ],
    }


def _smartgate_config(
    workdir: Path, ports: dict[str, int], issuers: list[str], fhir_url: str, base_url: str
) -> dict[str, Any]:
    (workdir / "introspection-basic.secret").write_text(BASIC_SECRET + "\n", encoding="utf-8")
    (workdir / "introspection-post.secret").write_text(POST_SECRET + "\n", encoding="utf-8")
    return {
        "listen": {"grpc": f"127.0.0.1:{ports['grpc']}", "http": f"127.0.0.1:{ports['http']}"},
        # A short look-up cache, so that a test can see a compartment change within a second.
        "fhir": {"base_url": base_url, "upstream_url": fhir_url, "lookup": {"cache_ttl_seconds": LOOKUP_CACHE_SECONDS}},
        "issuers": [
            {
                "issuer": issuers[0],
                "algorithms": ["RS256", "ES256"],
                "introspection": {
                    "endpoint": f"{issuers[0]}/token/introspection",
                    "client_id": "smartgate",
                    "client_secret_file": str(workdir / "introspection-basic.secret"),
                    "auth_method": "client_secret_basic",
                    "cache_max_ttl_seconds": INTROSPECTION_CACHE_SECONDS,
                },
            },
            {
                "issuer": issuers[1],
                "algorithms": ["RS256", "ES256"],
                "introspection": {
                    "endpoint": f"{issuers[1]}/token/introspection",
                    "client_id": "smartgate-post",
                    "client_secret_file": str(workdir / "introspection-post.secret"),
                    "auth_method": "client_secret_post",
                    "cache_max_ttl_seconds": INTROSPECTION_CACHE_SECONDS,
                },
            },
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
    certificates: ClientCertificates
    idp_mtls_token_url: str


@pytest.fixture(scope="session")
def components(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Components]:
    started = time.monotonic()
    ensure_node_modules()
    workdir = tmp_path_factory.mktemp("e2e")
    ports = {name: free_port() for name in ("fhir", "idp", "idp_post", "idp_mtls", "envoy")}
    public_url = f"http://127.0.0.1:{ports['envoy']}/fhir"
    certificates = ClientCertificates.make(workdir / "certificates")
    idp_mtls = {
        "port": ports["idp_mtls"],
        "cert": str(certificates.own.server_cert),
        "key": str(certificates.own.server_key),
        "ca": str(certificates.own.ca),
    }
    with ThreadPoolExecutor(1) as pool, contextlib.ExitStack() as stack:
        fhir_log = workdir / "fhir-server.log"
        fhir_process = stack.enter_context(_node_process("fhir-server.mjs", ["--port", str(ports["fhir"])], fhir_log))
        data = pool.submit(seed.build_dataset).result()  # carebundle works while Node starts
        idp_config = workdir / "idp.json"
        idp_config.write_text(
            json.dumps(_idp_config("127.0.0.1", public_url, [ports["idp"], ports["idp_post"]], data, idp_mtls)),
            encoding="utf-8",
        )
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
        yield Components(
            public_url,
            ports["envoy"],
            fhir,
            idp,
            data,
            workdir,
            certificates,
            f"https://127.0.0.1:{ports['idp_mtls']}/token",
        )


@contextlib.contextmanager
def _gateway(
    parts: Components,
    name: str,
    envoy_port: int,
    response_verification: VerificationMode,
    *,
    mtls: bool = False,
    upstream_url: str | None = None,
) -> Iterator[E2EStack]:
    """smartgate + Envoy (rendered by smartgate.envoy_glue.bootstrap) in front of the shared FHIR server; with
    ``mtls``, Envoy's optional mTLS listener too, requiring a client certificate from a trusted CA. With
    ``upstream_url``, both reach the FHIR server through that address instead (a proxy in front of it)."""
    started = time.monotonic()
    workdir = parts.workdir / name
    workdir.mkdir()
    ports = {"grpc": free_port(), "http": free_port(), "admin": free_port(), "tls": free_port()}
    upstream = upstream_url or parts.fhir.base_url
    config = _smartgate_config(workdir, ports, parts.idp.issuers, upstream, parts.public_url)
    config["response_verification"] = {"mode": response_verification}
    settings = EnvoySettings(
        listen_host="127.0.0.1",
        listen_port=envoy_port,
        admin_port=ports["admin"],
        authz_port=ports["grpc"],
        upstream_url=upstream,
        base_path="/fhir",
        max_request_bytes=MAX_REQUEST_BYTES,
        smartgate_http_port=ports["http"],
        response_verification=response_verification,
        tls=_mtls_listener(parts.certificates, ports["tls"]) if mtls else None,
    )
    with (
        running(start_smartgate(config, workdir)),
        running(start_envoy(settings, workdir)),
        httpx.Client(timeout=30) as client,
    ):
        print(f"\n[e2e] gateway {name!r} up in {time.monotonic() - started:.1f}s")
        yield E2EStack(
            f"http://127.0.0.1:{envoy_port}/fhir",
            parts.public_url,
            parts.fhir,
            parts.idp,
            parts.idp.issuers[0],
            parts.idp.issuers[1],
            parts.data,
            workdir,
            client,
            parts.certificates,
            parts.idp_mtls_token_url,
            f"https://127.0.0.1:{ports['tls']}/fhir" if mtls else None,
        )


def _mtls_listener(certificates: ClientCertificates, port: int) -> DownstreamTls:
    own = certificates.own
    return DownstreamTls(
        port=port,
        cert_path=str(own.server_cert),
        key_path=str(own.server_key),
        client_ca_path=str(certificates.trusted_cas),
    )


@pytest.fixture(scope="session")
def e2e(components: Components) -> Iterator[E2EStack]:
    """The gateway as shipped: smartgate's defaults (response verification off; DPoP on), with the optional
    mTLS listener on."""
    with _gateway(components, "default", components.public_port, "off", mtls=True) as stack:
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
