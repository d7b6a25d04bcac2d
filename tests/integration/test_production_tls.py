"""TLS and mTLS on smartgate's gRPC listener, with Envoy's ``smartgate`` cluster speaking TLS (an
UpstreamTlsContext added to the rendered configuration): checks are authorized over TLS, and with
``client_ca_file`` set a client without a certificate is refused by smartgate."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.support.ports import free_port
from tests.support.stack import GatedFhir, gated_fhir, grpc_health, received_smart_headers, running_envoy
from tests.support.tls import TlsFiles, make_tls_files, with_upstream_tls

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("pki"))


def _credentials(tls: TlsFiles, client_cert: bool) -> grpc.ChannelCredentials:
    if not client_cert:
        return grpc.ssl_channel_credentials(root_certificates=tls.ca.read_bytes())
    return grpc.ssl_channel_credentials(
        root_certificates=tls.ca.read_bytes(),
        private_key=tls.client_key.read_bytes(),
        certificate_chain=tls.client_cert.read_bytes(),
    )


@pytest.fixture(scope="module")
def tls_only(tmp_path_factory: pytest.TempPathFactory, tls_files: TlsFiles) -> Iterator[GatedFhir]:
    with gated_fhir(
        tmp_path_factory.mktemp("tls"),
        tls={"cert_file": str(tls_files.server_cert), "key_file": str(tls_files.server_key)},
        edit_envoy=lambda config: with_upstream_tls(config, "smartgate", tls_files, client_cert=False),
    ) as gated:
        yield gated


@pytest.fixture(scope="module")
def mutual(tmp_path_factory: pytest.TempPathFactory, tls_files: TlsFiles) -> Iterator[GatedFhir]:
    with gated_fhir(
        tmp_path_factory.mktemp("mtls"),
        tls={
            "cert_file": str(tls_files.server_cert),
            "key_file": str(tls_files.server_key),
            "client_ca_file": str(tls_files.ca),
        },
        edit_envoy=lambda config: with_upstream_tls(config, "smartgate", tls_files, client_cert=True),
    ) as gated:
        yield gated


def test_checks_are_authorized_over_tls(tls_only: GatedFhir) -> None:
    allowed = tls_only.get("/Observation?patient=123", tls_only.token())
    assert allowed.status_code == 200
    assert received_smart_headers(allowed) == {
        "x-smart-patient": "123",
        "x-smart-scope": "launch/patient patient/*.rs",
        "x-smart-client-id": "app-1",
        "x-smart-subject": "user-1",
        "x-smart-issuer": tls_only.idp.issuer,
    }
    denied = tls_only.get("/Observation?patient=456", tls_only.token())
    assert denied.status_code == 403 and "compartment_other_patient" in denied.text
    reasons = [entry["reason"] for entry in tls_only.smartgate.decisions()]
    assert reasons == ["allowed_compartment_search", "compartment_other_patient"]
    assert tls_only.envoy.stat("cluster.smartgate.ssl.handshake") >= 1  # the checks went over TLS


def test_the_tls_listener_refuses_plaintext_and_serves_tls(tls_only: GatedFhir, tls_files: TlsFiles) -> None:
    assert grpc_health(tls_only.smartgate.grpc) == "UNAVAILABLE"
    assert grpc_health(tls_only.smartgate.grpc, credentials=_credentials(tls_files, client_cert=False)) == "SERVING"


def test_with_a_client_certificate_checks_are_authorized_over_mtls(mutual: GatedFhir) -> None:
    response = mutual.get("/Observation?patient=123", mutual.token())
    assert response.status_code == 200
    headers = received_smart_headers(response)
    assert headers is not None and headers["x-smart-patient"] == "123"
    assert mutual.envoy.stat("cluster.smartgate.ssl.handshake") >= 1


def test_a_client_without_a_certificate_is_refused(mutual: GatedFhir, tls_files: TlsFiles, tmp_path: Path) -> None:
    address = mutual.smartgate.grpc
    assert grpc_health(address, credentials=_credentials(tls_files, client_cert=False)) == "UNAVAILABLE"
    assert grpc_health(address, credentials=_credentials(tls_files, client_cert=True)) == "SERVING"

    # An Envoy whose smartgate cluster has TLS but no client certificate: fails closed with 503.
    config = with_upstream_tls(copy.deepcopy(mutual.envoy_config), "smartgate", tls_files, client_cert=False)
    listen_port = free_port()
    config["admin"]["address"]["socket_address"]["port_value"] = free_port()
    config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = listen_port
    before = len(mutual.smartgate.decisions())
    with running_envoy(config, tmp_path, name="envoy-no-client-cert") as envoy:
        response = mutual.client.get(
            f"http://127.0.0.1:{listen_port}/fhir/Observation?patient=123",
            headers={"authorization": f"Bearer {mutual.token()}"},
        )
        assert response.status_code == 503
        assert "x-demo-received-path" not in response.headers
        assert envoy.stat("cluster.smartgate.ssl.handshake") == 0
        assert envoy.stat("cluster.smartgate.upstream_cx_connect_fail") >= 1
    assert len(mutual.smartgate.decisions()) == before  # smartgate never saw the check
