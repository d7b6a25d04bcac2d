"""Envoy configurations for the benchmark setups, all from smartgate's own rendering.

Every setup answers the FHIR route with a ``direct_response`` (no upstream), so only
authorization is measured:
  A  Envoy alone (the ext_authz filter removed);
  B  Envoy's native ``jwt_authn`` filter verifying the same tokens against an inline JWKS;
  C  ext_authz to the Python floor server; D/E ext_authz to smartgate (1 or 2 workers).
The FHIR stand-in for compartment look-ups is one more Envoy answering Bundles at once.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import fhir_bodies

from smartgate.config.model import VerificationMode
from smartgate.envoy_glue.bootstrap import EnvoySettings, render

BASE_PATH = "/fhir"
OK_BODY = {"direct_response": {"status": 200, "body": {"inline_string": "{}"}}}


def _hcm(config: dict[str, Any]) -> dict[str, Any]:
    listener = config["static_resources"]["listeners"][0]
    hcm: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm


def _answer_directly(config: dict[str, Any]) -> None:
    """Replace every route to the FHIR server with an immediate 200 (keeps the 404 catch-all)."""
    routes = _hcm(config)["route_config"]["virtual_hosts"][0]["routes"]
    for route in routes:
        if "route" in route:
            del route["route"]
            route.pop("request_headers_to_remove", None)
            route.update(copy.deepcopy(OK_BODY))


def settings(
    listen_port: int,
    admin_port: int,
    authz_port: int,
    workers: int = 1,
    authz_socket: str | None = None,
    upstream_url: str = f"http://127.0.0.1:9{BASE_PATH}",
    verification: VerificationMode = "off",
) -> EnvoySettings:
    return EnvoySettings(
        listen_host="127.0.0.1",
        listen_port=listen_port,
        admin_host="127.0.0.1",
        admin_port=admin_port,
        authz_host="127.0.0.1",
        authz_port=authz_port,
        authz_workers=workers,
        authz_socket=authz_socket,
        smartgate_http_port=None,
        upstream_url=upstream_url,
        base_path=BASE_PATH,
        response_verification=verification,
    )


def ext_authz_config(
    listen_port: int, admin_port: int, authz_port: int, workers: int = 1, authz_socket: str | None = None
) -> dict[str, Any]:
    """Setups C, D, E (and D over a Unix socket): the shipped rendering, with the route answered by Envoy
    itself."""
    config = render(settings(listen_port, admin_port, authz_port, workers, authz_socket))
    _answer_directly(config)
    return config


def upstream_config(
    listen_port: int, admin_port: int, authz_port: int, upstream_url: str, verification: VerificationMode
) -> dict[str, Any]:
    """Setups F: the shipped rendering unchanged, routed to the FHIR stand-in, so response verification
    (ext_proc) sees real response bodies."""
    return render(settings(listen_port, admin_port, authz_port, upstream_url=upstream_url, verification=verification))


def no_authz_config(listen_port: int, admin_port: int) -> dict[str, Any]:
    """Setup A: the same listener without the ext_authz filter (and without the authz cluster)."""
    config = ext_authz_config(listen_port, admin_port, authz_port=9)
    hcm = _hcm(config)
    hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != "envoy.filters.http.ext_authz"]
    clusters = config["static_resources"]["clusters"]
    config["static_resources"]["clusters"] = [c for c in clusters if c["name"] != "smartgate"]
    return config


def jwt_authn_config(
    listen_port: int, admin_port: int, issuer: str, audience: str, jwks: dict[str, Any]
) -> dict[str, Any]:
    """Setup B: Envoy's C++ JWT verification of the same tokens, keys inline."""
    config = no_authz_config(listen_port, admin_port)
    jwt_filter = {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {
                "bench": {
                    "issuer": issuer,
                    "audiences": [audience],
                    "local_jwks": {"inline_string": json.dumps(jwks)},
                    "forward": True,
                }
            },
            "rules": [{"match": {"prefix": BASE_PATH}, "requires": {"provider_name": "bench"}}],
        },
    }
    hcm = _hcm(config)
    hcm["http_filters"] = [jwt_filter, *hcm["http_filters"]]
    return config


def _bundle(total: int) -> dict[str, Any]:
    body = json.dumps({"resourceType": "Bundle", "type": "searchset", "total": total})
    return {
        "direct_response": {"status": 200, "body": {"inline_string": body}},
        "response_headers_to_add": [{"header": {"key": "content-type", "value": "application/fhir+json"}}],
    }


def _body(body: str) -> dict[str, Any]:
    return {
        "direct_response": {"status": 200, "body": {"inline_string": body}},
        "response_headers_to_add": [{"header": {"key": "content-type", "value": "application/fhir+json"}}],
    }


def _answers(public_base: str) -> list[dict[str, Any]]:
    """What the setups F read through the stand-in: a look-up (``_summary=count``) is a member; the
    US Core search (``_revinclude``) its 20 Observations and 20 Provenances; any other search one of the
    patient's Observations. Reads are answered by the Lua filter."""
    return [
        {"match": {"prefix": "/", "query_parameters": [{"name": "_summary", "present_match": True}]}, **_bundle(1)},
        {
            "match": {"prefix": "/", "query_parameters": [{"name": "_revinclude", "present_match": True}]},
            **_body(fhir_bodies.uscore_bundle(public_base)),
        },
        {"match": {"path": f"{BASE_PATH}/Observation"}, **_body(fhir_bodies.search_bundle(public_base))},
    ]


PUBLIC_BASE = "https://bench.smartgate.invalid/fhir"  # smartgate's fhir.base_url in the bench (never contacted)


def fhir_stand_in_config(
    listen_port: int, admin_port: int, membership_params: tuple[str, ...], public_base: str = PUBLIC_BASE
) -> dict[str, Any]:
    """A FHIR server that answers look-ups at once: ``total: 1`` (a member), except for ids starting
    ``nm-`` (not a member) and smartgate's impossible-value probes (a server that honours the parameter);
    and reads and searches with bodies of the bench patient (``_answers``)."""
    not_member = [
        {
            "match": {
                "prefix": "/",
                "query_parameters": [{"name": param, "string_match": {"contains": "smartgate-probe"}}],
            },
            **_bundle(0),
        }
        for param in membership_params
    ]
    not_member.append(
        {
            "match": {"prefix": "/", "query_parameters": [{"name": "_id", "string_match": {"prefix": "nm-"}}]},
            **_bundle(0),
        }
    )
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
        ".HttpConnectionManager",
        "stat_prefix": "fhir_stand_in",
        "route_config": {
            "name": "fhir",
            "max_direct_response_body_size_bytes": 1_048_576,
            "virtual_hosts": [
                {
                    "name": "fhir",
                    "domains": ["*"],
                    "routes": [*not_member, *_answers(public_base), {"match": {"prefix": "/"}, **_bundle(1)}],
                }
            ],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.lua",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                    "default_source_code": {"inline_string": fhir_bodies.read_observation_lua()},
                },
            },
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
            },
        ],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "fhir",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen_port}},
                    "filter_chains": [
                        {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
                    ],
                }
            ]
        },
    }
