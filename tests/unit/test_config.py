"""Configuration: defaults, and every bad key failing with its dotted path."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from smartgate.cli import main
from smartgate.config.model import (
    DEFAULT_PATIENT_CLOSED_TYPES,
    SAFE_ALGORITHMS,
    HeaderNames,
)
from smartgate.config.parse import ConfigError, load_config, parse_config

MINIMAL: dict[str, Any] = {
    "fhir": {"base_url": "https://fhir.example.org/r4", "upstream_url": "http://fhir-upstream:8080/fhir"},
    "issuers": [{"issuer": "https://idp.example.org"}],
}


def minimal(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(MINIMAL)
    data.update(changes)
    return data


def error_key(data: Any) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return info.value.key


# --- defaults ---------------------------------------------------------------------------------------


def test_minimal_config_loads_with_defaults() -> None:
    config = parse_config(minimal())
    assert config.fhir.base_url == "https://fhir.example.org/r4"
    assert config.fhir.base_path == "/r4"
    (issuer,) = config.issuers
    assert issuer.audiences == ("https://fhir.example.org/r4",)
    assert issuer.algorithms == SAFE_ALGORITHMS
    assert issuer.jwks_uri is None and issuer.jwks_file is None
    assert config.tokens.clock_skew_seconds == 60
    assert config.listen.grpc == "127.0.0.1:9191"
    assert config.headers == HeaderNames()
    assert config.public_routes == ()
    assert config.realm == "https://fhir.example.org/r4"
    assert config.patient_closed_types == DEFAULT_PATIENT_CLOSED_TYPES
    assert config.fhir.lookup.cache_ttl_seconds == 30.0


def test_audience_default_follows_a_normalised_base_url() -> None:
    data = minimal()
    data["fhir"]["base_url"] = "https://fhir.example.org/r4/"
    config = parse_config(data)
    assert config.fhir.base_url == "https://fhir.example.org/r4"
    assert config.issuers[0].audiences == ("https://fhir.example.org/r4",)


def test_explicit_values_are_kept() -> None:
    data = minimal(tokens={"clock_skew_seconds": 0}, listen={"grpc": "0.0.0.0:7000"})
    data["issuers"][0].update({"audiences": ["aud-1", "aud-2"], "algorithms": ["ES256"]})
    config = parse_config(data)
    assert config.tokens.clock_skew_seconds == 0
    assert config.listen.grpc == "0.0.0.0:7000"
    assert config.issuers[0].audiences == ("aud-1", "aud-2")
    assert config.issuers[0].algorithms == ("ES256",)


def test_public_routes_are_normalised() -> None:
    config = parse_config(minimal(public_routes=[{"path": "/Practitioner/", "methods": ["get"], "prefix": True}]))
    (route,) = config.public_routes
    assert (route.path, route.methods, route.prefix) == ("/Practitioner", frozenset({"GET"}), True)


def test_jwks_file_issuer_needs_no_http_issuer(tmp_path: Path) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text('{"keys": []}', encoding="utf-8")
    config = parse_config(minimal(issuers=[{"issuer": "urn:example:issuer", "jwks_file": str(jwks)}]))
    assert config.issuers[0].jwks_file == str(jwks)


# --- errors, each with its dotted key ---------------------------------------------------------------------


def test_hmac_algorithm_is_refused_at_its_index() -> None:
    data = minimal()
    data["issuers"][0]["algorithms"] = ["HS256"]
    assert error_key(data) == "issuers[0].algorithms[0]"


def test_later_bad_algorithm_is_named_by_its_index() -> None:
    data = minimal()
    data["issuers"][0]["algorithms"] = ["ES256", "none"]
    assert error_key(data) == "issuers[0].algorithms[1]"


def test_missing_base_url() -> None:
    data = minimal()
    del data["fhir"]["base_url"]
    assert error_key(data) == "fhir.base_url"


def test_missing_fhir_section() -> None:
    data = minimal()
    del data["fhir"]
    assert error_key(data) == "fhir"


def test_missing_issuers() -> None:
    data = minimal()
    del data["issuers"]
    assert error_key(data) == "issuers"


def test_empty_issuers() -> None:
    assert error_key(minimal(issuers=[])) == "issuers"


@pytest.mark.parametrize("url", ["fhir.example.org/r4", "ftp://fhir.example.org", "https://", "https://x/r4?a=1"])
def test_base_url_must_be_an_absolute_http_url(url: str) -> None:
    data = minimal()
    data["fhir"]["base_url"] = url
    assert error_key(data) == "fhir.base_url"


def test_unknown_top_level_key() -> None:
    assert error_key(minimal(bogus=1)) == "bogus"


def test_unknown_nested_key() -> None:
    data = minimal()
    data["fhir"]["lookup"] = {"timeout": 1}
    assert error_key(data) == "fhir.lookup.timeout"


def test_unknown_issuer_key() -> None:
    data = minimal()
    data["issuers"][0]["audience"] = "x"
    assert error_key(data) == "issuers[0].audience"


@pytest.mark.parametrize("address", ["9191", "localhost", ":9191", "localhost:0", "localhost:65536", "host:port"])
def test_listen_grpc_must_be_host_port(address: str) -> None:
    assert error_key(minimal(listen={"grpc": address})) == "listen.grpc"


def test_jwks_uri_and_jwks_file_both_set(tmp_path: Path) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text('{"keys": []}', encoding="utf-8")
    data = minimal()
    data["issuers"][0].update({"jwks_uri": "https://idp.example.org/jwks", "jwks_file": str(jwks)})
    assert error_key(data) == "issuers[0].jwks_file"


def test_missing_jwks_file(tmp_path: Path) -> None:
    data = minimal()
    data["issuers"][0]["jwks_file"] = str(tmp_path / "absent.json")
    assert error_key(data) == "issuers[0].jwks_file"


def test_issuer_without_keys_must_be_an_http_url() -> None:
    assert error_key(minimal(issuers=[{"issuer": "urn:example"}])) == "issuers[0].issuer"


def test_duplicate_issuer() -> None:
    data = minimal(issuers=[{"issuer": "https://idp.example.org"}, {"issuer": "https://idp.example.org"}])
    assert error_key(data) == "issuers[1].issuer"


@pytest.mark.parametrize("name", ["x smart", "x_smart", "-x", "x:smart", "", ":path", "x-smart\n"])
def test_bad_header_name(name: str) -> None:
    assert error_key(minimal(headers={"patient": name})) == "headers.patient"


def test_header_names_must_be_distinct() -> None:
    assert error_key(minimal(headers={"patient": "x-smart-scope"})) == "headers"


def test_bad_lookup_header_name() -> None:
    data = minimal()
    data["fhir"]["lookup"] = {"headers": {"bad header": "x"}}
    assert error_key(data) == "fhir.lookup.headers.bad header"


@pytest.mark.parametrize("path", ["Practitioner", "metadata/", "/x?y=1", "/x%2F"])
def test_public_route_path_must_start_with_a_slash_and_hold_no_query(path: str) -> None:
    assert error_key(minimal(public_routes=[{"path": path}])) == "public_routes[0].path"


def test_public_route_method_must_be_http() -> None:
    assert error_key(minimal(public_routes=[{"path": "/x", "methods": ["GET", "FETCH"]}])) == (
        "public_routes[0].methods[1]"
    )


def test_unknown_closed_type() -> None:
    assert error_key(minimal(patient_closed_types=["Binary", "Nope"])) == "patient_closed_types[1]"


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("tokens", "clock_skew_seconds", -1),
        ("tokens", "clock_skew_seconds", "60"),
        ("tokens", "clock_skew_seconds", True),
        ("tokens", "max_token_bytes", 0),
        ("jwks", "fetch_timeout_seconds", 0),
    ],
)
def test_numbers_are_validated(section: str, key: str, value: Any) -> None:
    assert error_key(minimal(**{section: {key: value}})) == f"{section}.{key}"


def test_operation_rules_are_parsed() -> None:
    config = parse_config(minimal(operations=[{"name": "$validate", "levels": ["type", "instance"]}]))
    (rule,) = config.operations
    assert (rule.name, rule.levels, rule.permission, rule.patient_context) == (
        "$validate",
        frozenset({"type", "instance"}),
        "r",
        False,
    )


@pytest.mark.parametrize(
    ("rule", "key"),
    [
        ({"name": "validate"}, "operations[0].name"),
        ({"name": "$validate", "levels": ["type", "resource"]}, "operations[0].levels[1]"),
        ({"name": "$validate", "permission": "rs"}, "operations[0].permission"),
        ({"name": "$validate", "scope": "x"}, "operations[0].scope"),
    ],
)
def test_bad_operation_rule(rule: dict[str, Any], key: str) -> None:
    assert error_key(minimal(operations=[rule])) == key


def test_relative_decision_log_path() -> None:
    assert error_key(minimal(decision_log="decisions.jsonl")) == "decision_log"


def test_root_must_be_a_mapping() -> None:
    assert error_key(None) == "(root)"
    assert error_key(["fhir"]) == "(root)"


def test_config_error_message_names_the_key() -> None:
    data = minimal()
    data["issuers"][0]["algorithms"] = ["HS256"]
    with pytest.raises(ConfigError, match=r"^issuers\[0\]\.algorithms\[0\]: "):
        parse_config(data)


# --- files and the CLI -----------------------------------------------------------------------------------


def write(tmp_path: Path, data: Any, name: str = "smartgate.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_load_config_reads_yaml(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, minimal())).fhir.base_path == "/r4"


def test_load_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.yaml")
    assert info.value.key == "(file)"


def test_load_config_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("fhir: [unclosed", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "(file)"


def test_check_config_accepts_a_valid_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(write(tmp_path, minimal()))]) == 0
    assert "ok: 1 issuer(s)" in capsys.readouterr().out


def test_check_config_rejects_a_bad_file_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = minimal()
    data["issuers"][0]["algorithms"] = ["HS256"]
    assert main(["check-config", str(write(tmp_path, data))]) == 2
    assert "issuers[0].algorithms[0]" in capsys.readouterr().err


def test_check_config_rejects_a_missing_file(tmp_path: Path) -> None:
    assert main(["check-config", str(tmp_path / "absent.yaml")]) == 2
