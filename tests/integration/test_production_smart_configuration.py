"""``/.well-known/smart-configuration`` through Envoy: routed to smartgate's HTTP listener, no token
needed, open CORS, and the SMART App Launch 2.x fields taken from the IdP's OpenID discovery."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from smartgate.config.model import DEFAULT_CAPABILITIES
from tests.support.stack import GatedFhir, gated_fhir

pytestmark = pytest.mark.integration

PATH = "/.well-known/smart-configuration"


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatedFhir]:
    with gated_fhir(tmp_path_factory.mktemp("smart-configuration")) as running:
        yield running


@pytest.fixture(scope="module")
def response(gated: GatedFhir) -> httpx.Response:
    return gated.get(PATH, headers={"x-request-id": "smart-config-1"})


def test_served_by_smartgate_through_envoy_without_a_token(gated: GatedFhir, response: httpx.Response) -> None:
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["access-control-allow-origin"] == "*"
    assert "x-demo-received-path" not in response.headers  # not the FHIR server's own document
    assert response.json() == httpx.get(gated.smartgate.url(PATH)).json()
    logged = [entry for entry in gated.smartgate.decisions() if entry["request_id"] == "smart-config-1"]
    assert [(entry["outcome"], entry["reason"]) for entry in logged] == [("allow", "allowed_public_route")]


def test_required_smart_2_fields_come_from_the_idp_discovery(gated: GatedFhir, response: httpx.Response) -> None:
    document = response.json()
    discovery = gated.idp.discovery
    for field in (
        "issuer",
        "jwks_uri",
        "authorization_endpoint",
        "token_endpoint",
        "grant_types_supported",
        "token_endpoint_auth_methods_supported",
        "scopes_supported",
        "response_types_supported",
        "introspection_endpoint",
        "revocation_endpoint",
    ):
        assert document[field] == discovery[field], field
    assert document["capabilities"] == list(DEFAULT_CAPABILITIES)
    assert "sso-openid-connect" in document["capabilities"]  # which makes issuer and jwks_uri required


def test_pkce_methods_include_s256_and_never_plain(response: httpx.Response) -> None:
    assert response.json()["code_challenge_methods_supported"] == ["S256"]  # the IdP offered plain too


def test_an_invalid_token_does_not_matter_on_the_public_document(gated: GatedFhir) -> None:
    assert gated.get(PATH, "not-a-jwt").status_code == 200


def test_cors_preflight_is_answered_through_envoy(gated: GatedFhir) -> None:
    response = gated.client.options(
        gated.base_url + PATH, headers={"origin": "https://app.example", "access-control-request-method": "GET"}
    )
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == "*"
    assert "GET" in response.headers["access-control-allow-methods"]


# --- capabilities from the config ----------------------------------------------------------------------

CONFIGURED_CAPABILITIES = [
    "launch-standalone",
    "client-public",
    "context-standalone-patient",
    "permission-v2",
    "sso-openid-connect",
]


@pytest.fixture(scope="module")
def configured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatedFhir, httpx.Response]]:
    with gated_fhir(
        tmp_path_factory.mktemp("smart-configuration-capabilities"),
        smart_configuration={"capabilities": CONFIGURED_CAPABILITIES},
    ) as running:
        yield running, running.get(PATH)


def test_configured_capabilities_are_served_exactly(configured: tuple[GatedFhir, httpx.Response]) -> None:
    _, response = configured
    assert response.status_code == 200
    assert response.json()["capabilities"] == CONFIGURED_CAPABILITIES


def test_required_fields_stay_when_capabilities_are_configured(configured: tuple[GatedFhir, httpx.Response]) -> None:
    gated, response = configured
    document = response.json()
    discovery = gated.idp.discovery
    # SMART App Launch 2.x: required, or required by launch-standalone / sso-openid-connect
    for field in ("issuer", "jwks_uri", "authorization_endpoint", "token_endpoint", "grant_types_supported"):
        assert document[field] == discovery[field], field
    assert document["code_challenge_methods_supported"] == ["S256"]
    assert response.headers["content-type"] == "application/json"
    assert response.headers["access-control-allow-origin"] == "*"
