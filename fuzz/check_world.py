"""The real Check path, in-process, for property tests and the coverage-guided fuzzer.

One issuer with a fixed ES256 key (a fuzz-only key, derived from a constant so the committed
corpus keeps verifying), a fixed clock (so its tokens never expire), the real TokenVerifier,
Authorizer, ResponseBuilder and AuthorizationService, and a membership look-up stand-in that
answers deterministically from the resource id: ``alice7-o1`` belongs to patient ``alice7``.

One token is DPoP-bound (``cnf.jkt`` of a fuzz-only client key): ``dpop_proof`` signs fresh proofs
for it, and the oracle allows it only with a proof that verifies.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import logging
from dataclasses import dataclass
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric import ec
from envoy.service.auth.v3 import external_auth_pb2
from jwt.algorithms import ECAlgorithm

from smartgate.config.model import DpopConfig, HeaderNames, IssuerConfig, JwksPolicy, LookupConfig, TokenPolicy
from smartgate.envoy_glue.authz_service import AuthorizationService, Pipeline
from smartgate.envoy_glue.check_response import ResponseBuilder
from smartgate.fhir.compartment import MEMBERSHIP_PARAMS
from smartgate.fhir.resources import element_paths
from smartgate.pipeline.audit_event import AuditEventLog
from smartgate.pipeline.authorizer import Authorizer
from smartgate.pipeline.decision_log import DecisionLog
from smartgate.pipeline.fhir_lookup import LookupResult, MembershipLookup
from smartgate.pipeline.public_routes import PublicRoutes
from smartgate.policy import PolicySettings
from smartgate.policy.plan import MembershipCheck
from smartgate.tokens.dpop import DpopVerifier
from smartgate.tokens.jwks import JwksCache
from smartgate.tokens.sender_constraint import SenderConstraints
from smartgate.tokens.verifier import TokenVerifier

FHIR_BASE_URL = "https://fhir.example.org/r4"
BASE_PATH = "/r4"
ISSUER = "https://issuer.example.org"
KID = "fuzz-es256"
NOW = 1_750_000_000  # the verifier's clock: corpus tokens stay valid forever
MAX_TOKEN_BYTES = 16_384

# Patients with a token, and one without: every id is distinctive so the oracle can spot it.
PATIENTS = ("alice7", "bob9", "carol3")
FOREIGN_PATIENT = "dave4"
ALL_PATIENTS = (*PATIENTS, FOREIGN_PATIENT)

# A fuzz-only signing key: a constant scalar, never used anywhere else.
_PRIVATE_KEY = ec.derive_private_key(0x5EED_F022_C0DE_0001_5EED_F022_C0DE_0001_5EED_F022_C0DE_0001, ec.SECP256R1())
PUBLIC_KEY = _PRIVATE_KEY.public_key()
# The DPoP client's key (fuzz-only, constant), to which the bound token is bound.
DPOP_KEY = ec.derive_private_key(0xD0_9F_F022_C0DE_0002_5EED_F022_C0DE_0002_5EED_F022_C0DE_0002, ec.SECP256R1())
DPOP_PUBLIC_KEY = DPOP_KEY.public_key()
FHIR_ORIGIN = "https://fhir.example.org"


@dataclass(frozen=True)
class TokenSpec:
    """A valid token the world hands out: its patient (None for user/ tokens) and scope."""

    name: str
    patient: str | None
    scope: str
    bound: bool = False  # DPoP-bound to DPOP_KEY (cnf.jkt)


TOKEN_SPECS: tuple[TokenSpec, ...] = (
    TokenSpec("alice-all", "alice7", "launch/patient patient/*.cruds"),
    TokenSpec("bob-obs", "bob9", "launch/patient patient/Observation.rs patient/Patient.r patient/Encounter.read"),
    TokenSpec(
        "carol-granular",
        "carol3",
        "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory"
        " patient/Condition.read patient/Practitioner.rs",
    ),
    TokenSpec("alice-v1", "alice7", "patient/*.read patient/*.write"),
    TokenSpec("user-read", None, "user/*.rs"),
    TokenSpec("alice-dpop", "alice7", "launch/patient patient/*.rs", bound=True),
)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_json(value: Any) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode("utf-8"))


def es256_signature(signing_input: bytes, key: ec.EllipticCurvePrivateKey = _PRIVATE_KEY) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def claims_for(patient: str | None, scope: str, **overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": FHIR_BASE_URL,
        "sub": "user-1",
        "client_id": "fuzz-app",
        "scope": scope,
        "iat": NOW - 60,
        "exp": NOW + 3600,
        "jti": "fuzz",
    }
    if patient is not None:
        claims["patient"] = patient
    claims.update(overrides)
    return {name: value for name, value in claims.items() if value is not None}


def sign(
    claims: dict[str, Any], header: dict[str, Any] | None = None, key: ec.EllipticCurvePrivateKey = _PRIVATE_KEY
) -> str:
    """An ES256 compact JWS of ``claims`` (header defaults to at+jwt with our kid)."""
    head = {"alg": "ES256", "typ": "at+jwt", "kid": KID} if header is None else header
    signing_input = f"{_b64url_json(head)}.{_b64url_json(claims)}".encode("ascii")
    return f"{signing_input.decode('ascii')}.{b64url(es256_signature(signing_input, key))}"


def dpop_public_jwk() -> dict[str, str]:
    numbers = DPOP_PUBLIC_KEY.public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": b64url(numbers.x.to_bytes(32, "big")),
        "y": b64url(numbers.y.to_bytes(32, "big")),
    }


def dpop_thumbprint() -> str:
    """RFC 7638 thumbprint of the DPoP client's key: the bound token's ``cnf.jkt``."""
    jwk = dpop_public_jwk()
    canonical = json.dumps({name: jwk[name] for name in ("crv", "kty", "x", "y")}, separators=(",", ":"))
    return b64url(hashlib.sha256(canonical.encode("ascii")).digest())


def token_for(spec: TokenSpec) -> str:
    if spec.bound:
        return sign(claims_for(spec.patient, spec.scope, cnf={"jkt": dpop_thumbprint()}))
    return sign(claims_for(spec.patient, spec.scope))


_PROOF_IDS = itertools.count()


def dpop_proof(method: str, path: str, token: str, key: ec.EllipticCurvePrivateKey = DPOP_KEY, **overrides: Any) -> str:
    """A fresh DPoP proof (new jti) by the client key for ``method`` on ``path`` (the query is dropped)."""
    claims: dict[str, Any] = {
        "jti": f"fuzz-proof-{next(_PROOF_IDS)}",
        "htm": method,
        "htu": FHIR_ORIGIN + path.partition("?")[0],
        "iat": NOW,
        "ath": b64url(hashlib.sha256(token.encode("ascii", "replace")).digest()),
    }
    claims.update(overrides)
    return sign(claims, {"typ": "dpop+jwt", "alg": "ES256", "jwk": dpop_public_jwk()}, key)


def owner_of(resource_id: str) -> str | None:
    """The stand-in's ground truth: ``alice7`` and ``alice7-anything`` belong to alice7."""
    for patient in ALL_PATIENTS:
        if resource_id == patient or resource_id.startswith(patient + "-"):
            return patient
    return None


def _patients_named(check: MembershipCheck) -> set[str]:
    named = set()
    for query in check.queries:
        for _, value in query:
            if value.startswith("Patient/"):
                named.add(value[len("Patient/") :])
    return named


def _nested(path: tuple[str, ...], leaf: Any) -> dict[str, Any]:
    node: Any = leaf
    for name in reversed(path):
        node = {name: node}
    result: dict[str, Any] = node
    return result


class DeterministicLookup(MembershipLookup):
    """Answers membership from ``owner_of`` (no I/O); counts the questions it was asked."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        super().__init__("http://upstream.invalid/fhir", LookupConfig(), client)
        self.asked = 0

    async def is_member(self, check: MembershipCheck) -> LookupResult:
        self.asked += 1
        owner = owner_of(check.resource_id)
        return LookupResult(owner is not None and _patients_named(check) == {owner}, False)

    async def exists(self, resource_type: str, resource_id: str) -> bool:
        self.asked += 1
        return owner_of(resource_id) is not None

    async def versions(
        self, resource_type: str, resource_id: str, version_id: str | None, limit: int = 100
    ) -> list[Any]:
        self.asked += 1
        owner = owner_of(resource_id) or "nobody"
        resource: dict[str, Any] = {"resourceType": resource_type, "id": resource_id}
        if resource_type == "Patient":
            return [resource]
        for code in MEMBERSHIP_PARAMS.get(resource_type, ()):
            for path, _ in element_paths(resource_type, code):
                resource.update(_nested(path, {"reference": f"Patient/{owner}"}))
        return [resource]

    async def binary_security_context(self, resource_id: str, fhir_base_url: str) -> tuple[str, str] | None:
        self.asked += 1
        owner = owner_of(resource_id)
        return ("Patient", owner) if owner else None


def _no_network(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError(f"the fuzz world has no network ({request.url.host})", request=request)


class CheckWorld:
    """The AuthorizationService wired to a fixed issuer and the deterministic look-up.

    Owns an event loop: ``check`` runs one CheckRequest synchronously through ``Check``.
    """

    def __init__(self, jwks_file: str) -> None:
        self._quieted_level = logging.getLogger("smartgate").level
        logging.getLogger("smartgate").setLevel(logging.CRITICAL)  # the authorizer logs surprises loudly; until close()
        self.loop = asyncio.new_event_loop()
        self.client = httpx.AsyncClient(transport=httpx.MockTransport(_no_network))
        issuer = IssuerConfig(
            issuer=ISSUER,
            audiences=(FHIR_BASE_URL,),
            jwks_file=jwks_file,
            algorithms=("ES256", "RS256", "PS256", "EdDSA"),
        )
        cache = JwksCache(issuer, JwksPolicy(), self.client)
        verifier = TokenVerifier({ISSUER: (issuer, cache)}, TokenPolicy(), FHIR_BASE_URL, clock=lambda: float(NOW))
        self.lookup = DeterministicLookup(self.client)
        self.dpop = DpopVerifier(DpopConfig(), TokenPolicy().clock_skew_seconds, clock=lambda: float(NOW))
        authorizer = Authorizer(
            BASE_PATH,
            PublicRoutes(BASE_PATH, ()),
            verifier,
            PolicySettings(fhir_base_url=FHIR_BASE_URL),
            self.lookup,
            MAX_TOKEN_BYTES,
            sender_constraints=SenderConstraints(FHIR_BASE_URL, dpop=self.dpop),
        )
        pipeline = Pipeline(
            authorizer=authorizer,
            responses=ResponseBuilder(HeaderNames(), FHIR_BASE_URL, dpop_algs=DpopConfig().algorithms),
            decision_log=DecisionLog("off"),
            audit_log=AuditEventLog("off", FHIR_BASE_URL, "fuzz"),
        )
        self.service = AuthorizationService(pipeline)
        self.tokens = {spec.name: token_for(spec) for spec in TOKEN_SPECS}

    def check(self, request: external_auth_pb2.CheckRequest) -> external_auth_pb2.CheckResponse:
        response: external_auth_pb2.CheckResponse = self.loop.run_until_complete(self.service.Check(request, None))
        return response

    def close(self) -> None:
        self.loop.run_until_complete(self.client.aclose())
        self.loop.close()
        logging.getLogger("smartgate").setLevel(self._quieted_level)


def write_jwks(path: str) -> str:
    """Write the issuer's public key set (our one ES256 key) to ``path``; returns ``path``."""
    jwk = json.loads(ECAlgorithm.to_jwk(PUBLIC_KEY))
    jwk.update({"kid": KID, "alg": "ES256", "use": "sig"})
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({"keys": [jwk]}, handle)
    return path


def check_request(
    path: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> external_auth_pb2.CheckRequest:
    """A CheckRequest as Envoy builds it (raw_body, lower-cased headers plus the pseudo-headers)."""
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method = method
    http.path = path
    http.host = "fhir.example.org"
    http.scheme = "https"
    http.protocol = "HTTP/1.1"
    all_headers = {":method": method, ":path": path, ":authority": "fhir.example.org", ":scheme": "https"}
    all_headers.update(headers or {})
    if body is not None:
        http.raw_body = body
        http.size = len(body)
        all_headers.setdefault("content-length", str(len(body)))
    for name, value in all_headers.items():
        http.headers[name] = value
    return request
