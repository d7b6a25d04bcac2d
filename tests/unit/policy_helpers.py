"""Shared helpers for the policy, request, response and authorizer unit tests.

Tokens for the pure policy tests are built straight from a scope string and a patient id
through ``smartgate.tokens.scopes.parse_scopes``; tokens for the end-to-end authorizer tests are
really signed (ES256) and verified against a ``jwks_file`` issuer.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from smartgate.config.model import IssuerConfig, JwksPolicy, LookupConfig, PublicRoute, TokenPolicy
from smartgate.core.http import HttpRequest
from smartgate.core.reasons import Refusal
from smartgate.fhir.request import FhirRequest, parse_fhir_request
from smartgate.policy import PolicySettings, decide
from smartgate.policy.decision import Decision
from smartgate.policy.plan import Pending
from smartgate.tokens.context import TokenContext
from smartgate.tokens.jwks import JwksCache
from smartgate.tokens.scopes import parse_scopes
from smartgate.tokens.verifier import TokenVerifier

FHIR_BASE_URL = "https://fhir.example.org/r4"
BASE_PATH = "/r4"
UPSTREAM_URL = "http://upstream.internal/fhir"
ISSUER = "https://issuer.example.org"
KID = "unit-es256"
PATIENT = "123"
OTHER_PATIENT = "456"
SETTINGS = PolicySettings(fhir_base_url=FHIR_BASE_URL)


def token_context(
    scope: str,
    patient: str | None = PATIENT,
    *,
    fhir_user: str | None = None,
    subject: str = "user-1",
    client_id: str = "app-1",
    issuer: str = ISSUER,
) -> TokenContext:
    """A verified-looking TokenContext whose grants come from ``parse_scopes([scope])``."""
    return TokenContext(
        issuer=issuer,
        subject=subject,
        client_id=client_id,
        scope_text=" ".join(scope.split()),
        grants=parse_scopes([scope]),
        patient=patient,
        fhir_user=fhir_user,
        expires_at=time.time() + 600,
    )


def http(
    path: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    body_truncated: bool = False,
) -> HttpRequest:
    return HttpRequest(method=method, path=path, headers=dict(headers or {}), body=body, body_truncated=body_truncated)


def form_post(path: str, body: bytes, **extra_headers: str) -> HttpRequest:
    headers = {"content-type": "application/x-www-form-urlencoded", "content-length": str(len(body))}
    headers.update(extra_headers)
    return http(path, "POST", headers, body)


def fhir_request(path: str, method: str = "GET", **kwargs: Any) -> FhirRequest:
    """Parse ``path`` (relative to the FHIR base, e.g. ``Observation?patient=123``); must succeed."""
    parsed = parse_fhir_request(http(f"{BASE_PATH}/{path}", method, **kwargs), BASE_PATH)
    assert isinstance(parsed, FhirRequest), parsed
    return parsed


def decide_path(
    path: str,
    scope: str = "patient/*.rs",
    patient: str | None = PATIENT,
    method: str = "GET",
    settings: PolicySettings = SETTINGS,
) -> Decision | Pending:
    """Classify ``path`` relative to the base and run the policy for a token with ``scope``."""
    return decide(fhir_request(path, method), token_context(scope, patient), settings)


def body_request(
    path: str,
    method: str,
    body: Any,
    content_type: str = "application/fhir+json",
    headers: dict[str, str] | None = None,
) -> FhirRequest:
    """Parse a request to ``path`` (relative to the base) carrying ``body``: JSON-encoded unless it
    is already bytes (or None, for no body at all)."""
    encoded = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    all_headers = {"content-type": content_type, **(headers or {})}
    return fhir_request(path, method, headers=all_headers, body=encoded)


def decide_body(
    path: str,
    method: str,
    body: Any,
    scope: str = "patient/*.cruds",
    *,
    content_type: str = "application/fhir+json",
    headers: dict[str, str] | None = None,
    patient: str | None = PATIENT,
    settings: PolicySettings = SETTINGS,
) -> Decision | Pending:
    """Run the policy on a request carrying ``body`` for a token with ``scope``."""
    return decide(body_request(path, method, body, content_type, headers), token_context(scope, patient), settings)


def request_error(request: HttpRequest) -> Refusal:
    parsed = parse_fhir_request(request, BASE_PATH)
    assert isinstance(parsed, Refusal), parsed
    return parsed


# --- Signed tokens, for the end-to-end tests -------------------------------------------------


class SigningKey:
    """An ES256 key pair, with its public half written as a JWKS file."""

    def __init__(self, directory: Path, kid: str = KID) -> None:
        self.kid = kid
        self.private_key = ec.generate_private_key(ec.SECP256R1())
        public_jwk: dict[str, Any] = json.loads(ECAlgorithm.to_jwk(self.private_key.public_key()))
        public_jwk.update({"kid": kid, "alg": "ES256", "use": "sig"})
        self.jwks_file = directory / "jwks.json"
        self.jwks_file.write_text(json.dumps({"keys": [public_jwk]}), encoding="utf-8")

    def token(
        self,
        scope: str = "launch/patient patient/*.rs",
        patient: str | None = PATIENT,
        *,
        lifetime: int = 600,
        **overrides: Any,
    ) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": FHIR_BASE_URL,
            "sub": "user-1",
            "client_id": "app-1",
            "scope": scope,
            "iat": now,
            "exp": now + lifetime,
            "jti": uuid.uuid4().hex,
        }
        if patient is not None:
            claims["patient"] = patient
        claims.update(overrides)
        return jwt.encode(claims, self.private_key, algorithm="ES256", headers={"kid": self.kid, "typ": "at+jwt"})


def _no_network(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"unexpected network call to {request.url}")


def offline_client() -> httpx.AsyncClient:
    """An AsyncClient that fails the test on any request."""
    return httpx.AsyncClient(transport=httpx.MockTransport(_no_network))


def file_verifier(key: SigningKey, client: httpx.AsyncClient) -> TokenVerifier:
    """A TokenVerifier trusting one issuer whose keys come from ``key``'s JWKS file."""
    issuer = IssuerConfig(
        issuer=ISSUER, audiences=(FHIR_BASE_URL,), jwks_file=str(key.jwks_file), algorithms=("ES256",)
    )
    cache = JwksCache(issuer, JwksPolicy(), client)
    return TokenVerifier({ISSUER: (issuer, cache)}, TokenPolicy(), FHIR_BASE_URL)


def lookup_config(**overrides: Any) -> LookupConfig:
    return LookupConfig(**overrides)


def public_route(path: str, prefix: bool = False, methods: tuple[str, ...] = ("GET", "HEAD")) -> PublicRoute:
    return PublicRoute(path=path, methods=frozenset(methods), prefix=prefix)
