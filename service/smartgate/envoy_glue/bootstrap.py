"""Render the Envoy configuration that puts smartgate in front of a FHIR server.

The shipped ``envoy/envoy.yaml`` is this rendering with its defaults; ``make run``,
the tests and the Helm chart render the same structure with their own addresses.
"""

from __future__ import annotations

import copy
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
    worker_socket_path,
)

_HTTP_FILTERS_PREFIX = "type.googleapis.com/envoy.extensions.filters.http"


DOWNSTREAM_TLS_CONTEXT = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"


@dataclass(frozen=True)
class FrontDoorLimits:
    """What one client may hold of Envoy's listener (Envoy's "Configuring Envoy as an edge proxy").
    The defaults suit a FHIR API: searches and ``$everything`` get a minute, and no client can hold a
    connection, a stream or the pod's memory without sending or reading anything."""

    # Open client connections, all listeners together; one more is closed at once (overload manager).
    max_downstream_connections: int = 1000
    # Envoy's heap (tcmalloc) limit: at 95 % it shrinks its heap, at 98 % it answers new requests with 503.
    # Keep it below the container's memory limit (the chart's is 256 MiB).
    max_heap_bytes: int = 201_326_592
    # The whole request header must arrive within this: a client trickling its headers is cut (408).
    request_headers_timeout_seconds: float = 10
    # The whole request (headers and body, up to max_request_bytes) must arrive within this.
    request_timeout_seconds: float = 60
    # The FHIR server's complete response must arrive within this (route timeout; then 504).
    upstream_timeout_seconds: float = 60
    # A stream with no bytes either way is reset after this; longer than upstream_timeout_seconds,
    # so a slow search is ended by the upstream timeout, never by this one.
    stream_idle_timeout_seconds: float = 120
    # A connection with no stream is closed after this: longer than load balancers' own idle timeouts
    # (AWS ALB 60 s, Azure 4 min, Google Cloud 10 min), so the balancer closes first, never Envoy under it.
    connection_idle_timeout_seconds: float = 900
    # A connection is drained after this, so long-lived HTTP/2 connections rebalance after a scale-out.
    max_connection_duration_seconds: float = 3600
    # HTTP/2 limits per connection (Envoy's edge guidance: 100 streams, 64 KiB stream, 1 MiB connection window).
    http2_max_concurrent_streams: int = 100
    http2_initial_stream_window_bytes: int = 65_536
    http2_initial_connection_window_bytes: int = 1_048_576
    # x-forwarded-for hops to trust in front of Envoy (use_remote_address is always on): 0 when clients
    # connect to Envoy directly or through a TCP load balancer, 1 behind one HTTP proxy (an ingress
    # controller) that appends the client's address. smartgate decides nothing on the client's address.
    xff_num_trusted_hops: int = 0

    def __post_init__(self) -> None:
        if self.stream_idle_timeout_seconds < self.upstream_timeout_seconds:
            raise ValueError(
                "stream_idle_timeout_seconds must be at least upstream_timeout_seconds, "
                "or slow FHIR searches are cut by the idle timer"
            )
        if self.request_timeout_seconds < self.request_headers_timeout_seconds:
            raise ValueError("request_timeout_seconds must be at least request_headers_timeout_seconds")


@dataclass(frozen=True)
class DownstreamTls:
    """An mTLS listener beside the plain one: Envoy passes the client certificate it verified to smartgate
    (ext_authz ``include_peer_certificate``), which checks it against certificate-bound tokens."""

    port: int
    cert_path: str
    key_path: str
    client_ca_path: str
    # False: a client without a certificate is served too (bearer and DPoP tokens); a certificate-bound
    # token still needs one.
    require_client_certificate: bool = True


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
    # smartgate's gRPC listener as a Unix domain socket (worker 0's path; worker i > 0 on path.i) instead of
    # authz_host:authz_port; ext_authz and ext_proc both use it. smartgate's HTTP listener stays on TCP.
    authz_socket: str | None = None
    # serves /.well-known/smart-configuration; None: the FHIR server does
    smartgate_http_port: int | None = DEFAULT_HTTP_PORT
    authz_timeout_seconds: float = 1.0
    upstream_url: str = "http://fhir-server:8080/fhir"
    base_path: str = "/fhir"
    max_request_bytes: int = Config.max_request_bytes
    response_verification: VerificationMode = ResponseVerificationConfig.mode  # ext_proc to smartgate
    max_response_bytes: int = ResponseVerificationConfig.max_body_bytes
    ready_port: int | None = None  # a listener serving only the admin's /ready (Kubernetes probes); admin stays local
    front_door: FrontDoorLimits = FrontDoorLimits()
    tls: DownstreamTls | None = None  # a second, mTLS listener (certificate-bound tokens, RFC 8705)


def _cluster(name: str, host: str, ports: list[int], http2: bool) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STRICT_DNS",
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}
                        for port in ports
                    ]
                }
            ],
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


def _pipe_cluster(name: str, paths: list[str]) -> dict[str, Any]:
    """An HTTP/2 cluster of Unix domain sockets (STATIC: there is no name to resolve)."""
    cluster = _cluster(name, "unused", [], http2=True)
    cluster["type"] = "STATIC"
    cluster["load_assignment"]["endpoints"] = [
        {"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": path}}}} for path in paths]}
    ]
    return cluster


def _smartgate_cluster(settings: EnvoySettings) -> dict[str, Any]:
    """The cluster ext_authz and ext_proc call: one endpoint per smartgate worker, on TCP or a Unix socket."""
    if settings.authz_socket is not None:
        socket = settings.authz_socket
        cluster = _pipe_cluster("smartgate", [worker_socket_path(socket, i) for i in range(settings.authz_workers)])
    else:
        cluster = _cluster(
            "smartgate",
            settings.authz_host,
            [settings.authz_port + i for i in range(settings.authz_workers)],
            http2=True,
        )
    return _with_health_checks(cluster)


def _with_health_checks(cluster: dict[str, Any]) -> dict[str, Any]:
    """Active gRPC health checks (grpc.health.v1), so a worker that is down or not ready is skipped."""
    cluster["health_checks"] = [
        {
            "timeout": "1s",
            "interval": "2s",
            "no_traffic_interval": "2s",
            "unhealthy_threshold": 1,
            "healthy_threshold": 1,
            "grpc_health_check": {},
        }
    ]
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
            # The TLS client certificate, when there is one, for certificate-bound tokens (RFC 8705).
            "include_peer_certificate": True,
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
    return [
        {
            "match": {"path": f"{settings.base_path}/.well-known/smart-configuration"},
            "route": {
                "cluster": "smartgate_http",
                "prefix_rewrite": "/.well-known/smart-configuration",
                "timeout": "10s",
            },
        }
    ]


def _ext_proc(settings: EnvoySettings) -> list[dict[str, Any]]:
    """Response verification: smartgate sees the buffered response of patient-context requests.
    The verified context comes from ext_authz's dynamic metadata, never from request headers.

    ``enforce`` buffers the whole body (``BUFFERED``): a body past Envoy's buffer limit is refused by Envoy
    (500), one past ``max_body_bytes`` by smartgate (403), never shown unchecked. ``report`` must never
    break traffic: ``BUFFERED_PARTIAL`` hands smartgate at most the buffer limit's worth and then lets the
    rest through, smartgate counts the unchecked response as skipped (``too_large``), and
    ``failure_mode_allow`` lets responses through when smartgate cannot answer."""
    if settings.response_verification == "off":
        return []
    body_mode = "BUFFERED" if settings.response_verification == "enforce" else "BUFFERED_PARTIAL"
    return [
        {
            "name": "envoy.filters.http.ext_proc",
            "typed_config": {
                "@type": f"{_HTTP_FILTERS_PREFIX}.ext_proc.v3.ExternalProcessor",
                "grpc_service": {"envoy_grpc": {"cluster_name": "smartgate"}, "timeout": "5s"},
                "failure_mode_allow": settings.response_verification == "report",
                "allow_mode_override": True,
                "message_timeout": "5s",
                "processing_mode": {
                    "request_header_mode": "SKIP",
                    "request_body_mode": "NONE",
                    "request_trailer_mode": "SKIP",
                    "response_header_mode": "SEND",
                    "response_body_mode": body_mode,
                    "response_trailer_mode": "SKIP",
                },
                "metadata_options": {"forwarding_namespaces": {"untyped": ["envoy.filters.http.ext_authz"]}},
            },
        }
    ]


def render(settings: EnvoySettings) -> dict[str, Any]:
    upstream = urlsplit(settings.upstream_url)
    upstream_port = upstream.port or (443 if upstream.scheme == "https" else 80)
    upstream_path = upstream.path.rstrip("/")
    limits = settings.front_door
    route: dict[str, Any] = {"cluster": "fhir_upstream", "timeout": _seconds(limits.upstream_timeout_seconds)}
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
        **_front_door_connection_manager(limits),
        "route_config": {
            "name": "fhir",
            "virtual_hosts": [
                {
                    "name": "fhir",
                    "domains": ["*"],
                    "routes": [
                        *_smart_configuration_route(settings),
                        {"match": {"path": settings.base_path}, "route": dict(route), **upstream_extras},
                        {"match": {"prefix": settings.base_path + "/"}, "route": route, **upstream_extras},
                        {"match": {"prefix": "/"}, "direct_response": {"status": 404}},
                    ],
                }
            ],
        },
        "http_filters": [
            _ext_authz(settings),
            *_ext_proc(settings),
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": f"{_HTTP_FILTERS_PREFIX}.router.v3.Router"},
            },
        ],
    }
    buffer_limit = max(settings.max_request_bytes, settings.max_response_bytes if verifying else 0, 1_048_576)
    return {
        "admin": {
            "address": {"socket_address": {"address": settings.admin_host, "port_value": settings.admin_port}},
            "ignore_global_conn_limit": True,
        },
        "overload_manager": _overload_manager(limits),
        "static_resources": {
            "listeners": [
                {
                    "name": "fhir_ingress",
                    "address": {
                        "socket_address": {"address": settings.listen_host, "port_value": settings.listen_port}
                    },
                    "per_connection_buffer_limit_bytes": buffer_limit,
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                },
                *_tls_listener(settings, hcm, buffer_limit),
                *_ready_listener(settings),
            ],
            "clusters": [
                _smartgate_cluster(settings),
                upstream_cluster,
                *(
                    [_cluster("smartgate_http", settings.authz_host, [settings.smartgate_http_port], http2=False)]
                    if settings.smartgate_http_port
                    else []
                ),
                *(
                    [_cluster("envoy_admin", settings.admin_host, [settings.admin_port], http2=False)]
                    if settings.ready_port is not None
                    else []
                ),
            ],
        },
    }


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _front_door_connection_manager(limits: FrontDoorLimits) -> dict[str, Any]:
    """The connection manager's front-door settings: timeouts that cut a client sending or reading nothing,
    HTTP/2 limits, and where the client address comes from."""
    return {
        "use_remote_address": True,
        "xff_num_trusted_hops": limits.xff_num_trusted_hops,
        # At the edge Envoy would replace a client's x-request-id; the decision log and AuditEvents are keyed
        # by it, so a client can find its request there (a new one is still generated when absent).
        "preserve_external_request_id": True,
        "request_headers_timeout": _seconds(limits.request_headers_timeout_seconds),
        "request_timeout": _seconds(limits.request_timeout_seconds),
        "stream_idle_timeout": _seconds(limits.stream_idle_timeout_seconds),
        "common_http_protocol_options": {
            "headers_with_underscores_action": "REJECT_REQUEST",
            "idle_timeout": _seconds(limits.connection_idle_timeout_seconds),
            "max_connection_duration": _seconds(limits.max_connection_duration_seconds),
        },
        "http2_protocol_options": {
            "max_concurrent_streams": limits.http2_max_concurrent_streams,
            "initial_stream_window_size": limits.http2_initial_stream_window_bytes,
            "initial_connection_window_size": limits.http2_initial_connection_window_bytes,
        },
    }


def _overload_manager(limits: FrontDoorLimits) -> dict[str, Any]:
    """A global cap on client connections (the one past it is closed on accept, not queued), and heap
    actions: shrink at 95 %, refuse new requests (503) at 98 % rather than be killed for memory."""
    heap = "envoy.resource_monitors.fixed_heap"
    return {
        "refresh_interval": "0.25s",
        "resource_monitors": [
            {
                "name": "envoy.resource_monitors.global_downstream_max_connections",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3"
                    ".DownstreamConnectionsConfig",
                    "max_active_downstream_connections": limits.max_downstream_connections,
                },
            },
            {
                "name": heap,
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig",
                    "max_heap_size_bytes": limits.max_heap_bytes,
                },
            },
        ],
        "actions": [
            {"name": "envoy.overload_actions.shrink_heap", "triggers": [{"name": heap, "threshold": {"value": 0.95}}]},
            {
                "name": "envoy.overload_actions.stop_accepting_requests",
                "triggers": [{"name": heap, "threshold": {"value": 0.98}}],
            },
        ],
    }


def _tls_listener(settings: EnvoySettings, hcm: dict[str, Any], buffer_limit: int) -> list[dict[str, Any]]:
    """The same routes and filters behind mTLS, when configured. The connection manager is a copy, so the
    YAML holds no aliases."""
    tls = settings.tls
    if tls is None:
        return []
    tls_hcm = {**copy.deepcopy(hcm), "stat_prefix": "fhir_ingress_tls"}
    return [
        {
            "name": "fhir_ingress_tls",
            "address": {"socket_address": {"address": settings.listen_host, "port_value": tls.port}},
            "per_connection_buffer_limit_bytes": buffer_limit,
            "filter_chains": [
                {
                    "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": tls_hcm}],
                    "transport_socket": {
                        "name": "envoy.transport_sockets.tls",
                        "typed_config": {
                            "@type": DOWNSTREAM_TLS_CONTEXT,
                            "require_client_certificate": tls.require_client_certificate,
                            "common_tls_context": {
                                "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
                                "alpn_protocols": ["h2", "http/1.1"],
                                "tls_certificates": [
                                    {
                                        "certificate_chain": {"filename": tls.cert_path},
                                        "private_key": {"filename": tls.key_path},
                                    }
                                ],
                                "validation_context": {"trusted_ca": {"filename": tls.client_ca_path}},
                            },
                        },
                    },
                }
            ],
        }
    ]


def _ready_listener(settings: EnvoySettings) -> list[dict[str, Any]]:
    """Kubernetes probes cannot reach an admin bound to loopback: this listener proxies GET /ready,
    and nothing else, to it."""
    if settings.ready_port is None:
        return []
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
        ".HttpConnectionManager",
        "stat_prefix": "envoy_ready",
        "route_config": {
            "name": "ready",
            "virtual_hosts": [
                {
                    "name": "ready",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {
                                "path": "/ready",
                                "headers": [{"name": ":method", "string_match": {"exact": "GET"}}],
                            },
                            "route": {"cluster": "envoy_admin", "timeout": "2s"},
                        },
                        {"match": {"prefix": "/"}, "direct_response": {"status": 404}},
                    ],
                }
            ],
        },
        "http_filters": [
            {"name": "envoy.filters.http.router", "typed_config": {"@type": f"{_HTTP_FILTERS_PREFIX}.router.v3.Router"}}
        ],
    }
    return [
        {
            "name": "envoy_ready",
            "address": {"socket_address": {"address": settings.listen_host, "port_value": settings.ready_port}},
            # Probes still get through when clients hold every connection: a busy pod is not restarted.
            "ignore_global_conn_limit": True,
            "filter_chains": [
                {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
            ],
        }
    ]


def render_yaml(settings: EnvoySettings) -> str:
    header = "# Generated by `smartgate envoy-config`; see service/smartgate/envoy_glue/bootstrap.py.\n"
    return header + yaml.safe_dump(render(settings), sort_keys=False)
