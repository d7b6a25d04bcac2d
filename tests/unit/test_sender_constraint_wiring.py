"""Sender-constrained tokens at the edges: the DPoP scheme in the Authorization header, the peer certificate
from the CheckRequest, the config keys, the worker's wiring and the SMART configuration document."""

from __future__ import annotations

import copy
from typing import Any
from urllib.parse import quote

import pytest
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2

from smartgate.config.model import SAFE_ALGORITHMS, SmartConfigurationSettings
from smartgate.config.parse import ConfigError, parse_config
from smartgate.core.reasons import Reason, Refusal
from smartgate.envoy_glue.check_request import from_check_request
from smartgate.runtime.smart_configuration import SmartConfiguration
from smartgate.runtime.worker import build_components, dpop_algorithms, sender_constraints
from smartgate.tokens.bearer import Credentials, extract_credentials
from tests.support.dpop import ClientCertificate, DpopKey
from tests.unit.policy_helpers import offline_client

MINIMAL: dict[str, Any] = {
    "fhir": {"base_url": "https://fhir.example.org/r4", "upstream_url": "http://fhir-upstream:8080/fhir"},
    "issuers": [{"issuer": "https://idp.example.org"}],
}
TOKEN = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJ4In0.c2lnbmF0dXJl"


def config(**changes: Any) -> Any:
    data = copy.deepcopy(MINIMAL)
    data.update(changes)
    return parse_config(data)


# --- the Authorization header ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [f"DPoP {TOKEN}", f"dpop {TOKEN}", f"DPOP   {TOKEN} "])
def test_the_dpop_scheme_carries_the_token_when_dpop_is_on(value: str) -> None:
    assert extract_credentials({"authorization": value}, 1024, dpop=True) == Credentials(TOKEN, "dpop")


def test_the_bearer_scheme_is_kept_with_its_token() -> None:
    assert extract_credentials({"authorization": f"Bearer {TOKEN}"}, 1024, dpop=True) == Credentials(TOKEN, "bearer")


def test_the_dpop_scheme_is_another_scheme_when_dpop_is_off() -> None:
    result = extract_credentials({"authorization": f"DPoP {TOKEN}"}, 1024, dpop=False)
    assert isinstance(result, Refusal) and result.reason is Reason.AUTHENTICATION_SCHEME_UNSUPPORTED


@pytest.mark.parametrize("value", ["DPoP ", "DPoP a,b", f"DPoP {TOKEN}\n"])
def test_dpop_credentials_that_are_not_a_token_are_a_malformed_header(value: str) -> None:
    result = extract_credentials({"authorization": value}, 1024, dpop=True)
    assert isinstance(result, Refusal) and result.reason is Reason.AUTHORIZATION_HEADER_MALFORMED


# --- the peer certificate from the CheckRequest ------------------------------------------------------------


def check_request(certificate: str = "") -> external_auth_pb2.CheckRequest:
    http_request = attribute_context_pb2.AttributeContext.HttpRequest(method="GET", path="/r4/Patient/123")
    return external_auth_pb2.CheckRequest(
        attributes=attribute_context_pb2.AttributeContext(
            source=attribute_context_pb2.AttributeContext.Peer(certificate=certificate),
            request=attribute_context_pb2.AttributeContext.Request(http=http_request),
        )
    )


def test_the_peer_certificate_envoy_saw_is_read_url_decoded() -> None:
    """Envoy's ext_authz (include_peer_certificate) sends the client certificate as URL-encoded PEM."""
    pem = ClientCertificate().pem
    assert from_check_request(check_request(quote(pem, safe=""))).peer_certificate == pem


def test_no_peer_certificate_is_none() -> None:
    assert from_check_request(check_request()).peer_certificate is None


def test_a_client_header_cannot_pose_as_the_peer_certificate() -> None:
    request = external_auth_pb2.CheckRequest()
    request.attributes.request.http.headers["x-forwarded-client-cert"] = ClientCertificate().pem
    request.attributes.request.http.method = "GET"
    assert from_check_request(request).peer_certificate is None


# --- config ------------------------------------------------------------------------------------------------


def test_dpop_is_on_by_default_with_the_token_algorithm_allowlist() -> None:
    loaded = config()
    assert (
        loaded.dpop.enabled,
        loaded.dpop.algorithms,
        loaded.dpop.iat_window_seconds,
        loaded.dpop.replay_cache_size,
    ) == (True, SAFE_ALGORITHMS, 60, 100_000)
    assert loaded.issuers[0].sender_constraint == "optional"


def test_dpop_settings_and_sender_constraint_are_read() -> None:
    loaded = config(
        dpop={"algorithms": ["ES256"], "iat_window_seconds": 30, "replay_cache_size": 10},
        issuers=[{"issuer": "https://idp.example.org", "sender_constraint": "required"}],
    )
    assert (loaded.dpop.algorithms, loaded.dpop.iat_window_seconds, loaded.dpop.replay_cache_size) == (
        ("ES256",),
        30,
        10,
    )
    assert loaded.issuers[0].sender_constraint == "required"


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"dpop": {"algorithms": ["HS256"]}}, "dpop.algorithms[0]"),
        ({"dpop": {"algorithms": ["none"]}}, "dpop.algorithms[0]"),
        ({"dpop": {"iat_window_seconds": 0}}, "dpop.iat_window_seconds"),
        ({"dpop": {"replay_cache_size": -1}}, "dpop.replay_cache_size"),
        ({"dpop": {"enabled": "yes"}}, "dpop.enabled"),
        ({"dpop": {"nonce": True}}, "dpop.nonce"),
        (
            {"issuers": [{"issuer": "https://idp.example.org", "sender_constraint": "always"}]},
            "issuers[0].sender_constraint",
        ),
    ],
)
def test_bad_dpop_and_sender_constraint_values_are_named(changes: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        config(**changes)
    assert info.value.key == key


def test_the_worker_builds_the_rules_from_the_config() -> None:
    loaded = config(
        issuers=[
            {"issuer": "https://idp.example.org", "sender_constraint": "required"},
            {"issuer": "https://other.example.org"},
        ]
    )
    rules = sender_constraints(loaded)
    assert rules.dpop_enabled
    assert rules.public_url("/r4/Observation?patient=1") == "https://fhir.example.org/r4/Observation"
    assert not sender_constraints(config(dpop={"enabled": False})).dpop_enabled
    assert dpop_algorithms(config(dpop={"enabled": False})) == ()


# --- /.well-known/smart-configuration ----------------------------------------------------------------------

DISCOVERY = {"issuer": "https://idp.example.org", "token_endpoint": "https://idp.example.org/token"}


async def test_smart_configuration_advertises_the_dpop_algorithms_when_dpop_is_on() -> None:
    async with offline_client() as client:
        smart = SmartConfiguration(
            SmartConfigurationSettings(issuer="https://idp.example.org"),
            client,
            dpop_algs=dpop_algorithms(config(dpop={"algorithms": ["ES256", "PS256"]})),
        )
        document = smart.build(dict(DISCOVERY))
    assert document["dpop_signing_alg_values_supported"] == ["ES256", "PS256"]


async def test_smart_configuration_says_nothing_of_dpop_when_it_is_off() -> None:
    async with offline_client() as client:
        smart = SmartConfiguration(
            SmartConfigurationSettings(issuer="https://idp.example.org"),
            client,
            dpop_algs=dpop_algorithms(config(dpop={"enabled": False})),
        )
        document = smart.build(dict(DISCOVERY))
    assert "dpop_signing_alg_values_supported" not in document


# --- a reload keeps the replay cache -----------------------------------------------------------------------


async def test_a_reload_keeps_the_replay_cache_so_a_proof_stays_used() -> None:
    """SIGHUP builds fresh components; a proof accepted just before must still be a replay just after."""
    before = build_components(config())
    after = build_components(config(dpop={"replay_cache_size": 50}), replay_cache=before.replay_cache)
    key, url = DpopKey(), "https://fhir.example.org/r4/Observation"
    proof = key.proof("GET", url, TOKEN)
    old_dpop, new_dpop = before.authorizer.sender_constraints.dpop, after.authorizer.sender_constraints.dpop
    assert old_dpop is not None and new_dpop is not None
    accepted = old_dpop.check(proof, "GET", url, TOKEN, key.thumbprint)
    replayed = new_dpop.check(proof, "GET", url, TOKEN, key.thumbprint)
    await before.http_client.aclose()
    await after.http_client.aclose()
    assert accepted is None
    assert isinstance(replayed, Refusal) and replayed.reason is Reason.DPOP_PROOF_REPLAYED
    assert after.replay_cache is before.replay_cache
