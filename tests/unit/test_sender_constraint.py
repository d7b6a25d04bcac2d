"""Sender-constrained tokens through the Authorizer: DPoP-bound (``cnf.jkt``, RFC 9449) and
certificate-bound (``cnf.x5t#S256``, RFC 8705) JWTs and introspected tokens, the schemes, and
``sender_constraint: required``. Tokens are really signed and verified (ES256, jwks_file issuer)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from smartgate.config.model import DpopConfig, IntrospectionConfig, IssuerConfig, JwksPolicy, TokenPolicy
from smartgate.core.reasons import Reason
from smartgate.pipeline.authorizer import Authorizer
from smartgate.pipeline.public_routes import PublicRoutes
from smartgate.policy.decision import Decision
from smartgate.tokens.binding import confirmation_from_claims
from smartgate.tokens.dpop import DpopVerifier
from smartgate.tokens.introspection import Introspector
from smartgate.tokens.jwks import JwksCache
from smartgate.tokens.sender_constraint import SenderConstraints
from smartgate.tokens.verifier import TokenVerifier
from tests.support.dpop import ClientCertificate, DpopKey
from tests.unit.policy_helpers import (
    BASE_PATH,
    FHIR_BASE_URL,
    ISSUER,
    SETTINGS,
    SigningKey,
    file_verifier,
    http,
    offline_client,
)
from tests.unit.test_authorizer import FakeLookup

OWN_SEARCH = "/Observation?patient=123"
OWN_SEARCH_URL = f"{FHIR_BASE_URL}/Observation"  # htu: the public base + the path, without the query
OPAQUE = "opaque-access-token-0123456789"


@dataclass
class Gate:
    key: SigningKey
    authorizer: Authorizer
    client: httpx.AsyncClient
    introspection: dict[str, Any]  # the introspection endpoint's answer, under "answer"

    @property
    def introspection_answer(self) -> Any:
        return self.introspection["answer"]

    @introspection_answer.setter
    def introspection_answer(self, answer: dict[str, Any]) -> None:
        self.introspection["answer"] = answer

    async def decide(
        self,
        token: str,
        *,
        scheme: str = "DPoP",
        proof: str | None = None,
        certificate: str | None = None,
        path: str = OWN_SEARCH,
        method: str = "GET",
    ) -> Decision:
        headers = {"authorization": f"{scheme} {token}"}
        if proof is not None:
            headers["dpop"] = proof
        request = dataclasses.replace(http(BASE_PATH + path, method, headers), peer_certificate=certificate)
        return await self.authorizer.authorize(request)


def build_gate(tmp_path: Path, *, dpop: bool = True, required: bool = False) -> Gate:
    key = SigningKey(tmp_path)
    answers: dict[str, Any] = {"answer": {"active": False}}
    client = httpx.AsyncClient(transport=httpx.MockTransport(lambda _: httpx.Response(200, json=answers["answer"])))
    issuer = IssuerConfig(
        issuer=ISSUER,
        audiences=(FHIR_BASE_URL,),
        jwks_file=str(key.jwks_file),
        algorithms=("ES256",),
        sender_constraint="required" if required else "optional",
        introspection=IntrospectionConfig("https://issuer.example.org/introspect", "sg", "secret"),
    )
    verifier = TokenVerifier(
        {ISSUER: (issuer, JwksCache(issuer, JwksPolicy(), client))},
        TokenPolicy(),
        FHIR_BASE_URL,
        introspector=Introspector([issuer], client, FHIR_BASE_URL),
    )
    senders = SenderConstraints(
        FHIR_BASE_URL,
        frozenset({ISSUER}) if required else frozenset(),
        DpopVerifier(DpopConfig(), 60) if dpop else None,
    )
    authorizer = Authorizer(
        BASE_PATH, PublicRoutes(BASE_PATH, ()), verifier, SETTINGS, FakeLookup(), 16_384, sender_constraints=senders
    )
    return Gate(key, authorizer, client, answers)


@pytest.fixture
async def gate(tmp_path: Path) -> AsyncIterator[Gate]:
    built = build_gate(tmp_path)
    yield built
    await built.client.aclose()


@pytest.fixture
def client_key() -> DpopKey:
    return DpopKey()


def bound_token(gate: Gate, client_key: DpopKey) -> str:
    return gate.key.token(cnf={"jkt": client_key.thumbprint})


# --- DPoP-bound tokens -------------------------------------------------------------------------------------


async def test_a_dpop_bound_token_with_a_valid_proof_is_allowed(gate: Gate, client_key: DpopKey) -> None:
    token = bound_token(gate, client_key)
    decision = await gate.decide(token, proof=client_key.proof("GET", OWN_SEARCH_URL, token))
    assert decision.allowed, decision


async def test_a_dpop_bound_token_without_a_proof_is_refused(gate: Gate, client_key: DpopKey) -> None:
    decision = await gate.decide(bound_token(gate, client_key))
    assert (decision.reason, decision.http_status) == (Reason.DPOP_PROOF_MISSING, 401)


async def test_a_dpop_bound_token_sent_as_bearer_is_refused_even_with_a_proof(gate: Gate, client_key: DpopKey) -> None:
    """RFC 9449 section 7.2: a DPoP-bound token is never accepted as a bearer token (no downgrade)."""
    token = bound_token(gate, client_key)
    without = await gate.decide(token, scheme="Bearer")
    with_proof = await gate.decide(token, scheme="Bearer", proof=client_key.proof("GET", OWN_SEARCH_URL, token))
    assert without.reason is with_proof.reason is Reason.DPOP_TOKEN_AS_BEARER


async def test_a_dpop_bound_token_with_a_proof_by_another_key_is_refused(gate: Gate, client_key: DpopKey) -> None:
    token = bound_token(gate, client_key)
    decision = await gate.decide(token, proof=DpopKey().proof("GET", OWN_SEARCH_URL, token))
    assert decision.reason is Reason.DPOP_BINDING_MISMATCH


async def test_a_proof_without_a_bound_token_is_refused_under_the_dpop_scheme(gate: Gate, client_key: DpopKey) -> None:
    """RFC 9449 section 7.1: the DPoP scheme needs a DPoP-bound token."""
    token = gate.key.token()
    decision = await gate.decide(token, proof=client_key.proof("GET", OWN_SEARCH_URL, token))
    assert (decision.reason, decision.http_status) == (Reason.DPOP_TOKEN_UNBOUND, 401)


async def test_an_unbound_bearer_token_with_a_stray_dpop_header_is_a_plain_bearer_token(
    gate: Gate, client_key: DpopKey
) -> None:
    token = gate.key.token()
    decision = await gate.decide(token, scheme="Bearer", proof=client_key.proof("GET", OWN_SEARCH_URL, token))
    assert decision.allowed


async def test_a_cached_bound_token_needs_a_fresh_proof_on_every_request(gate: Gate, client_key: DpopKey) -> None:
    token = bound_token(gate, client_key)
    first = client_key.proof("GET", OWN_SEARCH_URL, token)
    assert (await gate.decide(token, proof=first)).allowed
    assert (await gate.decide(token, proof=first)).reason is Reason.DPOP_PROOF_REPLAYED
    assert (await gate.decide(token)).reason is Reason.DPOP_PROOF_MISSING
    assert (await gate.decide(token, proof=client_key.proof("GET", OWN_SEARCH_URL, token))).allowed


async def test_the_proof_htu_is_the_public_base_url_and_the_path_without_the_query(
    gate: Gate, client_key: DpopKey
) -> None:
    token = bound_token(gate, client_key)
    with_query = client_key.proof("GET", f"{FHIR_BASE_URL}{OWN_SEARCH}", token)
    internal_host = client_key.proof("GET", f"http://127.0.0.1:10000{BASE_PATH}/Observation", token)
    assert (await gate.decide(token, proof=with_query)).reason is Reason.DPOP_PROOF_INVALID
    assert (await gate.decide(token, proof=internal_host)).reason is Reason.DPOP_PROOF_INVALID


async def test_a_proof_for_another_request_of_the_same_client_is_refused(gate: Gate, client_key: DpopKey) -> None:
    token = bound_token(gate, client_key)
    read_proof = client_key.proof("GET", f"{FHIR_BASE_URL}/Patient/123", token)
    decision = await gate.decide(token, proof=read_proof)
    assert decision.reason is Reason.DPOP_PROOF_INVALID


async def test_with_dpop_off_a_dpop_bound_token_is_unsupported_and_the_scheme_unknown(
    tmp_path: Path, client_key: DpopKey
) -> None:
    gate = build_gate(tmp_path, dpop=False)
    token = bound_token(gate, client_key)
    as_bearer = await gate.decide(token, scheme="Bearer")
    as_dpop = await gate.decide(token, proof=client_key.proof("GET", OWN_SEARCH_URL, token))
    await gate.client.aclose()
    assert as_bearer.reason is Reason.TOKEN_BINDING_UNSUPPORTED
    assert as_dpop.reason is Reason.AUTHENTICATION_SCHEME_UNSUPPORTED


# --- certificate-bound tokens ------------------------------------------------------------------------------


async def test_a_certificate_bound_token_with_its_client_certificate_is_allowed(gate: Gate) -> None:
    certificate = ClientCertificate()
    token = gate.key.token(cnf={"x5t#S256": certificate.thumbprint})
    assert (await gate.decide(token, scheme="Bearer", certificate=certificate.pem)).allowed


async def test_a_certificate_bound_token_with_another_client_certificate_is_refused(gate: Gate) -> None:
    token = gate.key.token(cnf={"x5t#S256": ClientCertificate().thumbprint})
    decision = await gate.decide(token, scheme="Bearer", certificate=ClientCertificate("thief").pem)
    assert (decision.reason, decision.http_status) == (Reason.CERTIFICATE_BINDING_MISMATCH, 401)


async def test_a_certificate_bound_token_without_a_client_certificate_is_refused(gate: Gate) -> None:
    token = gate.key.token(cnf={"x5t#S256": ClientCertificate().thumbprint})
    decision = await gate.decide(token, scheme="Bearer")
    assert (decision.reason, decision.http_status) == (Reason.CERTIFICATE_BINDING_MISSING, 401)


async def test_a_certificate_that_is_not_pem_is_a_mismatch(gate: Gate) -> None:
    token = gate.key.token(cnf={"x5t#S256": ClientCertificate().thumbprint})
    decision = await gate.decide(token, scheme="Bearer", certificate="-----BEGIN CERTIFICATE-----\ngarbage")
    assert decision.reason is Reason.CERTIFICATE_BINDING_MISMATCH


async def test_a_token_bound_to_both_needs_the_certificate_and_the_proof(gate: Gate, client_key: DpopKey) -> None:
    certificate = ClientCertificate()
    token = gate.key.token(cnf={"jkt": client_key.thumbprint, "x5t#S256": certificate.thumbprint})
    no_certificate = await gate.decide(token, proof=client_key.proof("GET", OWN_SEARCH_URL, token))
    no_proof = await gate.decide(token, certificate=certificate.pem)
    both = await gate.decide(token, proof=client_key.proof("GET", OWN_SEARCH_URL, token), certificate=certificate.pem)
    assert (no_certificate.reason, no_proof.reason) == (Reason.CERTIFICATE_BINDING_MISSING, Reason.DPOP_PROOF_MISSING)
    assert both.allowed


# --- cnf members smartgate cannot check --------------------------------------------------------------------


@pytest.mark.parametrize(
    "cnf",
    [
        {"jwk": {"kty": "EC", "crv": "P-256", "x": "a", "y": "b"}},
        {"x5t": "abc"},
        {"kid": "k1"},
        {},
        {"jkt": "A" * 43, "jku": "https://evil.example.org/keys"},
    ],
    ids=["jwk", "x5t-sha1", "kid", "empty", "jkt-and-jku"],
)
async def test_a_cnf_member_smartgate_cannot_check_is_401_never_a_bearer_allow(gate: Gate, cnf: dict[str, Any]) -> None:
    decision = await gate.decide(gate.key.token(cnf=cnf), scheme="Bearer")
    assert (decision.reason, decision.http_status) == (Reason.TOKEN_BINDING_UNSUPPORTED, 401)


@pytest.mark.parametrize(
    "cnf",
    ["jkt", ["jkt"], {"jkt": 42}, {"jkt": "too-short"}, {"x5t#S256": "A" * 44}, {"jkt": None}, {"x5t#S256": None}],
)
def test_a_malformed_cnf_is_an_invalid_claim(cnf: Any) -> None:
    result = confirmation_from_claims({"cnf": cnf})
    assert getattr(result, "reason", None) is Reason.TOKEN_CLAIMS_INVALID


# --- sender_constraint: required ---------------------------------------------------------------------------


@pytest.mark.parametrize("cnf", [{"jkt": None}, {"x5t#S256": None}, {"jkt": None, "x5t#S256": None}])
async def test_a_cnf_with_null_members_is_refused_not_taken_for_a_binding(tmp_path: Path, cnf: dict[str, Any]) -> None:
    """Found in review: {"jkt": null} made a "bound" token with no binding, which skipped the required-issuer
    check and was allowed as a plain Bearer token."""
    gate = build_gate(tmp_path, required=True)
    decision = await gate.decide(gate.key.token(cnf=cnf), scheme="Bearer")
    assert (decision.reason, decision.http_status) == (Reason.TOKEN_CLAIMS_INVALID, 401)


async def test_an_issuer_requiring_sender_constraints_refuses_a_plain_bearer_token(tmp_path: Path) -> None:
    gate = build_gate(tmp_path, required=True)
    decision = await gate.decide(gate.key.token(), scheme="Bearer")
    await gate.client.aclose()
    assert (decision.reason, decision.http_status) == (Reason.BEARER_TOKEN_NOT_ALLOWED, 401)


async def test_an_issuer_requiring_sender_constraints_accepts_bound_tokens(tmp_path: Path, client_key: DpopKey) -> None:
    gate = build_gate(tmp_path, required=True)
    dpop_token = bound_token(gate, client_key)
    certificate = ClientCertificate()
    mtls_token = gate.key.token(cnf={"x5t#S256": certificate.thumbprint})
    dpop = await gate.decide(dpop_token, proof=client_key.proof("GET", OWN_SEARCH_URL, dpop_token))
    mtls = await gate.decide(mtls_token, scheme="Bearer", certificate=certificate.pem)
    await gate.client.aclose()
    assert dpop.allowed and mtls.allowed


# --- introspected tokens (RFC 7662 with RFC 9449 section 6.2 / RFC 8705 section 3.2) -----------------------


def active(**members: Any) -> dict[str, Any]:
    return {
        "active": True,
        "iss": ISSUER,
        "aud": FHIR_BASE_URL,
        "sub": "user-1",
        "client_id": "app-1",
        "scope": "launch/patient patient/*.rs",
        "patient": "123",
        "exp": 4_000_000_000,
        **members,
    }


async def test_an_introspected_dpop_bound_token_needs_its_proof(gate: Gate, client_key: DpopKey) -> None:
    gate.introspection_answer = active(token_type="DPoP", cnf={"jkt": client_key.thumbprint})
    without = await gate.decide(OPAQUE)
    with_proof = await gate.decide(OPAQUE, proof=client_key.proof("GET", OWN_SEARCH_URL, OPAQUE))
    as_bearer = await gate.decide(OPAQUE, scheme="Bearer")
    assert (without.reason, as_bearer.reason) == (Reason.DPOP_PROOF_MISSING, Reason.DPOP_TOKEN_AS_BEARER)
    assert with_proof.allowed


async def test_an_introspected_certificate_bound_token_needs_its_certificate(gate: Gate) -> None:
    certificate = ClientCertificate()
    gate.introspection_answer = active(cnf={"x5t#S256": certificate.thumbprint})
    assert (await gate.decide(OPAQUE, scheme="Bearer")).reason is Reason.CERTIFICATE_BINDING_MISSING
    assert (await gate.decide(OPAQUE, scheme="Bearer", certificate=certificate.pem)).allowed


async def test_an_introspected_token_with_an_unknown_cnf_member_is_unsupported(gate: Gate) -> None:
    gate.introspection_answer = active(cnf={"x5t": "sha1-thumbprint"})
    assert (await gate.decide(OPAQUE, scheme="Bearer")).reason is Reason.TOKEN_BINDING_UNSUPPORTED


async def test_the_default_authorizer_refuses_dpop_bound_tokens(tmp_path: Path, client_key: DpopKey) -> None:
    """Built without sender-constraint settings the Authorizer fails closed: cnf.jkt cannot be checked."""
    key = SigningKey(tmp_path)
    async with offline_client() as client:
        authorizer = Authorizer(
            BASE_PATH, PublicRoutes(BASE_PATH, ()), file_verifier(key, client), SETTINGS, FakeLookup(), 16_384
        )
        token = key.token(cnf={"jkt": client_key.thumbprint})
        request = http(BASE_PATH + OWN_SEARCH, headers={"authorization": f"Bearer {token}"})
        decision = await authorizer.authorize(request)
    assert decision.reason is Reason.TOKEN_BINDING_UNSUPPORTED
