"""The gateway's NetworkPolicy admits other pods only to the FHIR API and (from the listed peers)
the metrics port: never to smartgate's gRPC Check port, which only the pod's own Envoy (over
loopback) and the kubelet's probes (from the node) may call. NetworkPolicy governs neither of those,
so the policy needs no rule for them (chart README, "NetworkPolicy")."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from .rendering import CHART, Rendering, load_values, render

pytestmark = pytest.mark.chart

MINIMAL_WITH_POLICY = "minimal values with networkPolicy.enabled"


def _values(name: str) -> dict[str, Any]:
    if name == MINIMAL_WITH_POLICY:
        values = copy.deepcopy(load_values(CHART / "ci" / "minimal-values.yaml"))
        values["networkPolicy"] = {"enabled": True}
        return values
    return load_values(CHART / "ci" / name)


@pytest.fixture(scope="module", params=["production-values.yaml", MINIMAL_WITH_POLICY])
def rendering(request: pytest.FixtureRequest) -> Rendering:
    return render(_values(request.param))


def _smartgate_ports(rendering: Rendering) -> dict[str, int]:
    """Container port name -> number, for every container of the gateway pod."""
    pod = rendering.one("Deployment")["spec"]["template"]["spec"]
    return {port["name"]: port["containerPort"] for container in pod["containers"] for port in container["ports"]}


def _gateway_policy(rendering: Rendering) -> dict[str, Any]:
    return rendering.one("NetworkPolicy", "gw-smartgate")


def _admitted_ports(policy: dict[str, Any], names: dict[str, int]) -> set[int]:
    """Every port number some ingress rule admits; a rule without ports would admit them all."""
    admitted: set[int] = set()
    for rule in policy["spec"]["ingress"]:
        assert rule.get("ports"), f"an ingress rule without ports admits every port, Check included: {rule}"
        for port in rule["ports"]:
            admitted.add(names[port["port"]] if isinstance(port["port"], str) else port["port"])
    return admitted


def test_the_policy_isolates_ingress_of_the_gateway_pods(rendering: Rendering) -> None:
    policy = _gateway_policy(rendering)
    assert "Ingress" in policy["spec"]["policyTypes"]
    labels = rendering.one("Deployment")["spec"]["selector"]["matchLabels"]
    assert policy["spec"]["podSelector"] == {"matchLabels": labels}


def test_no_ingress_rule_admits_the_grpc_check_port(rendering: Rendering) -> None:
    ports = _smartgate_ports(rendering)
    admitted = _admitted_ports(_gateway_policy(rendering), ports)
    assert ports.get("grpc") not in admitted
    assert ports["envoy-ready"] not in admitted


def test_with_the_default_unix_socket_check_has_no_port_at_all(rendering: Rendering) -> None:
    assert "grpc" not in _smartgate_ports(rendering)
    assert rendering.config("smartgate.yaml")["listen"]["grpc"].startswith("unix:/")


@pytest.mark.parametrize("name", ["production-values.yaml", MINIMAL_WITH_POLICY])
def test_only_the_fhir_api_and_the_listed_metrics_peers_are_admitted(name: str) -> None:
    values = _values(name)
    policy = _gateway_policy(render(values))
    rules = {tuple(port["port"] for port in rule["ports"]): rule.get("from") for rule in policy["spec"]["ingress"]}
    metrics_from = values["networkPolicy"].get("metricsFrom")
    api = ("http", "https") if values.get("envoy", {}).get("tls", {}).get("enabled") else ("http",)  # + mTLS
    assert set(rules) == {api} | ({("metrics",)} if metrics_from else set())
    assert rules[api] == (values["networkPolicy"].get("ingressFrom") or None)
    if metrics_from:
        assert rules[("metrics",)] == metrics_from


def test_the_check_port_is_the_one_the_kubelet_probes_and_envoy_calls_on_loopback() -> None:
    """What the README promises for ``grpcTransport: tcp``: the probes use the Check port (so it listens
    beyond loopback), and Envoy's ext_authz cluster reaches it on 127.0.0.1."""
    rendering = render(load_values(CHART / "ci" / "tcp-transport-values.yaml"))
    ports = _smartgate_ports(rendering)
    pod = rendering.one("Deployment")["spec"]["template"]["spec"]
    smartgate = next(c for c in pod["containers"] if any(p["name"] == "grpc" for p in c["ports"]))
    assert smartgate["readinessProbe"]["grpc"]["port"] == ports["grpc"]
    envoy = rendering.config("envoy.yaml")
    clusters = envoy["static_resources"]["clusters"]
    endpoints = [
        lb["endpoint"]["address"]["socket_address"]
        for cluster in clusters
        for locality in cluster.get("load_assignment", {}).get("endpoints", [])
        for lb in locality.get("lb_endpoints", [])
    ]
    assert {"address": "127.0.0.1", "port_value": ports["grpc"]} in [
        {"address": e["address"], "port_value": e["port_value"]} for e in endpoints
    ]
