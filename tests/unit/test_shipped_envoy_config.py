"""The shipped ``envoy/envoy.yaml`` is exactly what ``smartgate envoy-config`` renders by default, and it
carries the settings smartgate's decisions rely on (issue 2, item 9)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from smartgate.envoy_glue.bootstrap import DownstreamTls, EnvoySettings, FrontDoorLimits, render_yaml

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


# --- the front door (issue 17) ---------------------------------------------------------------------


def test_the_shipped_envoy_config_caps_client_connections_in_the_overload_manager() -> None:
    monitors = {m["name"]: m["typed_config"] for m in _shipped()["overload_manager"]["resource_monitors"]}
    cap = monitors["envoy.resource_monitors.global_downstream_max_connections"]
    assert cap["max_active_downstream_connections"] == FrontDoorLimits().max_downstream_connections > 0
    assert monitors["envoy.resource_monitors.fixed_heap"]["max_heap_size_bytes"] == FrontDoorLimits().max_heap_bytes


def test_the_shipped_envoy_config_refuses_new_requests_before_the_heap_runs_out() -> None:
    actions = {a["name"]: a["triggers"][0] for a in _shipped()["overload_manager"]["actions"]}
    stop = actions["envoy.overload_actions.stop_accepting_requests"]
    assert stop["name"] == "envoy.resource_monitors.fixed_heap" and stop["threshold"]["value"] < 1


def test_the_shipped_envoy_config_times_out_clients_that_send_or_read_nothing() -> None:
    [manager] = _filters_named(_shipped(), "envoy.filters.network.http_connection_manager")[:1]
    typed = manager["typed_config"]
    assert typed["request_headers_timeout"] == "10s"
    assert typed["request_timeout"] == "60s"
    assert typed["stream_idle_timeout"] == "120s"
    assert typed["common_http_protocol_options"]["idle_timeout"] == "900s"
    assert typed["common_http_protocol_options"]["max_connection_duration"] == "3600s"


def test_the_shipped_envoy_config_limits_http2_streams_and_windows_as_envoys_edge_guidance_asks() -> None:
    [manager] = _filters_named(_shipped(), "envoy.filters.network.http_connection_manager")[:1]
    assert manager["typed_config"]["http2_protocol_options"] == {
        "max_concurrent_streams": 100,
        "initial_stream_window_size": 65_536,
        "initial_connection_window_size": 1_048_576,
    }


def test_the_shipped_envoy_config_takes_the_client_address_from_the_connection() -> None:
    [manager] = _filters_named(_shipped(), "envoy.filters.network.http_connection_manager")[:1]
    assert manager["typed_config"]["use_remote_address"] is True
    assert manager["typed_config"]["xff_num_trusted_hops"] == 0


def test_the_idle_timer_never_ends_a_request_the_upstream_timeout_allows() -> None:
    [manager] = _filters_named(_shipped(), "envoy.filters.network.http_connection_manager")[:1]
    typed = manager["typed_config"]
    route_timeouts = {
        route["route"]["timeout"]
        for host in typed["route_config"]["virtual_hosts"]
        for route in host["routes"]
        if "route" in route
    }
    idle = float(typed["stream_idle_timeout"].removesuffix("s"))
    assert route_timeouts and all(float(timeout.removesuffix("s")) <= idle for timeout in route_timeouts)
    with pytest.raises(ValueError, match="stream_idle_timeout_seconds"):
        FrontDoorLimits(upstream_timeout_seconds=300, stream_idle_timeout_seconds=120)


def test_the_shipped_envoy_config_passes_the_client_certificate_to_smartgate() -> None:
    [ext_authz] = _filters_named(_shipped(), "envoy.filters.http.ext_authz")
    assert ext_authz["typed_config"]["include_peer_certificate"] is True


def test_the_shipped_envoy_config_has_no_mtls_listener() -> None:
    names = [listener["name"] for listener in _shipped()["static_resources"]["listeners"]]
    assert names == ["fhir_ingress"]


TLS = DownstreamTls(
    port=10443, cert_path="/tls/server.pem", key_path="/tls/server.key", client_ca_path="/tls/clients-ca.pem"
)


def test_an_mtls_listener_serves_the_same_routes_and_filters_behind_client_certificates() -> None:
    rendered = yaml.safe_load(render_yaml(EnvoySettings(tls=TLS)))
    plain, mtls = rendered["static_resources"]["listeners"]
    assert mtls["name"] == "fhir_ingress_tls" and mtls["address"]["socket_address"]["port_value"] == 10443
    plain_hcm = plain["filter_chains"][0]["filters"][0]["typed_config"]
    mtls_hcm = mtls["filter_chains"][0]["filters"][0]["typed_config"]
    assert {**mtls_hcm, "stat_prefix": "fhir_ingress"} == plain_hcm
    context = mtls["filter_chains"][0]["transport_socket"]["typed_config"]
    assert context["require_client_certificate"] is True
    assert context["common_tls_context"]["validation_context"]["trusted_ca"] == {"filename": "/tls/clients-ca.pem"}


def test_the_mtls_rendering_is_plain_yaml_without_aliases() -> None:
    assert "&id" not in render_yaml(EnvoySettings(tls=TLS))
