"""The config model is the one source of its keys and defaults; parse's hand-written steps (issue 14, item 5)."""

from __future__ import annotations

import copy
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import pytest

from smartgate.config.checks import Section, build
from smartgate.config.model import (
    AuditConfig,
    Config,
    JwksPolicy,
    ListenConfig,
    LookupConfig,
    ResponseVerificationConfig,
    TokenPolicy,
)
from smartgate.config.parse import ConfigError, parse_config
from smartgate.config.profiles import claim_names_for

MINIMAL: dict[str, Any] = {
    "fhir": {"base_url": "https://fhir.example.org/r4", "upstream_url": "http://fhir-upstream:8080/fhir"},
    "issuers": [{"issuer": "https://idp.example.org"}],
}
SECTIONS: list[tuple[str, Any]] = [
    ("listen", ListenConfig),
    ("tokens", TokenPolicy),
    ("jwks", JwksPolicy),
    ("audit", AuditConfig),
    ("response_verification", ResponseVerificationConfig),
]


def minimal(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(MINIMAL)
    data.update(changes)
    return data


def refusal(data: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return info.value


@pytest.mark.parametrize(("key", "model"), SECTIONS, ids=[key for key, _ in SECTIONS])
def test_an_absent_section_gets_the_models_defaults(key: str, model: Any) -> None:
    assert getattr(parse_config(minimal()), key) == model()


@pytest.mark.parametrize(("key", "model"), SECTIONS, ids=[key for key, _ in SECTIONS])
def test_every_field_of_a_section_is_a_key_the_file_may_set(key: str, model: Any) -> None:
    assert getattr(parse_config(minimal(**{key: asdict(model())})), key) == model()


def test_top_level_scalars_default_to_the_models_field_defaults() -> None:
    config = parse_config(minimal())
    for name in (
        "max_request_bytes",
        "decision_log",
        "mode",
        "workers",
        "shutdown_grace_seconds",
        "patient_closed_types",
        "public_routes",
        "operations",
    ):
        [item] = [f for f in fields(Config) if f.name == name]
        assert getattr(config, name) == item.default, name
    assert config.fhir.lookup == LookupConfig()


def test_a_key_read_by_a_parser_step_must_be_given_to_the_builder() -> None:
    with pytest.raises(TypeError, match=r"Config\.issuers"):
        build(Config, Section(minimal(), "", Config))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (minimal(mode="dryrun"), "mode: must be enforce or dry_run"),
        (minimal(response_verification={"mode": "on"}), "response_verification.mode: must be off, report or enforce"),
        (
            minimal(issuers=[{"issuer": "https://idp.example.org", "profile": "ping"}]),
            "issuers[0].profile: 'ping' is not one of generic, okta, auth0, keycloak, entra",
        ),
        (
            minimal(operations=[{"name": "$x", "permission": "w"}]),
            "operations[0].permission: must be one of c, r, u, d, s",
        ),
        (
            minimal(operations=[{"name": "$x", "levels": "server"}]),
            "operations[0].levels[0]: must be system, type or instance",
        ),
        (
            minimal(
                issuers=[
                    {
                        "issuer": "https://idp.example.org",
                        "introspection": {
                            "endpoint": "https://idp.example.org/i",
                            "client_id": "c",
                            "client_secret_env": "X",
                            "auth_method": "jwt",
                        },
                    }
                ]
            ),
            "issuers[0].introspection.auth_method: must be client_secret_basic or client_secret_post",
        ),
        (minimal(fhir={"base_url": "https://f.example/r4", "upstream_url": "http://f/r4", "lookup": []}), None),
    ],
)
def test_a_mode_outside_its_literal_is_refused_with_todays_message(data: dict[str, Any], message: str | None) -> None:
    if message is None:  # an empty section stands for its defaults, as before
        assert parse_config(data).fhir.lookup == LookupConfig()
    else:
        assert str(refusal(data)) == message


def test_profile_claims_are_defaults_that_claims_keys_override() -> None:
    data = minimal(issuers=[{"issuer": "https://idp.example.org", "profile": "okta", "claims": {"patient": "pid"}}])
    claims = parse_config(data).issuers[0].claims
    assert claims.patient == ("pid",)
    assert claims.scope == claim_names_for("okta").scope


def test_an_unknown_claims_key_is_named() -> None:
    data = minimal(issuers=[{"issuer": "https://idp.example.org", "claims": {"roles": ["r"]}}])
    assert refusal(data).key == "issuers[0].claims.roles"


def test_the_entra_profile_reads_dotted_scopes() -> None:
    data = minimal(issuers=[{"issuer": "https://idp.example.org", "profile": "entra"}])
    assert parse_config(data).issuers[0].dotted_scopes


def test_tls_files_must_exist(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x", encoding="utf-8")
    key = str(tmp_path / "key.pem")
    assert refusal(minimal(tls={"cert_file": str(cert), "key_file": key})).key == "tls.key_file"
    assert refusal(minimal(tls={"cert_file": str(cert), "key_file": str(cert), "client_ca_file": key})).key == (
        "tls.client_ca_file"
    )
    tls = parse_config(minimal(tls={"cert_file": str(cert), "key_file": str(cert)})).tls
    assert tls is not None and tls.client_ca_file is None
    assert parse_config(minimal(tls={})).tls is None


def test_smart_configuration_defaults_and_rules(tmp_path: Path) -> None:
    served = parse_config(minimal()).smart_configuration
    assert served is not None and served.issuer == "https://idp.example.org" and served.scopes_supported == ()
    assert parse_config(minimal(smart_configuration={"enabled": False})).smart_configuration is None
    assert refusal(minimal(smart_configuration={"issuer": "https://other.example"})).key == (
        "smart_configuration.issuer"
    )
    assert refusal(minimal(smart_configuration={"overrides": []})).key == "smart_configuration.overrides"
    jwks = tmp_path / "jwks.json"
    jwks.write_text('{"keys": []}', encoding="utf-8")
    local_issuer = minimal(issuers=[{"issuer": "urn:example", "jwks_file": str(jwks)}])
    assert parse_config(local_issuer).smart_configuration is None
