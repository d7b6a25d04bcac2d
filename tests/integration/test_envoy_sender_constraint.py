"""Sender-constrained tokens through the real Envoy (issue 17): a DPoP-bound token (RFC 9449) reaches the
FHIR server only with a fresh proof by its key; a certificate-bound token (RFC 8705) only over the mTLS
listener with its client certificate (Envoy's ext_authz ``include_peer_certificate``). Every refusal is a
401 with its challenge, and the recording FHIR server shows that nothing refused reached it."""

from __future__ import annotations

import datetime
import ssl
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from smartgate.envoy_glue.bootstrap import DownstreamTls
from tests.support.dpop import DpopKey, b64url
from tests.support.fhir_upstream import RecordingUpstream
from tests.support.ports import free_port
from tests.support.stack import GatedFhir, gated_fhir
from tests.support.tls import TlsFiles, make_tls_files

pytestmark = pytest.mark.integration

SEARCH = "/Observation?patient=123"


@dataclass
class BoundStack:
    gate: GatedFhir
    upstream: RecordingUpstream
    tls_port: int
    tls: TlsFiles  # the server certificate, CA, and the client certificate the tokens are bound to
    other_client: tuple[Path, Path]  # another client's certificate and key, from another CA the listener trusts

    def send(
        self,
        path: str,
        token: str,
        *,
        scheme: str = "DPoP",
        proof: str | None = None,
        client: httpx.Client | None = None,
        base_url: str | None = None,
    ) -> tuple[httpx.Response, str]:
        """One request with a fresh request id; returns the response and that id."""
        request_id = uuid.uuid4().hex
        headers = {"authorization": f"{scheme} {token}", "x-request-id": request_id}
        if proof is not None:
            headers["dpop"] = proof
        response = (client or self.gate.client).get((base_url or self.gate.base_url) + path, headers=headers)
        return response, request_id

    def reached_fhir_server(self, request_id: str) -> bool:
        return any(entry.request_id == request_id for entry in self.upstream.received)

    def mtls_client(self, certificate: Path, key: Path) -> httpx.Client:
        context = ssl.create_default_context(cafile=str(self.tls.ca))
        context.load_cert_chain(str(certificate), str(key))
        return httpx.Client(verify=context, timeout=10)

    @property
    def mtls_base_url(self) -> str:
        return f"https://127.0.0.1:{self.tls_port}/fhir"


def thumbprint_of(pem_file: Path) -> str:
    certificate = x509.load_pem_x509_certificate(pem_file.read_bytes())
    digest = hashes.Hash(hashes.SHA256())
    digest.update(certificate.public_bytes(serialization.Encoding.DER))
    return b64url(digest.finalize())


def other_ca_and_client(directory: Path) -> tuple[bytes, Path, Path]:
    """A second CA (its own name) and a client certificate it issued: (CA PEM, certificate file, key file)."""
    now = datetime.datetime.now(datetime.UTC)

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    ca_key, client_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("other test CA"))
        .issuer_name(name("other test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    client = (
        x509.CertificateBuilder()
        .subject_name(name("thief"))
        .issuer_name(ca.subject)
        .public_key(client_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    certificate_file, key_file = directory / "thief.pem", directory / "thief.key"
    certificate_file.write_bytes(client.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        client_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return ca.public_bytes(serialization.Encoding.PEM), certificate_file, key_file


@pytest.fixture(scope="module")
def bound(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BoundStack]:
    workdir = tmp_path_factory.mktemp("sender-constraint")
    (workdir / "tls").mkdir()
    tls = make_tls_files(workdir / "tls")
    other_ca, other_certificate, other_key = other_ca_and_client(workdir)
    trusted = workdir / "trusted-cas.pem"
    trusted.write_bytes(tls.ca.read_bytes() + other_ca)
    tls_port = free_port()
    listener = DownstreamTls(
        port=tls_port, cert_path=str(tls.server_cert), key_path=str(tls.server_key), client_ca_path=str(trusted)
    )
    upstream = RecordingUpstream()
    try:
        with gated_fhir(workdir, upstream_url=upstream.url, envoy={"tls": listener}) as gate:
            yield BoundStack(gate, upstream, tls_port, tls, (other_certificate, other_key))
    finally:
        upstream.server.shutdown()
        upstream.server.server_close()


def dpop_challenge(response: httpx.Response) -> str:
    assert response.status_code == 401, response.text
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("DPoP "), challenge
    return challenge


def reason_of(response: httpx.Response) -> str:
    code: str = response.json()["issue"][0]["details"]["coding"][0]["code"]
    return code


# --- DPoP ------------------------------------------------------------------------------------------------


def test_a_dpop_bound_token_with_its_proof_reaches_the_fhir_server(bound: BoundStack) -> None:
    key = DpopKey()
    token = bound.gate.token(cnf={"jkt": key.thumbprint})
    proof = key.proof("GET", bound.gate.base_url + "/Observation", token)
    response, request_id = bound.send(SEARCH, token, proof=proof)
    assert response.status_code == 200, response.text
    assert bound.reached_fhir_server(request_id)


def test_a_dpop_bound_token_without_a_proof_is_401_with_the_dpop_challenge(bound: BoundStack) -> None:
    key = DpopKey()
    token = bound.gate.token(cnf={"jkt": key.thumbprint})
    response, request_id = bound.send(SEARCH, token)
    challenge = dpop_challenge(response)
    assert 'error="invalid_dpop_proof"' in challenge and 'algs="' in challenge and "ES256" in challenge
    assert reason_of(response) == "dpop_proof_missing"
    assert not bound.reached_fhir_server(request_id)


def test_a_dpop_bound_token_sent_as_a_bearer_token_is_401(bound: BoundStack) -> None:
    key = DpopKey()
    token = bound.gate.token(cnf={"jkt": key.thumbprint})
    response, request_id = bound.send(SEARCH, token, scheme="Bearer")
    dpop_challenge(response)
    assert reason_of(response) == "dpop_token_as_bearer"
    assert not bound.reached_fhir_server(request_id)


def test_a_replayed_proof_is_401_and_does_not_reach_the_fhir_server(bound: BoundStack) -> None:
    key = DpopKey()
    token = bound.gate.token(cnf={"jkt": key.thumbprint})
    proof = key.proof("GET", bound.gate.base_url + "/Observation", token)
    first, first_id = bound.send(SEARCH, token, proof=proof)
    replay, replay_id = bound.send(SEARCH, token, proof=proof)
    assert first.status_code == 200
    assert 'error="invalid_dpop_proof"' in dpop_challenge(replay)
    assert reason_of(replay) == "dpop_proof_replayed"
    assert bound.reached_fhir_server(first_id) and not bound.reached_fhir_server(replay_id)


def test_a_proof_by_another_key_is_401(bound: BoundStack) -> None:
    token = bound.gate.token(cnf={"jkt": DpopKey().thumbprint})
    thief = DpopKey()
    response, request_id = bound.send(
        SEARCH, token, proof=thief.proof("GET", bound.gate.base_url + "/Observation", token)
    )
    dpop_challenge(response)
    assert reason_of(response) == "dpop_binding_mismatch"
    assert not bound.reached_fhir_server(request_id)


# --- certificate-bound tokens ----------------------------------------------------------------------------


def test_a_certificate_bound_token_with_its_client_certificate_reaches_the_fhir_server(bound: BoundStack) -> None:
    token = bound.gate.token(cnf={"x5t#S256": thumbprint_of(bound.tls.client_cert)})
    with bound.mtls_client(bound.tls.client_cert, bound.tls.client_key) as client:
        response, request_id = bound.send(SEARCH, token, scheme="Bearer", client=client, base_url=bound.mtls_base_url)
    assert response.status_code == 200, response.text
    assert bound.reached_fhir_server(request_id)


def test_a_certificate_bound_token_with_another_client_certificate_is_401(bound: BoundStack) -> None:
    token = bound.gate.token(cnf={"x5t#S256": thumbprint_of(bound.tls.client_cert)})
    with bound.mtls_client(*bound.other_client) as client:
        response, request_id = bound.send(SEARCH, token, scheme="Bearer", client=client, base_url=bound.mtls_base_url)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer ")
    assert reason_of(response) == "certificate_binding_mismatch"
    assert not bound.reached_fhir_server(request_id)


def test_a_certificate_bound_token_without_a_client_certificate_is_401(bound: BoundStack) -> None:
    token = bound.gate.token(cnf={"x5t#S256": thumbprint_of(bound.tls.client_cert)})
    response, request_id = bound.send(SEARCH, token, scheme="Bearer")  # the plain listener: no certificate
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert reason_of(response) == "certificate_binding_missing"
    assert not bound.reached_fhir_server(request_id)


def test_smart_configuration_advertises_the_dpop_algorithms(bound: BoundStack) -> None:
    response = bound.gate.client.get(bound.gate.base_url + "/.well-known/smart-configuration")
    assert response.status_code == 200, response.text
    assert "ES256" in response.json()["dpop_signing_alg_values_supported"]
