"""smartgate's gRPC listener on a Unix domain socket (``listen.grpc: unix:/path``): what the config accepts,
where each worker listens, and how Envoy's rendering reaches it (a STATIC cluster of ``pipe`` addresses).
The HTTP listener stays TCP: the kubelet probes it and Prometheus scrapes it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from smartgate.cli import main
from smartgate.config.model import grpc_address
from smartgate.config.parse import ConfigError, parse_config
from smartgate.envoy_glue.bootstrap import EnvoySettings, render

SOCKET = "/run/smartgate/grpc.sock"


def _config(grpc: str, http: str = "127.0.0.1:9190", **extra: Any) -> dict[str, Any]:
    return {
        "listen": {"grpc": grpc, "http": http},
        "fhir": {"base_url": "https://fhir.example.org/r4", "upstream_url": "http://fhir:8080/fhir"},
        "issuers": [{"issuer": "https://idp.example.org"}],
        **extra,
    }


def _smartgate_cluster(config: dict[str, Any]) -> dict[str, Any]:
    cluster: dict[str, Any] = next(c for c in config["static_resources"]["clusters"] if c["name"] == "smartgate")
    return cluster


def test_listen_grpc_accepts_a_unix_socket_path() -> None:
    assert parse_config(_config(f"unix:{SOCKET}")).listen.grpc == f"unix:{SOCKET}"


@pytest.mark.parametrize("address", ["unix:run/grpc.sock", "unix:", "unix://run/grpc.sock"])
def test_listen_grpc_refuses_a_socket_path_that_is_not_absolute(address: str) -> None:
    with pytest.raises(ConfigError, match=r"listen\.grpc.*unix:/absolute/path"):
        parse_config(_config(address))


def test_listen_grpc_refuses_a_socket_path_too_long_for_the_kernel() -> None:
    """sun_path holds 108 bytes; worker i > 0 adds ``.i`` to the path."""
    with pytest.raises(ConfigError, match=r"listen\.grpc.*at most 100 bytes"):
        parse_config(_config("unix:/" + "s" * 100))


def test_listen_http_stays_a_tcp_address() -> None:
    with pytest.raises(ConfigError, match=r"listen\.http.*HOST:PORT"):
        parse_config(_config(f"unix:{SOCKET}", http="unix:/run/smartgate/http.sock"))


def test_worker_zero_listens_on_the_socket_and_worker_i_on_the_socket_dot_i() -> None:
    config = parse_config(_config(f"unix:{SOCKET}", workers=3))
    assert [grpc_address(config, i) for i in range(3)] == [f"unix:{SOCKET}", f"unix:{SOCKET}.1", f"unix:{SOCKET}.2"]


def test_tcp_workers_still_listen_on_the_port_plus_their_index() -> None:
    config = parse_config(_config("127.0.0.1:9191", workers=2))
    assert [grpc_address(config, i) for i in range(2)] == ["127.0.0.1:9191", "127.0.0.1:9192"]


def test_envoy_reaches_socket_workers_through_a_static_cluster_of_pipes() -> None:
    cluster = _smartgate_cluster(render(EnvoySettings(authz_socket=SOCKET, authz_workers=2)))
    assert cluster["type"] == "STATIC"  # a pipe has no name to resolve
    assert [e["endpoint"]["address"] for e in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]] == [
        {"pipe": {"path": SOCKET}},
        {"pipe": {"path": f"{SOCKET}.1"}},
    ]
    assert cluster["health_checks"][0]["grpc_health_check"] == {}  # a worker not serving is still skipped
    assert "http2_protocol_options" in json.dumps(cluster["typed_extension_protocol_options"])


def test_without_a_socket_envoy_reaches_smartgate_over_tcp() -> None:
    cluster = _smartgate_cluster(render(EnvoySettings()))
    assert cluster["type"] == "STRICT_DNS"
    assert "socket_address" in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]


def test_envoy_config_renders_the_configs_socket_and_keeps_smart_discovery_on_tcp(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "smartgate.yaml"
    path.write_text(json.dumps(_config(f"unix:{SOCKET}", http="127.0.0.1:9190")), encoding="utf-8")
    assert main(["envoy-config", "--config", str(path)]) == 0
    rendered = yaml.safe_load(capsys.readouterr().out)
    assert _smartgate_cluster(rendered)["load_assignment"]["endpoints"][0]["lb_endpoints"] == [
        {"endpoint": {"address": {"pipe": {"path": SOCKET}}}}
    ]
    http = next(c for c in rendered["static_resources"]["clusters"] if c["name"] == "smartgate_http")
    assert http["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] == {
        "socket_address": {"address": "127.0.0.1", "port_value": 9190}
    }
