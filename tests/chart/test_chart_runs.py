"""The chart's rendered configs run for real: the Envoy config and the smartgate config out of the
ConfigMaps, with only the in-pod addresses moved to free loopback ports (and the issuer and FHIR
server pointed at stand-ins), serve a request through Envoy to a real upstream. Two renderings run:
inline minimal values, and the committed production values file (two workers, two IdPs, one with
introspection, public routes, response verification)."""

from __future__ import annotations

import contextlib
import json
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import jwt
import pytest
import yaml

from smartgate.dev.demo.upstream import start_upstream
from tests.support.idp import IdentityProvider, SigningKeys, new_keys
from tests.support.ports import free_consecutive_ports, free_port
from tests.support.processes import running, start_envoy_process, start_smartgate_process
from tests.support.waits import wait_for

from .rendering import CHART, Rendering, load_values, render, with_local_tls_files

pytestmark = pytest.mark.chart

AUDIENCE = "https://fhir.example.org/fhir"
PRODUCTION_VALUES = CHART / "ci" / "production-values.yaml"
INTROSPECTION_SECRET_STAND_IN = {"SMARTGATE_INTROSPECTION_SECRET_1": "stand-in-introspection-secret"}


@dataclass
class ChartStack:
    url: str
    ready_url: str
    idp: IdentityProvider
    keys: SigningKeys

    def token(self, patient: str = "123", scope: str = "launch/patient patient/*.rs") -> str:
        claims = {
            "iss": self.idp.issuer,
            "aud": AUDIENCE,
            "sub": "user-1",
            "client_id": "app-1",
            "scope": scope,
            "patient": patient,
            "exp": 4_000_000_000,
            "iat": 1_700_000_000,
        }
        return jwt.encode(claims, self.keys.ec_key, algorithm="ES256", headers={"kid": "ec-1", "typ": "at+jwt"})


@dataclass
class ProductionStack:
    """The production values' gateway; tokens are what its first IdP (profile okta, RS256 only) issues."""

    url: str
    tls_url: str  # the same API on the mTLS listener
    workdir: Path  # holds the test CA (ca.pem) and a client certificate it signed (client.pem, client.key)
    okta: IdentityProvider
    keys: SigningKeys
    audience: str

    def token(self, patient: str = "123") -> str:
        claims = {
            "iss": self.okta.issuer,
            "aud": self.audience,
            "sub": "user-1",
            "cid": "app-1",
            "scp": ["launch/patient", "patient/*.rs"],
            "launch_response_patient": patient,
            "exp": 4_000_000_000,
            "iat": 1_700_000_000,
        }
        return jwt.encode(claims, self.keys.rsa_key, algorithm="RS256", headers={"kid": "rsa-1", "typ": "at+jwt"})


POD_SOCKET_DIR = "/run/smartgate"  # the emptyDir holding smartgate's gRPC socket in the pod


def _move_ports(envoy: dict[str, Any], smartgate: dict[str, Any], ports: dict[int, int], socket_dir: Path) -> None:
    """Pod ports -> free loopback ports, everywhere they occur; 0.0.0.0 -> 127.0.0.1; the pod's socket
    directory -> ``socket_dir``."""

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            if "port_value" in node and node["port_value"] in ports:
                node["port_value"] = ports[node["port_value"]]
            if node.get("address") == "0.0.0.0":
                node["address"] = "127.0.0.1"
            if isinstance(node.get("pipe"), dict):
                node["pipe"]["path"] = node["pipe"]["path"].replace(POD_SOCKET_DIR, str(socket_dir), 1)
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for item in node:
                visit(item)

    visit(envoy)
    for name in ("grpc", "http"):
        address = smartgate["listen"][name]
        if address.startswith("unix:"):
            smartgate["listen"][name] = address.replace(POD_SOCKET_DIR, str(socket_dir), 1)
            continue
        port = address.rpartition(":")[2]
        smartgate["listen"][name] = f"127.0.0.1:{ports[int(port)]}"


def _pod_ports(workers: int) -> dict[int, int]:
    """In-pod port -> free loopback port: Envoy 8080/8443/9902/9901, smartgate HTTP 9190, gRPC 9191 + worker."""
    grpc = free_consecutive_ports(workers)
    ports = {8080: free_port(), 8443: free_port(), 9902: free_port(), 9901: free_port(), 9190: free_port()}
    ports.update({9191 + worker: grpc + worker for worker in range(workers)})
    return ports


@contextlib.contextmanager
def _serving(rendering: Rendering, workdir: Path, env: dict[str, str] | None = None) -> Iterator[dict[int, int]]:
    """Run the rendering's smartgate and Envoy configs on loopback; yield the pod-port -> loopback-port map."""
    envoy_config, smartgate_config = rendering.config("envoy.yaml"), rendering.config("smartgate.yaml")
    ports = _pod_ports(smartgate_config.get("workers", 1))
    _move_ports(envoy_config, smartgate_config, ports, workdir)
    with_local_tls_files(envoy_config, workdir)  # the mTLS listener's Secret, when the values turn it on
    (workdir / "envoy.yaml").write_text(yaml.safe_dump(envoy_config), encoding="utf-8")
    (workdir / "smartgate.yaml").write_text(yaml.safe_dump(smartgate_config), encoding="utf-8")
    smartgate = start_smartgate_process(workdir / "smartgate.yaml", workdir / "smartgate.log", env=env)
    with running(smartgate):
        wait_for(f"http://127.0.0.1:{ports[9190]}/readyz", process=smartgate)
        envoy = start_envoy_process(workdir / "envoy.yaml", workdir / "envoy.log")
        with running(envoy):
            wait_for(f"http://127.0.0.1:{ports[9902]}/ready", process=envoy)
            yield ports


def wait_for_allow(url: str, seconds: float = 20) -> None:
    """Envoy health-checks smartgate before sending it checks: wait for the first decision."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if httpx.get(url + "/metadata", timeout=2).status_code == 200:
            return
        time.sleep(0.2)
    raise TimeoutError("the chart-rendered Envoy never answered through smartgate")


@pytest.fixture(scope="module")
def chart_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChartStack]:
    keys = new_keys()
    idp = IdentityProvider(keys)
    upstream_port = free_port()
    upstream = start_upstream("127.0.0.1", upstream_port, "/fhir")
    values = {
        "fhir": {"baseUrl": AUDIENCE, "upstreamUrl": f"http://127.0.0.1:{upstream_port}/fhir"},
        "issuers": [{"issuer": idp.issuer}],
        "responseVerification": {"mode": "enforce"},
    }
    try:
        with _serving(render(values), tmp_path_factory.mktemp("chart-run")) as ports:
            stack = ChartStack(
                f"http://127.0.0.1:{ports[8080]}/fhir", f"http://127.0.0.1:{ports[9902]}/ready", idp, keys
            )
            wait_for_allow(stack.url)
            yield stack
    finally:
        upstream.shutdown()
        upstream.server_close()
        idp.close()


def _production_values_on_loopback(upstream_url: str, okta_issuer: str, keycloak_issuer: str) -> dict[str, Any]:
    """The committed production values with only the outside addresses pointed at loopback stand-ins."""
    values = load_values(PRODUCTION_VALUES)
    values["fhir"]["upstreamUrl"] = upstream_url
    okta_values, keycloak_values = values["issuers"]
    okta_values.update(issuer=okta_issuer, jwksUri=f"{okta_issuer}/jwks")
    keycloak_values["issuer"] = keycloak_issuer  # no jwksUri: OpenID discovery, as in the values file
    keycloak_values["introspection"]["endpoint"] = f"{keycloak_issuer}/introspect"
    return values


@pytest.fixture(scope="module")
def production_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProductionStack]:
    keys = new_keys()
    okta, keycloak = IdentityProvider(keys, name="okta"), IdentityProvider(keys, name="keycloak")
    upstream_port = free_port()
    upstream = start_upstream("127.0.0.1", upstream_port, "/fhir/R4")
    values = _production_values_on_loopback(f"http://127.0.0.1:{upstream_port}/fhir/R4", okta.issuer, keycloak.issuer)
    try:
        workdir = tmp_path_factory.mktemp("chart-run-production")
        with _serving(render(values), workdir, INTROSPECTION_SECRET_STAND_IN) as ports:
            stack = ProductionStack(
                f"http://127.0.0.1:{ports[8080]}/r4",
                f"https://127.0.0.1:{ports[8443]}/r4",
                workdir,
                okta,
                keys,
                values["fhir"]["baseUrl"],
            )
            wait_for_allow(stack.url)
            yield stack
    finally:
        upstream.shutdown()
        upstream.server_close()
        okta.close()
        keycloak.close()


# --- inline minimal values -------------------------------------------------------------------------


class Gateway(Protocol):
    """What the request tests need of a running chart rendering: its FHIR URL and a token for a patient."""

    url: str

    def token(self, patient: str = "123") -> str: ...


@pytest.fixture(params=["chart_stack", "production_stack"], ids=["inline-values", "production-values"])
def gateway(request: pytest.FixtureRequest) -> Gateway:
    """The same requests through the chart rendered from inline values and from ci/production-values.yaml."""
    stack: Gateway = request.getfixturevalue(request.param)
    return stack


def test_a_good_token_is_allowed_through_the_chart_rendered_configs(gateway: Gateway) -> None:
    response = httpx.get(
        gateway.url + "/Observation?patient=123", headers={"authorization": f"Bearer {gateway.token()}"}
    )
    assert response.status_code == 200
    assert {e["resource"]["id"] for e in response.json()["entry"]} == {"obs-123-a", "obs-123-b"}
    injected = json.loads(response.headers["x-demo-received-smart"])
    assert injected["x-smart-patient"] == "123" and injected["x-smart-client-id"] == "app-1"


def test_no_token_is_denied_with_401(gateway: Gateway) -> None:
    response = httpx.get(gateway.url + "/Observation?patient=123")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer realm=")
    assert response.json()["resourceType"] == "OperationOutcome"


def test_another_patients_data_is_denied_with_403(gateway: Gateway) -> None:
    response = httpx.get(
        gateway.url + "/Observation?patient=456", headers={"authorization": f"Bearer {gateway.token()}"}
    )
    assert response.status_code == 403
    assert "obs-456" not in response.text


def test_response_verification_as_the_chart_configures_it_blocks_a_foreign_record(chart_stack: ChartStack) -> None:
    response = httpx.get(
        chart_stack.url + "/Observation?patient=123&_tag=smartgate-misbehave",
        headers={"authorization": f"Bearer {chart_stack.token()}"},
    )
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
    rendering = render(
        {
            "fhir": {"baseUrl": AUDIENCE, "upstreamUrl": "http://127.0.0.1:1/fhir"},
            "issuers": [{"issuer": "http://127.0.0.1:2/idp"}],
        }
    )
    smartgate = rendering.config("smartgate.yaml")
    assert smartgate["listen"] == {"grpc": f"unix:{POD_SOCKET_DIR}/grpc.sock", "http": "0.0.0.0:9190"}
    assert smartgate["mode"] == "enforce"


# --- the committed production values file ------------------------------------------------------------


def test_production_values_forward_to_the_fhir_servers_own_path(production_stack: ProductionStack) -> None:
    response = httpx.get(
        production_stack.url + "/Observation?patient=123",
        headers={"authorization": f"Bearer {production_stack.token()}"},
    )
    assert response.status_code == 200
    assert response.headers["x-demo-received-path"].startswith("/fhir/R4/Observation")


def test_production_values_let_a_configured_public_route_pass_without_a_token(
    production_stack: ProductionStack,
) -> None:
    response = httpx.get(production_stack.url + "/Organization/payer-1")  # publicRoutes: GET /Organization*
    assert response.status_code == 200
    assert response.json()["id"] == "payer-1"
    assert json.loads(response.headers["x-demo-received-smart"]) == {}  # no identity was made up


def test_production_values_keep_a_method_the_public_route_does_not_list_behind_a_token(
    production_stack: ProductionStack,
) -> None:
    response = httpx.post(
        production_stack.url + "/Organization",  # the public route lists GET only
        json={"resourceType": "Organization", "name": "Walk-in"},
    )
    assert response.status_code == 401
    assert response.json()["resourceType"] == "OperationOutcome"


def test_the_production_run_changed_only_addresses_in_the_smartgate_config() -> None:
    """Guard against a run that drifts from the committed values: outside addresses are all it replaced."""
    committed = render(load_values(PRODUCTION_VALUES)).config("smartgate.yaml")
    moved = render(
        _production_values_on_loopback(
            "http://127.0.0.1:3/fhir/R4", "http://127.0.0.1:1/okta", "http://127.0.0.1:2/keycloak"
        )
    ).config("smartgate.yaml")
    for config in (committed, moved):
        config["fhir"].pop("upstream_url")
        for issuer in config["issuers"]:
            issuer.pop("issuer")
            issuer.pop("jwks_uri", None)
            issuer.get("introspection", {}).pop("endpoint", None)
    assert moved == committed


def test_production_values_serve_the_api_on_the_mtls_listener_too(production_stack: ProductionStack) -> None:
    workdir = production_stack.workdir
    with httpx.Client(verify=client_tls(workdir), timeout=10) as client:
        response = client.get(
            production_stack.tls_url + "/Observation?patient=123",
            headers={"authorization": f"Bearer {production_stack.token()}"},
        )
    assert response.status_code == 200
    assert {e["resource"]["id"] for e in response.json()["entry"]} == {"obs-123-a", "obs-123-b"}


def client_tls(workdir: Path) -> ssl.SSLContext:
    """Trust the test CA that signed the rendering's server certificate; present the client certificate."""
    context = ssl.create_default_context(cafile=str(workdir / "ca.pem"))
    context.load_cert_chain(str(workdir / "client.pem"), str(workdir / "client.key"))
    return context
