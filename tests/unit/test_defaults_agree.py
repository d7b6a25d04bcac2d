"""Every default the Helm chart shares with smartgate agrees with the config model (issue 14, item 5).

The config model (``smartgate.config.model``) holds each default once, and Envoy's rendering
(``envoy_glue.bootstrap.EnvoySettings``) takes its defaults from it. The chart cannot import Python: its
``values.yaml``, its ``values.schema.json`` (defaults and allowed values) and the fixed ports in
``templates/_helpers.tpl`` are compared here instead, so a change on either side fails until the other follows.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml

from smartgate.config.model import (
    DEFAULT_GRPC_PORT,
    DEFAULT_HTTP_PORT,
    SAFE_ALGORITHMS,
    AuthMethod,
    Config,
    IntrospectionConfig,
    Mode,
    SenderConstraint,
    VerificationMode,
)
from smartgate.config.parse import ConfigError, parse_config
from smartgate.config.profiles import PROFILE_NAMES
from smartgate.envoy_glue.bootstrap import EnvoySettings, FrontDoorLimits, render

CHART = Path(__file__).resolve().parents[2] / "charts" / "smartgate"

# The top-level values that become smartgate's config (templates/_helpers.tpl, "smartgate.config"); the rest
# of values.yaml is about Kubernetes objects.
CONFIG_SECTIONS = (
    "fhir",
    "issuers",
    "publicRoutes",
    "tokens",
    "dpop",
    "jwks",
    "limits",
    "mode",
    "responseVerification",
    "searchNarrowing",
    "compartment",
    "workers",
    "decisionLog",
    "audit",
    "smartConfiguration",
)
# Values that are maps in both places, compared whole.
MAP_VALUES = {"compartment.extraBindingParams"}
# Values whose config key is not the snake_case of their path.
RENAMED = {"limits.maxRequestBytes": "max_request_bytes"}
# Values that Envoy's rendering reads, not smartgate: values path -> EnvoySettings field.
ENVOY_ONLY = {"limits.authzTimeoutSeconds": "authz_timeout_seconds"}
# Values whose chart default deliberately differs from smartgate's own default: values path -> (chart default, why).
CHART_ONLY_DEFAULTS: dict[str, tuple[Any, str]] = {
    "responseVerification.mode": (
        "enforce",
        "the chart renders Envoy's ext_proc filter together with smartgate's mode, so responses are verified "
        "as smartgate assumes; smartgate alone cannot know that the Envoy in front of it verifies, so its own "
        "default stays off (README, Performance: the default mode)",
    ),
}
# Values left empty in the chart: required (the chart's schema makes the operator set them), or passed to
# smartgate only when set, so that the config model's default applies.
UNSET = {"fhir.baseUrl", "fhir.upstreamUrl", "issuers", "smartConfiguration.capabilities"}


def chart_values() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    return loaded


def chart_schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    return loaded


def default_config() -> Config:
    """The config smartgate runs with when only the required keys are set."""
    return parse_config(
        {
            "fhir": {"base_url": "https://fhir.example.org/r4", "upstream_url": "http://fhir:8080/fhir"},
            "issuers": [{"issuer": "https://idp.example.org"}],
        }
    )


def leaves(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, value) of every scalar or list in a values tree."""
    if isinstance(node, dict) and node and path not in MAP_VALUES:
        for name, child in node.items():
            yield from leaves(child, f"{path}.{name}" if path else name)
    else:
        yield path, node


def snake(path: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", path).lower()


def config_value(config: Any, dotted: str) -> Any:
    for name in dotted.split("."):
        config = getattr(config, name)
    return config


def comparable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: comparable(item) for key, item in value.items()}
    return tuple(value) if isinstance(value, list | tuple) else value


def shared_values() -> list[tuple[str, Any]]:
    values = chart_values()
    return [leaf for section in CONFIG_SECTIONS for leaf in leaves(values[section], section)]


# --- values.yaml -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "value"), shared_values(), ids=[path for path, _ in shared_values()])
def test_each_chart_value_defaults_to_what_smartgate_and_envoy_default_to(path: str, value: Any) -> None:
    if path in UNSET:
        assert value in ("", []), f"values.yaml {path}: expected empty, the config model's default applies"
    elif path in ENVOY_ONLY:
        assert value == getattr(EnvoySettings(), ENVOY_ONLY[path]), f"values.yaml {path} vs EnvoySettings"
    elif path in CHART_ONLY_DEFAULTS:
        assert value == CHART_ONLY_DEFAULTS[path][0], f"values.yaml {path}: the intended chart-only default"
        assert value != config_value(default_config(), RENAMED.get(path, snake(path))), (
            f"values.yaml {path} now agrees with smartgate's default: remove it from CHART_ONLY_DEFAULTS"
        )
    else:
        key = RENAMED.get(path, snake(path))
        assert comparable(value) == comparable(config_value(default_config(), key)), (
            f"values.yaml {path} = {value!r}, but smartgate's config {key} defaults to "
            f"{config_value(default_config(), key)!r}"
        )


def test_every_config_section_of_the_chart_is_compared() -> None:
    """A new values key must be mapped above (or be a chart-only key outside CONFIG_SECTIONS)."""
    config_keys = {item.name for item in fields(Config)}
    for path, _ in shared_values():
        if path not in UNSET and path not in ENVOY_ONLY:
            assert RENAMED.get(path, snake(path)).split(".")[0] in config_keys, path


def test_the_chart_passes_the_introspection_auth_method_default() -> None:
    helpers = (CHART / "templates" / "_helpers.tpl").read_text(encoding="utf-8")
    match = re.search(r'\.authMethod \| default "([a-z_]+)"', helpers)
    assert match is not None
    assert match.group(1) == IntrospectionConfig.auth_method


def test_the_chart_ports_are_smartgates_and_envoys_default_ports() -> None:
    helpers = (CHART / "templates" / "_helpers.tpl").read_text(encoding="utf-8")
    match = re.search(r'define "smartgate\.ports".*?\n\{\{- dict (.*?) \| toJson', helpers, re.S)
    assert match is not None
    words = match.group(1).split()
    ports = {name.strip('"'): int(port) for name, port in zip(words[::2], words[1::2], strict=True)}
    assert (ports["grpc"], ports["http"], ports["admin"]) == (
        DEFAULT_GRPC_PORT,
        DEFAULT_HTTP_PORT,
        EnvoySettings().admin_port,
    )


# --- values.schema.json ----------------------------------------------------------------------------------


def schema_nodes(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """(values path, schema) of every object property; array items are named ``path[]``."""
    if not isinstance(node, dict):
        return
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from schema_nodes(child, f"{path}.{name}" if path else name)
    if "items" in node:
        yield from schema_nodes(node["items"], f"{path}[]")


def test_the_schemas_defaults_are_the_values_defaults() -> None:
    values = dict(leaves(chart_values()))
    for path, node in schema_nodes(chart_schema()):
        if "default" in node and "[]" not in path:
            assert node["default"] == values[path], f"values.schema.json {path}"


ENUMS: list[tuple[str, tuple[str, ...]]] = [
    ("mode", get_args(Mode)),
    ("responseVerification.mode", get_args(VerificationMode)),
    ("issuers[].profile", PROFILE_NAMES),
    ("issuers[].algorithms[]", SAFE_ALGORITHMS),
    ("issuers[].introspection.authMethod", get_args(AuthMethod)),
    ("issuers[].senderConstraint", get_args(SenderConstraint)),
    ("dpop.algorithms[]", SAFE_ALGORITHMS),
]


@pytest.mark.parametrize(("path", "allowed"), ENUMS, ids=[path for path, _ in ENUMS])
def test_the_schema_allows_what_the_config_model_allows(path: str, allowed: tuple[str, ...]) -> None:
    nodes = dict(schema_nodes(chart_schema()))
    assert tuple(nodes[path]["enum"]) == allowed


@pytest.mark.parametrize(
    ("path", "key"),
    [("decisionLog", "decision_log"), ("audit.destination", "audit")],
    ids=["decisionLog", "audit.destination"],
)
def test_every_destination_the_schema_allows_is_one_smartgate_accepts(path: str, key: str) -> None:
    data: dict[str, Any] = {
        "fhir": {"base_url": "https://f.example/r4", "upstream_url": "http://f:8080/r4"},
        "issuers": [{"issuer": "https://idp.example.org"}],
    }
    for destination in dict(schema_nodes(chart_schema()))[path]["enum"]:
        data[key] = {"destination": destination} if key == "audit" else destination
        try:
            parse_config(data)
        except ConfigError as error:
            pytest.fail(f"values.schema.json allows {path}: {destination!r}, smartgate refuses it: {error}")


# --- Envoy's rendering -----------------------------------------------------------------------------------


def test_envoys_defaults_are_the_config_models() -> None:
    config, envoy = default_config(), EnvoySettings()
    assert envoy.max_request_bytes == config.max_request_bytes
    assert envoy.max_response_bytes == config.response_verification.max_body_bytes
    assert envoy.response_verification == config.response_verification.mode
    assert envoy.authz_workers == config.workers
    assert f"{envoy.authz_host}:{envoy.authz_port}" == config.listen.grpc
    assert envoy.smartgate_http_port == int(config.listen.http.rpartition(":")[2])


def test_the_default_envoy_rendering_carries_the_config_models_limits() -> None:
    rendered = render(EnvoySettings())
    [ext_authz] = [
        f
        for f in rendered["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
            "http_filters"
        ]
        if f["name"] == "envoy.filters.http.ext_authz"
    ]
    typed = ext_authz["typed_config"]
    assert typed["with_request_body"]["max_request_bytes"] == default_config().max_request_bytes
    assert typed["grpc_service"]["timeout"] == f"{chart_values()['limits']['authzTimeoutSeconds']:g}s"


# --- the front door (issue 17): Envoy's client-facing limits -------------------------------------------

# values path -> FrontDoorLimits field; every value under envoy besides the image, threads, log level
# and the optional mTLS listener is one of them.
FRONT_DOOR = {
    "envoy.maxConnections": "max_downstream_connections",
    "envoy.maxHeapBytes": "max_heap_bytes",
    "envoy.timeouts.requestHeadersSeconds": "request_headers_timeout_seconds",
    "envoy.timeouts.requestSeconds": "request_timeout_seconds",
    "envoy.timeouts.upstreamSeconds": "upstream_timeout_seconds",
    "envoy.timeouts.streamIdleSeconds": "stream_idle_timeout_seconds",
    "envoy.timeouts.connectionIdleSeconds": "connection_idle_timeout_seconds",
    "envoy.timeouts.maxConnectionDurationSeconds": "max_connection_duration_seconds",
    "envoy.http2.maxConcurrentStreams": "http2_max_concurrent_streams",
    "envoy.http2.initialStreamWindowBytes": "http2_initial_stream_window_bytes",
    "envoy.http2.initialConnectionWindowBytes": "http2_initial_connection_window_bytes",
    "envoy.xffNumTrustedHops": "xff_num_trusted_hops",
}
NOT_FRONT_DOOR = ("envoy.image.", "envoy.concurrency", "envoy.logLevel", "envoy.tls.")


@pytest.mark.parametrize(("path", "field"), FRONT_DOOR.items(), ids=list(FRONT_DOOR))
def test_each_front_door_value_defaults_to_what_envoys_rendering_defaults_to(path: str, field: str) -> None:
    values = dict(leaves(chart_values()))
    assert values[path] == getattr(FrontDoorLimits(), field), f"values.yaml {path} vs FrontDoorLimits.{field}"


def test_every_front_door_value_is_compared() -> None:
    envoy_values = [path for path, _ in leaves(chart_values()["envoy"], "envoy")]
    assert {path for path in envoy_values if not path.startswith(NOT_FRONT_DOOR)} == set(FRONT_DOOR)


def test_the_mtls_listener_is_off_by_default_in_the_chart_and_in_envoys_rendering() -> None:
    assert chart_values()["envoy"]["tls"]["enabled"] is False and EnvoySettings().tls is None


def _bytes(quantity: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    return int(quantity[:-2]) * units[quantity[-2:]] if quantity[-2:] in units else int(quantity)


def test_envoys_heap_limit_leaves_room_below_its_container_memory_limit() -> None:
    """Envoy refuses requests at 98 % of max_heap_bytes; the kernel kills it at the container limit. The
    heap limit must come first, with room for what tcmalloc does not count."""
    values = chart_values()
    container_limit = _bytes(values["resources"]["envoy"]["limits"]["memory"])
    assert values["envoy"]["maxHeapBytes"] <= 0.8 * container_limit
