"""The chart's rendered configs run for real: the Envoy config and the smartgate config out of the
ConfigMaps, with only the in-pod addresses moved to free loopback ports (and the issuer and FHIR
server pointed at stand-ins), serve a request through Envoy to a real upstream."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import yaml

from smartgate.demo.runner import find_envoy
from smartgate.demo.upstream import start_upstream

from ..integration.harness import IdentityProvider, free_port, new_keys, running, wait_for
from .rendering import render

pytestmark = pytest.mark.chart

AUDIENCE = "https://fhir.example.org/fhir"


@dataclass
class ChartStack:
    url: str
    ready_url: str
    idp: IdentityProvider
    keys: Any

    def token(self, patient: str = "123", scope: str = "launch/patient patient/*.rs") -> str:
        claims = {"iss": self.idp.issuer, "aud": AUDIENCE, "sub": "user-1", "client_id": "app-1", "scope": scope,
                  "patient": patient, "exp": 4_000_000_000, "iat": 1_700_000_000}
        return jwt.encode(claims, self.keys.ec_key, algorithm="ES256", headers={"kid": "ec-1", "typ": "at+jwt"})


def _move_ports(envoy: dict[str, Any], smartgate: dict[str, Any], ports: dict[int, int]) -> None:
    """Pod ports -> free loopback ports, everywhere they occur; 0.0.0.0 -> 127.0.0.1."""
    def visit(node: Any) -> None:
        if isinstance(node, dict):
            if "port_value" in node and node["port_value"] in ports:
                node["port_value"] = ports[node["port_value"]]
            if node.get("address") == "0.0.0.0":
                node["address"] = "127.0.0.1"
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for item in node:
                visit(item)
    visit(envoy)
    for name in ("grpc", "http"):
        port = smartgate["listen"][name].rpartition(":")[2]
        smartgate["listen"][name] = f"127.0.0.1:{ports[int(port)]}"


@pytest.fixture(scope="module")
def chart_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChartStack]:
    workdir = tmp_path_factory.mktemp("chart-run")
    keys = new_keys()
    idp = IdentityProvider(keys)
    upstream_port = free_port()
    upstream = start_upstream("127.0.0.1", upstream_port, "/fhir")
    values = {"fhir": {"baseUrl": AUDIENCE, "upstreamUrl": f"http://127.0.0.1:{upstream_port}/fhir"},
              "issuers": [{"issuer": idp.issuer}], "responseVerification": {"mode": "enforce"}}
    rendering = render(values)
    envoy_config, smartgate_config = rendering.config("envoy.yaml"), rendering.config("smartgate.yaml")
    grpc = free_port()
    ports = {8080: free_port(), 9902: free_port(), 9901: free_port(), 9191: grpc, 9190: free_port()}
    _move_ports(envoy_config, smartgate_config, ports)
    (workdir / "envoy.yaml").write_text(yaml.safe_dump(envoy_config), encoding="utf-8")
    (workdir / "smartgate.yaml").write_text(yaml.safe_dump(smartgate_config), encoding="utf-8")
    smartgate = subprocess.Popen(
        [sys.executable, "-m", "smartgate", "serve", "--config", str(workdir / "smartgate.yaml")],
        stdout=(workdir / "smartgate.log").open("wb"), stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        with running(smartgate):
            wait_for(f"http://127.0.0.1:{ports[9190]}/readyz", process=smartgate)
            envoy = subprocess.Popen(
                [find_envoy(), "-c", str(workdir / "envoy.yaml"), "--use-dynamic-base-id", "--concurrency", "1",
                 "--log-level", "warn"], stdout=(workdir / "envoy.log").open("wb"), stderr=subprocess.STDOUT)
            with running(envoy):
                ready_url = f"http://127.0.0.1:{ports[9902]}/ready"
                wait_for(ready_url, process=envoy)
                stack = ChartStack(f"http://127.0.0.1:{ports[8080]}/fhir", ready_url, idp, keys)
                wait_for_allow(stack)
                yield stack
    finally:
        upstream.shutdown()
        upstream.server_close()
        idp.close()


def wait_for_allow(stack: ChartStack, seconds: float = 20) -> None:
    """Envoy health-checks smartgate before sending it checks: wait for the first decision."""
    import time
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if httpx.get(stack.url + "/metadata", timeout=2).status_code == 200:
            return
        time.sleep(0.2)
    raise TimeoutError("the chart-rendered Envoy never answered through smartgate")


def test_a_good_token_is_allowed_through_the_chart_rendered_configs(chart_stack: ChartStack) -> None:
    response = httpx.get(chart_stack.url + "/Observation?patient=123",
                         headers={"authorization": f"Bearer {chart_stack.token()}"})
    assert response.status_code == 200
    assert {e["resource"]["id"] for e in response.json()["entry"]} == {"obs-123-a", "obs-123-b"}
    injected = json.loads(response.headers["x-demo-received-smart"])
    assert injected["x-smart-patient"] == "123" and injected["x-smart-client-id"] == "app-1"


def test_no_token_is_denied_with_401(chart_stack: ChartStack) -> None:
    response = httpx.get(chart_stack.url + "/Observation?patient=123")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer realm=")
    assert response.json()["resourceType"] == "OperationOutcome"


def test_another_patients_data_is_denied_with_403(chart_stack: ChartStack) -> None:
    response = httpx.get(chart_stack.url + "/Observation?patient=456",
                         headers={"authorization": f"Bearer {chart_stack.token()}"})
    assert response.status_code == 403
    assert "obs-456" not in response.text


def test_response_verification_as_the_chart_configures_it_blocks_a_foreign_record(chart_stack: ChartStack) -> None:
    response = httpx.get(chart_stack.url + "/Observation?patient=123&_tag=smartgate-misbehave",
                         headers={"authorization": f"Bearer {chart_stack.token()}"})
    assert response.status_code == 403 and "obs-456-a" not in response.text


def test_smart_discovery_is_routed_to_smartgate(chart_stack: ChartStack) -> None:
    response = httpx.get(chart_stack.url + "/.well-known/smart-configuration")
    assert response.status_code == 200
    assert response.json()["token_endpoint"] == f"{chart_stack.idp.issuer}/token"


def test_the_ready_listener_serves_only_ready(chart_stack: ChartStack) -> None:
    assert httpx.get(chart_stack.ready_url).status_code == 200
    base = chart_stack.ready_url.removesuffix("/ready")
    assert httpx.post(base + "/quitquitquit").status_code == 404  # the admin's other endpoints stay unreachable
    assert httpx.get(base + "/config_dump").status_code == 404
    assert httpx.post(chart_stack.ready_url).status_code == 404


def test_the_rendered_configs_really_were_the_charts(tmp_path: Path) -> None:
    """Guard against a test that drifts from the chart: the only changes made are addresses."""
    rendering = render({"fhir": {"baseUrl": AUDIENCE, "upstreamUrl": "http://127.0.0.1:1/fhir"},
                        "issuers": [{"issuer": "http://127.0.0.1:2/idp"}]})
    smartgate = rendering.config("smartgate.yaml")
    assert smartgate["listen"] == {"grpc": "0.0.0.0:9191", "http": "0.0.0.0:9190"}
    assert smartgate["mode"] == "enforce"
