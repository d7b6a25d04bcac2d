"""Render the Envoy configuration that puts smartgate in front of a FHIR server.

The shipped ``envoy/envoy.yaml`` is this rendering with its defaults; ``make run``,
the tests and the Helm chart render the same structure with their own addresses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import yaml

from smartgate.config.model import (
    DEFAULT_GRPC_PORT,
    DEFAULT_HTTP_PORT,
    DEFAULT_LISTEN_HOST,
    Config,
    ResponseVerificationConfig,
    VerificationMode,
)

_HTTP_FILTERS_PREFIX = "type.googleapis.com/envoy.extensions.filters.http"


@dataclass(frozen=True)
class EnvoySettings:
    """Where Envoy listens and what it forwards. A setting smartgate's config also holds defaults to the config
    model's value, so the two are never written apart."""

    listen_host: str = "0.0.0.0"
    listen_port: int = 10000
    admin_host: str = "127.0.0.1"
    admin_port: int = 9901
    authz_host: str = DEFAULT_LISTEN_HOST
    authz_port: int = DEFAULT_GRPC_PORT
    authz_workers: int = Config.workers  # smartgate workers listen on authz_port, authz_port + 1, ...
    # serves /.well-known/smart-configuration; None: the FHIR server does
    smartgate_http_port: int | None = DEFAULT_HTTP_PORT
    authz_timeout_seconds: float = 1.0
    upstream_url: str = "http://fhir-server:8080/fhir"
    base_path: str = "/fhir"
    max_request_bytes: int = Config.max_request_bytes
    response_verification: VerificationMode = ResponseVerificationConfig.mode  # ext_proc to smartgate
    max_response_bytes: int = ResponseVerificationConfig.max_body_bytes
    ready_port: int | None = None  # a listener serving only the admin's /ready (Kubernetes probes); admin stays local


def _cluster(name: str, host: str, ports: list[int], http2: bool) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STRICT_DNS",
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}
                for port in ports
            ]}],
        },
    }
    if http2:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return cluster


def _with_health_checks(cluster: dict[str, Any]) -> dict[str, Any]:
    """Active gRPC health checks (grpc.health.v1), so a worker that is down or not ready is skipped."""
    cluster["health_checks"] = [{
        "timeout": "1s", "interval": "2s", "no_traffic_interval": "2s",
        "unhealthy_threshold": 1, "healthy_threshold": 1, "grpc_health_check": {},
    }]
    return cluster


def _ext_authz(settings: EnvoySettings) -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.ext_authz",
        "typed_config": {
            "@type": f"{_HTTP_FILTERS_PREFIX}.ext_authz.v3.ExtAuthz",
            "transport_api_version": "V3",
            "grpc_service": {
                "envoy_grpc": {"cluster_name": "smartgate"},
                "timeout": f"{settings.authz_timeout_seconds:g}s",
            },
            # Fail closed: if smartgate cannot answer, the request is refused with 503, not 403.
            "failure_mode_allow": False,
            "status_on_error": {"code": "ServiceUnavailable"},
            "with_request_body": {
                "max_request_bytes": settings.max_request_bytes,
                "allow_partial_message": False,
                "pack_as_bytes": True,
            },
        },
    }


def _smart_configuration_route(settings: EnvoySettings) -> list[dict[str, Any]]:
    """SMART discovery is answered by smartgate's HTTP listener (built from the IdP's discovery)."""
    if not settings.smartgate_http_port:
        return []
    return [{
        "match": {"path": f"{settings.base_path}/.well-known/smart-configuration"},
        "route": {"cluster": "smartgate_http", "prefix_rewrite": "/.well-known/smart-configuration",
                  "timeout": "10s"},
    }]


def _ext_proc(settings: EnvoySettings) -> list[dict[str, Any]]:
    """Response verification: smartgate sees the buffered response of patient-context requests.
    The verified context comes from ext_authz's dynamic metadata, never from request headers."""
    if settings.response_verification == "off":
        return []
    return [{
        "name": "envoy.filters.http.ext_proc",
        "typed_config": {
            "@type": f"{_HTTP_FILTERS_PREFIX}.ext_proc.v3.ExternalProcessor",
            "grpc_service": {"envoy_grpc": {"cluster_name": "smartgate"}, "timeout": "5s"},
            "failure_mode_allow": settings.response_verification == "report",
            "allow_mode_override": True,
            "message_timeout": "5s",
            "processing_mode": {
                "request_header_mode": "SKIP", "request_body_mode": "NONE", "request_trailer_mode": "SKIP",
                "response_header_mode": "SEND", "response_body_mode": "BUFFERED", "response_trailer_mode": "SKIP",
            },
            "metadata_options": {"forwarding_namespaces": {"untyped": ["envoy.filters.http.ext_authz"]}},
        },
    }]


def render(settings: EnvoySettings) -> dict[str, Any]:
    upstream = urlsplit(settings.upstream_url)
    upstream_port = upstream.port or (443 if upstream.scheme == "https" else 80)
    upstream_path = upstream.path.rstrip("/")
    route: dict[str, Any] = {"cluster": "fhir_upstream", "timeout": "60s"}
    verifying = settings.response_verification != "off"
    if upstream_path != settings.base_path:
        route["prefix_rewrite"] = upstream_path + "/" if upstream_path else "/"
    upstream_cluster = _cluster("fhir_upstream", upstream.hostname or "localhost", [upstream_port], http2=False)
    if upstream.scheme == "https":
        upstream_cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": upstream.hostname,
            },
        }
    # A compressed response cannot be verified: ask the FHIR server for identity encoding.
    upstream_extras: dict[str, Any] = {"request_headers_to_remove": ["accept-encoding"]} if verifying else {}
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
                 ".HttpConnectionManager",
        "stat_prefix": "fhir_ingress",
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "REJECT_REQUEST",
        "common_http_protocol_options": {"headers_with_underscores_action": "REJECT_REQUEST"},
        "route_config": {
            "name": "fhir",
            "virtual_hosts": [{
                "name": "fhir",
                "domains": ["*"],
                "routes": [
                    *_smart_configuration_route(settings),
                    {"match": {"path": settings.base_path}, "route": dict(route), **upstream_extras},
                    {"match": {"prefix": settings.base_path + "/"}, "route": route, **upstream_extras},
                    {"match": {"prefix": "/"}, "direct_response": {"status": 404}},
                ],
            }],
        },
        "http_filters": [
            _ext_authz(settings),
            *_ext_proc(settings),
            {"name": "envoy.filters.http.router",
             "typed_config": {"@type": f"{_HTTP_FILTERS_PREFIX}.router.v3.Router"}},
        ],
    }
    return {
        "admin": {"address": {"socket_address": {"address": settings.admin_host,
                                                 "port_value": settings.admin_port}}},
        "static_resources": {
            "listeners": [{
                "name": "fhir_ingress",
                "address": {"socket_address": {"address": settings.listen_host,
                                               "port_value": settings.listen_port}},
                "per_connection_buffer_limit_bytes": max(
                    settings.max_request_bytes, settings.max_response_bytes if verifying else 0, 1_048_576),
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": hcm,
                }]}],
            }, *_ready_listener(settings)],
            "clusters": [
                _with_health_checks(_cluster("smartgate", settings.authz_host,
                                             [settings.authz_port + i for i in range(settings.authz_workers)],
                                             http2=True)),
                upstream_cluster,
                *([_cluster("smartgate_http", settings.authz_host, [settings.smartgate_http_port], http2=False)]
                  if settings.smartgate_http_port else []),
                *([_cluster("envoy_admin", settings.admin_host, [settings.admin_port], http2=False)]
                  if settings.ready_port is not None else []),
            ],
        },
    }


def _ready_listener(settings: EnvoySettings) -> list[dict[str, Any]]:
    """Kubernetes probes cannot reach an admin bound to loopback: this listener proxies GET /ready,
    and nothing else, to it."""
    if settings.ready_port is None:
        return []
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
                 ".HttpConnectionManager",
        "stat_prefix": "envoy_ready",
        "route_config": {"name": "ready", "virtual_hosts": [{
            "name": "ready", "domains": ["*"],
            "routes": [
                {"match": {"path": "/ready", "headers": [{"name": ":method", "string_match": {"exact": "GET"}}]},
                 "route": {"cluster": "envoy_admin", "timeout": "2s"}},
                {"match": {"prefix": "/"}, "direct_response": {"status": 404}},
            ],
        }]},
        "http_filters": [{"name": "envoy.filters.http.router",
                          "typed_config": {"@type": f"{_HTTP_FILTERS_PREFIX}.router.v3.Router"}}],
    }
    return [{
        "name": "envoy_ready",
        "address": {"socket_address": {"address": settings.listen_host, "port_value": settings.ready_port}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                        "typed_config": hcm}]}],
    }]


def render_yaml(settings: EnvoySettings) -> str:
    header = "# Generated by `smartgate envoy-config`; see service/smartgate/envoy_glue/bootstrap.py.\n"
    return header + yaml.safe_dump(render(settings), sort_keys=False)
