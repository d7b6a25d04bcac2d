"""The shipped ``envoy/envoy.yaml`` is exactly what ``smartgate envoy-config`` renders by default, and it
carries the settings smartgate's decisions rely on (issue 2, item 9)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from smartgate.envoy_glue.bootstrap import EnvoySettings, render_yaml

SHIPPED = Path(__file__).resolve().parents[2] / "envoy" / "envoy.yaml"


def _shipped() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))
    return loaded


def _filters_named(node: Any, name: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        if node.get("name") == name:
            found.append(node)
        for value in node.values():
            found.extend(_filters_named(value, name))
    elif isinstance(node, list):
        for value in node:
            found.extend(_filters_named(value, name))
    return found


def test_the_shipped_envoy_config_is_the_default_rendering() -> None:
    assert _shipped() == yaml.safe_load(render_yaml(EnvoySettings())), "run `make envoy-config`"


def test_the_shipped_envoy_config_fails_closed() -> None:
    [ext_authz] = _filters_named(_shipped(), "envoy.filters.http.ext_authz")
    typed = ext_authz["typed_config"]
    assert typed["failure_mode_allow"] is False
    assert typed["status_on_error"]["code"] == "ServiceUnavailable"  # not 403: a client must not read it as a verdict
    assert typed["transport_api_version"] == "V3" and "grpc_service" in typed
    assert typed["with_request_body"]["pack_as_bytes"] is True
    assert typed["with_request_body"]["allow_partial_message"] is False


def test_the_shipped_envoy_config_normalises_paths_and_refuses_ambiguous_ones() -> None:
    [manager] = _filters_named(_shipped(), "envoy.filters.network.http_connection_manager")
    typed = manager["typed_config"]
    assert typed["normalize_path"] is True
    assert typed["merge_slashes"] is True
    assert typed["path_with_escaped_slashes_action"] == "REJECT_REQUEST"
    assert typed["common_http_protocol_options"]["headers_with_underscores_action"] == "REJECT_REQUEST"
