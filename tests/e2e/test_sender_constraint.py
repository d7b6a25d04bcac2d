"""Sender-constrained tokens issued by a real IdP (issue 17), through the default gateway's Envoy.

oidc-provider binds a token to the client's DPoP key when the code exchange carries a DPoP proof (RFC 9449
§5: ``cnf.jkt``), and to the client certificate when the exchange comes over its HTTPS port with one (RFC
8705 §3: ``cnf.x5t#S256``). smartgate serves such a token only with a fresh proof by that key, or over Envoy's
mTLS listener with that certificate. Every other use (no proof, a replayed proof, another key, another or
no certificate) is a 401 that never reaches the FHIR server: each request carries an ``x-e2e-probe`` id,
and the FHIR server lists the ids it saw.
"""

from __future__ import annotations

import base64
import hashlib
import json
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.support.dpop import DpopKey, b64url
from tests.support.tls import TlsFiles

from .checks import assert_denied, assert_ok
from .conftest import E2EStack
from .smart_auth import authorization_code_token

pytestmark = pytest.mark.e2e

SCOPE = "launch/patient patient/*.rs"


def claims_of(token: str) -> dict[str, Any]:
    """The JWT's payload, unverified: only to see what the IdP put in ``cnf``."""
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return decoded


class Probe:
    """Requests tagged with ``x-e2e-probe`` ids, so the test can ask the FHIR server which ones reached it."""

    def __init__(self, e2e: E2EStack) -> None:
        self.e2e = e2e
        self.sent: list[str] = []

    def get(
        self, url: str, authorization: str, *, proof: str | None = None, client: httpx.Client | None = None
    ) -> httpx.Response:
        probe = f"sender-{uuid.uuid4().hex}"
        self.sent.append(probe)
        headers = {"authorization": authorization, "x-e2e-probe": probe, "x-request-id": probe}
        if proof is not None:
            headers["dpop"] = proof
        return (client or self.e2e.client).get(url, headers=headers)

    def reached_fhir_server(self, response: httpx.Response) -> bool:
        return response.request.headers["x-e2e-probe"] in self.e2e.fhir.probes_seen()


@pytest.fixture
def probe(e2e: E2EStack) -> Probe:
    return Probe(e2e)


@pytest.fixture(scope="module")
def dpop_key() -> DpopKey:
    return DpopKey()


@pytest.fixture(scope="module")
def dpop_token(e2e: E2EStack, dpop_key: DpopKey) -> str:
    """Alice's token from the IdP's authorization-code flow, the code exchanged with a DPoP proof by ``dpop_key``."""
    return authorization_code_token(
        e2e.issuer, "smart-dpop", "alice", SCOPE, e2e.public_url, dpop_key=dpop_key
    ).access_token


@pytest.fixture(scope="module")
def certificate_token(e2e: E2EStack) -> str:
    return e2e.certificate_bound_token("alice", SCOPE)


def mtls_client(own_ca: Path, client: TlsFiles) -> httpx.Client:
    """An HTTPS client that trusts Envoy's server certificate and presents ``client``'s certificate."""
    context = ssl.create_default_context(cafile=str(own_ca))
    context.load_cert_chain(str(client.client_cert), str(client.client_key))
    return httpx.Client(verify=context, timeout=30)


@pytest.fixture
def owner_tls(e2e: E2EStack) -> Iterator[httpx.Client]:
    with mtls_client(e2e.certificates.own.ca, e2e.certificates.own) as client:
        yield client


@pytest.fixture
def thief_tls(e2e: E2EStack) -> Iterator[httpx.Client]:
    with mtls_client(e2e.certificates.own.ca, e2e.certificates.thief) as client:
        yield client


def thumbprint(certificate_file: Path) -> str:
    """RFC 8705 §3.1: base64url SHA-256 of the certificate's DER."""
    der = x509.load_pem_x509_certificate(certificate_file.read_bytes()).public_bytes(serialization.Encoding.DER)
    return b64url(hashlib.sha256(der).digest())


def patient_path(e2e: E2EStack) -> str:
    return f"/Patient/{e2e.data.patients['A'].patient_id}"


# --- DPoP (RFC 9449) -------------------------------------------------------------------------------------


def test_the_idp_binds_the_token_to_the_key_that_signed_the_token_request(dpop_token: str, dpop_key: DpopKey) -> None:
    assert claims_of(dpop_token)["cnf"] == {"jkt": dpop_key.thumbprint}


def test_a_dpop_bound_token_with_a_fresh_proof_reads_the_patients_data(
    e2e: E2EStack, probe: Probe, dpop_token: str, dpop_key: DpopKey
) -> None:
    path = patient_path(e2e)
    proof = dpop_key.proof("GET", e2e.public_url + path, dpop_token)
    response = probe.get(e2e.base_url + path, f"DPoP {dpop_token}", proof=proof)
    assert assert_ok(response)["id"] == e2e.data.patients["A"].patient_id
    assert probe.reached_fhir_server(response)


def test_a_dpop_bound_token_without_a_proof_is_401_and_never_forwarded(
    e2e: E2EStack, probe: Probe, dpop_token: str
) -> None:
    url = e2e.base_url + patient_path(e2e)
    without_proof = probe.get(url, f"DPoP {dpop_token}")
    as_bearer = probe.get(url, f"Bearer {dpop_token}")
    assert_denied(without_proof, 401, "dpop_proof_missing")
    challenge = without_proof.headers["www-authenticate"]
    assert challenge.startswith("DPoP ") and 'error="invalid_dpop_proof"' in challenge
    assert_denied(as_bearer, 401, "dpop_token_as_bearer")
    assert not probe.reached_fhir_server(without_proof) and not probe.reached_fhir_server(as_bearer)


def test_a_replayed_proof_is_401_and_never_forwarded(
    e2e: E2EStack, probe: Probe, dpop_token: str, dpop_key: DpopKey
) -> None:
    path = patient_path(e2e)
    proof = dpop_key.proof("GET", e2e.public_url + path, dpop_token)
    first = probe.get(e2e.base_url + path, f"DPoP {dpop_token}", proof=proof)
    replay = probe.get(e2e.base_url + path, f"DPoP {dpop_token}", proof=proof)
    assert_ok(first)
    assert_denied(replay, 401, "dpop_proof_replayed")
    assert probe.reached_fhir_server(first) and not probe.reached_fhir_server(replay)


def test_a_proof_by_another_key_is_401_and_never_forwarded(e2e: E2EStack, probe: Probe, dpop_token: str) -> None:
    path = patient_path(e2e)
    thief = DpopKey()
    response = probe.get(
        e2e.base_url + path, f"DPoP {dpop_token}", proof=thief.proof("GET", e2e.public_url + path, dpop_token)
    )
    assert_denied(response, 401, "dpop_binding_mismatch")
    assert not probe.reached_fhir_server(response)


# --- certificate-bound tokens (RFC 8705), over Envoy's mTLS listener ------------------------------------


def test_the_idp_binds_the_token_to_the_certificate_of_the_token_request(e2e: E2EStack, certificate_token: str) -> None:
    expected = {"x5t#S256": thumbprint(e2e.certificates.own.client_cert)}
    assert claims_of(certificate_token)["cnf"] == expected


def test_a_certificate_bound_token_with_its_certificate_reads_the_patients_data(
    e2e: E2EStack, probe: Probe, certificate_token: str, owner_tls: httpx.Client
) -> None:
    assert e2e.mtls_base_url is not None
    response = probe.get(e2e.mtls_base_url + patient_path(e2e), f"Bearer {certificate_token}", client=owner_tls)
    assert assert_ok(response)["id"] == e2e.data.patients["A"].patient_id
    assert probe.reached_fhir_server(response)


def test_a_certificate_bound_token_with_another_certificate_is_401_and_never_forwarded(
    e2e: E2EStack, probe: Probe, certificate_token: str, thief_tls: httpx.Client
) -> None:
    assert e2e.mtls_base_url is not None
    response = probe.get(e2e.mtls_base_url + patient_path(e2e), f"Bearer {certificate_token}", client=thief_tls)
    assert_denied(response, 401, "certificate_binding_mismatch")
    assert not probe.reached_fhir_server(response)


def test_a_certificate_bound_token_without_a_certificate_is_401_and_never_forwarded(
    e2e: E2EStack, probe: Probe, certificate_token: str
) -> None:
    """The plain listener: no TLS, so no client certificate reaches smartgate."""
    response = probe.get(e2e.base_url + patient_path(e2e), f"Bearer {certificate_token}")
    assert_denied(response, 401, "certificate_binding_missing")
    assert not probe.reached_fhir_server(response)
