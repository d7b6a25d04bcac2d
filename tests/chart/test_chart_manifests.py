"""The Helm chart, rendered by the real Helm engine for each values file under charts/smartgate/ci:
valid Kubernetes manifests, configs smartgate and Envoy accept, the same Envoy config smartgate
itself renders, hardened pods, and values the schema refuses with a clear error."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from helm_python import HelmError
from prometheus_client.metrics import MetricWrapperBase

from smartgate.dev.demo.runner import find_envoy
from smartgate.envoy_glue.bootstrap import DownstreamTls, EnvoySettings, FrontDoorLimits, render
from smartgate.telemetry import metrics

from .rendering import CHART, TLS_MOUNT, VALUES_FILES, Rendering, load_values, with_local_tls_files
from .rendering import render as render_chart

pytestmark = pytest.mark.chart

KUBERNETES = "1.33.0"
GRPC_SOCKET = "/run/smartgate/grpc.sock"  # smartgate's gRPC socket in the pod (templates/_helpers.tpl)
CHART_DEFAULTS = load_values(CHART / "values.yaml")
UNIX_SOCKET_VALUES = ["minimal-values.yaml", "production-values.yaml"]  # grpcTransport: unix, the default
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
IDS = [path.stem for path in VALUES_FILES]


@pytest.fixture(scope="module", params=VALUES_FILES, ids=IDS)
def rendering(request: pytest.FixtureRequest) -> Rendering:
    return render_chart(load_values(request.param))


def _minimal() -> dict[str, Any]:
    return load_values(CHART / "ci" / "minimal-values.yaml")


@pytest.fixture(scope="module")
def production_values() -> dict[str, Any]:
    return load_values(CHART / "ci" / "production-values.yaml")


@pytest.fixture(scope="module")
def production(production_values: dict[str, Any]) -> Rendering:
    return render_chart(production_values)


def test_there_are_minimal_and_production_values_files() -> None:
    assert {"minimal-values", "production-values"} <= set(IDS)


def test_every_manifest_is_valid_against_the_kubernetes_api_schemas(rendering: Rendering) -> None:
    checked = 0
    for manifest in rendering.manifests:
        if manifest["kind"] in CRD_KINDS:
            continue
        kubernetes_validate.validate(manifest, KUBERNETES, strict=True)
        checked += 1
    assert checked >= 6


def test_the_schema_validation_is_not_a_no_op(production: Rendering) -> None:
    deployment = copy.deepcopy(production.one("Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pathh"] = "/ready"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES, strict=True)


def test_the_production_values_turn_every_option_on(production: Rendering) -> None:
    kinds = {m["kind"] for m in production.manifests}
    assert {
        "Deployment",
        "Service",
        "ConfigMap",
        "ServiceAccount",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "ServiceMonitor",
        "PrometheusRule",
    } <= kinds
    assert len(production.of_kind("NetworkPolicy")) == 2
    assert any(m["metadata"]["name"].endswith("-dashboard") for m in production.of_kind("ConfigMap"))


def test_minimal_values_leave_the_optional_objects_out() -> None:
    minimal = render_chart(load_values(CHART / "ci" / "minimal-values.yaml"))
    kinds = {m["kind"] for m in minimal.manifests}
    assert not kinds & {"HorizontalPodAutoscaler", "NetworkPolicy", "ServiceMonitor", "PrometheusRule"}


# --- the configs ---------------------------------------------------------------------------------


def test_the_rendered_smartgate_config_passes_check_config(rendering: Rendering, tmp_path: Path) -> None:
    path = tmp_path / "smartgate.yaml"
    path.write_text(yaml.safe_dump(rendering.config("smartgate.yaml")), encoding="utf-8")
    secrets = {f"SMARTGATE_INTROSPECTION_SECRET_{i}": "s3cret" for i in range(4)}
    result = subprocess.run(
        [sys.executable, "-m", "smartgate", "check-config", str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, **secrets},
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# values path under ``envoy`` -> FrontDoorLimits field (tests/unit/test_defaults_agree.py checks the defaults).
FRONT_DOOR_VALUES = {
    "maxConnections": "max_downstream_connections",
    "maxHeapBytes": "max_heap_bytes",
    "timeouts.requestHeadersSeconds": "request_headers_timeout_seconds",
    "timeouts.requestSeconds": "request_timeout_seconds",
    "timeouts.upstreamSeconds": "upstream_timeout_seconds",
    "timeouts.streamIdleSeconds": "stream_idle_timeout_seconds",
    "timeouts.connectionIdleSeconds": "connection_idle_timeout_seconds",
    "timeouts.maxConnectionDurationSeconds": "max_connection_duration_seconds",
    "http2.maxConcurrentStreams": "http2_max_concurrent_streams",
    "http2.initialStreamWindowBytes": "http2_initial_stream_window_bytes",
    "http2.initialConnectionWindowBytes": "http2_initial_connection_window_bytes",
    "xffNumTrustedHops": "xff_num_trusted_hops",
}


def _front_door(values: dict[str, Any]) -> FrontDoorLimits:
    """The values' front-door settings as FrontDoorLimits (absent ones: its defaults)."""
    found: dict[str, Any] = {}
    for path, field in FRONT_DOOR_VALUES.items():
        node: Any = values.get("envoy", {})
        for name in path.split("."):
            node = node.get(name, {}) if isinstance(node, dict) else {}
        if node != {}:
            found[field] = node
    return FrontDoorLimits(**found)


def _tls(values: dict[str, Any]) -> DownstreamTls | None:
    tls = values.get("envoy", {}).get("tls", {})
    if not tls.get("enabled"):
        return None
    return DownstreamTls(
        port=8443,
        cert_path=f"{TLS_MOUNT}/tls.crt",
        key_path=f"{TLS_MOUNT}/tls.key",
        client_ca_path=f"{TLS_MOUNT}/client-ca.crt",
        require_client_certificate=tls.get("requireClientCertificate", True),
    )


def _envoy_settings(values: dict[str, Any]) -> EnvoySettings:
    base_path = re.sub(r"^https?://[^/]+", "", values["fhir"]["baseUrl"]).rstrip("/")
    limits = values.get("limits", {})
    verification = values.get("responseVerification", {})
    return EnvoySettings(
        listen_host="0.0.0.0",
        listen_port=8080,
        admin_host="127.0.0.1",
        admin_port=9901,
        authz_host="127.0.0.1",
        authz_port=9191,
        authz_workers=values.get("workers", 1),
        smartgate_http_port=9190,
        authz_socket=GRPC_SOCKET if values.get("grpcTransport", CHART_DEFAULTS["grpcTransport"]) == "unix" else None,
        authz_timeout_seconds=limits.get("authzTimeoutSeconds", 1),
        upstream_url=values["fhir"]["upstreamUrl"],
        base_path=base_path,
        max_request_bytes=limits.get("maxRequestBytes", 1048576),
        response_verification=verification.get("mode", CHART_DEFAULTS["responseVerification"]["mode"]),
        max_response_bytes=verification.get("maxBodyBytes", 4194304),
        ready_port=9902,
        front_door=_front_door(values),
        tls=_tls(values),
    )


@pytest.mark.parametrize("path", VALUES_FILES, ids=IDS)
def test_the_rendered_envoy_config_is_the_one_smartgate_renders_for_the_same_values(path: Path) -> None:
    values = load_values(path)
    rendered = render_chart(values).config("envoy.yaml")
    expected = json.loads(json.dumps(render(_envoy_settings(values))))
    assert rendered == expected


def test_the_rendered_envoy_config_passes_envoy_mode_validate(rendering: Rendering, tmp_path: Path) -> None:
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(with_local_tls_files(rendering.config("envoy.yaml"), tmp_path)), encoding="utf-8")
    result = subprocess.run(
        [find_envoy(), "--mode", "validate", "-c", str(path), "--use-dynamic-base-id"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and "OK" in result.stdout + result.stderr, result.stdout + result.stderr


def test_envoy_fails_closed_and_keeps_its_admin_on_loopback(rendering: Rendering) -> None:
    envoy = rendering.config("envoy.yaml")
    assert envoy["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    listener = envoy["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    ext_authz = hcm["http_filters"][0]["typed_config"]
    assert ext_authz["failure_mode_allow"] is False and ext_authz["status_on_error"] == {"code": "ServiceUnavailable"}
    assert hcm["path_with_escaped_slashes_action"] == "REJECT_REQUEST"


def test_the_envoy_image_matches_the_envoy_version_tested_here(rendering: Rendering) -> None:
    version = subprocess.run([find_envoy(), "--version"], capture_output=True, text=True, check=True).stdout
    tested = re.search(r"/(\d+\.\d+)\.\d+/", version)
    assert tested is not None, version
    image = next(c["image"] for c in _containers(rendering) if c["name"] == "envoy")
    assert image.split(":")[1].startswith(f"v{tested.group(1)}.")


# --- the pod -------------------------------------------------------------------------------------


def _containers(rendering: Rendering) -> list[dict[str, Any]]:
    containers: list[dict[str, Any]] = rendering.one("Deployment")["spec"]["template"]["spec"]["containers"]
    return containers


def test_every_container_is_hardened(rendering: Rendering) -> None:
    pod = rendering.one("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    for container in _containers(rendering):
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] > 0
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]


@pytest.mark.parametrize("values_file", UNIX_SOCKET_VALUES)
def test_smartgate_is_probed_by_its_readyz_over_tcp_and_envoy_by_its_ready_endpoint(values_file: str) -> None:
    """The default transport is a Unix socket, which the kubelet's gRPC probe cannot reach: smartgate's HTTP
    /readyz (every worker SERVING, every issuer's keys loaded) answers the startup and readiness probes."""
    containers = {c["name"]: c for c in _containers(render_chart(load_values(CHART / "ci" / values_file)))}
    assert containers["smartgate"]["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert containers["smartgate"]["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert containers["smartgate"]["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert containers["envoy"]["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "envoy-ready"}


def test_with_tcp_transport_smartgate_is_probed_by_grpc_health_on_its_check_port() -> None:
    containers = {c["name"]: c for c in _containers(render_chart({**_minimal(), "grpcTransport": "tcp"}))}
    assert containers["smartgate"]["readinessProbe"]["grpc"]["port"] == 9191
    assert containers["smartgate"]["startupProbe"]["grpc"]["port"] == 9191
    assert {"name": "grpc", "containerPort": 9191, "protocol": "TCP"} in containers["smartgate"]["ports"]


@pytest.mark.parametrize("values_file", UNIX_SOCKET_VALUES)
def test_envoy_calls_smartgate_over_the_socket_in_an_emptydir_both_containers_mount(values_file: str) -> None:
    rendering = render_chart(load_values(CHART / "ci" / values_file))
    pod = rendering.one("Deployment")["spec"]["template"]["spec"]
    assert {"name": "grpc-socket", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}} in pod["volumes"]
    mounts = {c["name"]: {m["name"]: m for m in c["volumeMounts"]} for c in pod["containers"]}
    assert (
        mounts["smartgate"]["grpc-socket"]["mountPath"]
        == mounts["envoy"]["grpc-socket"]["mountPath"]
        == GRPC_SOCKET.rpartition("/")[0]
    )
    assert mounts["envoy"]["grpc-socket"]["readOnly"] is True
    assert pod["securityContext"]["supplementalGroups"] == [_runs_as_group(pod, "smartgate")]
    assert rendering.config("smartgate.yaml")["listen"]["grpc"] == f"unix:{GRPC_SOCKET}"
    cluster = next(
        c for c in rendering.config("envoy.yaml")["static_resources"]["clusters"] if c["name"] == "smartgate"
    )
    endpoints = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    paths = [e["endpoint"]["address"]["pipe"]["path"] for e in endpoints]
    workers = rendering.config("smartgate.yaml").get("workers", 1)
    assert paths == [GRPC_SOCKET, *(f"{GRPC_SOCKET}.{i}" for i in range(1, workers))]
    assert not any(p["name"] == "grpc" for c in pod["containers"] for p in c["ports"])


def test_with_tcp_transport_there_is_no_socket_volume_and_envoy_calls_loopback() -> None:
    rendering = render_chart({**_minimal(), "grpcTransport": "tcp"})
    pod = rendering.one("Deployment")["spec"]["template"]["spec"]
    assert not any(v["name"] == "grpc-socket" for v in pod["volumes"])
    assert "supplementalGroups" not in pod["securityContext"]
    assert rendering.config("smartgate.yaml")["listen"]["grpc"] == "0.0.0.0:9191"
    cluster = next(
        c for c in rendering.config("envoy.yaml")["static_resources"]["clusters"] if c["name"] == "smartgate"
    )
    assert cluster["load_assignment"]["endpoints"][0]["lb_endpoints"] == [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9191}}}}
    ]


def _runs_as_group(pod: dict[str, Any], name: str) -> int:
    group: int = next(c for c in pod["containers"] if c["name"] == name)["securityContext"]["runAsGroup"]
    return group


def test_the_service_exposes_only_envoy(rendering: Rendering) -> None:
    service = rendering.one("Service", "gw-smartgate")
    assert [port["targetPort"] for port in service["spec"]["ports"]] in (["http"], ["http", "https"])


def test_the_introspection_secret_comes_from_the_existing_secret_by_reference(production: Rendering) -> None:
    smartgate = next(c for c in _containers(production) if c["name"] == "smartgate")
    env = {item["name"]: item for item in smartgate["env"]}
    reference = env["SMARTGATE_INTROSPECTION_SECRET_1"]["valueFrom"]["secretKeyRef"]
    assert reference == {"name": "smartgate-introspection", "key": "client-secret"}
    introspection = production.config("smartgate.yaml")["issuers"][1]["introspection"]
    assert introspection["client_secret_env"] == "SMARTGATE_INTROSPECTION_SECRET_1"
    assert "s3cret" not in json.dumps(production.manifests)


def test_a_config_change_rolls_the_pods() -> None:
    values = load_values(CHART / "ci" / "minimal-values.yaml")
    before = render_chart(values).one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    changed = copy.deepcopy(values)
    changed["tokens"] = {"clockSkewSeconds": 30}
    after = render_chart(changed).one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert before["checksum/smartgate-config"] != after["checksum/smartgate-config"]
    assert before["checksum/envoy-config"] == after["checksum/envoy-config"]


def test_only_the_gateway_may_reach_the_fhir_servers_port(production: Rendering) -> None:
    policy = production.one("NetworkPolicy", "gw-smartgate-fhir-server")
    assert policy["spec"]["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "fhir-server"}}
    [rule] = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": 8443, "protocol": "TCP"}]
    assert rule["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "smartgate"


# --- scaling and disruption ----------------------------------------------------------------------


def test_the_disruption_budget_selects_exactly_the_deployments_pods(production: Rendering) -> None:
    deployment = production.one("Deployment")
    selector = production.one("PodDisruptionBudget")["spec"]["selector"]
    assert selector == deployment["spec"]["selector"]
    assert selector["matchLabels"] and selector["matchLabels"].items() <= (
        deployment["spec"]["template"]["metadata"]["labels"].items()
    )


def test_the_disruption_budget_keeps_min_available_from_values(
    production: Rendering, production_values: dict[str, Any]
) -> None:
    budget = production.one("PodDisruptionBudget")["spec"]
    assert budget["minAvailable"] == production_values["podDisruptionBudget"]["minAvailable"]
    assert "maxUnavailable" not in budget


def test_the_autoscaler_scales_the_deployment(production: Rendering) -> None:
    target = production.one("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert target == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": production.one("Deployment")["metadata"]["name"],
    }


def test_the_autoscaler_takes_its_bounds_and_cpu_target_from_values(
    production: Rendering, production_values: dict[str, Any]
) -> None:
    spec = production.one("HorizontalPodAutoscaler")["spec"]
    autoscaling = production_values["autoscaling"]
    assert (spec["minReplicas"], spec["maxReplicas"]) == (autoscaling["minReplicas"], autoscaling["maxReplicas"])
    assert spec["metrics"] == [
        {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": autoscaling["targetCPUUtilizationPercentage"]},
            },
        }
    ]


def test_the_deployment_leaves_the_replica_count_to_the_autoscaler_when_autoscaling_is_on(
    production: Rendering,
) -> None:
    assert "replicas" not in production.one("Deployment")["spec"]


def test_the_deployment_runs_replica_count_pods_when_autoscaling_is_off() -> None:
    values = load_values(CHART / "ci" / "minimal-values.yaml")
    values["replicaCount"] = 4
    assert render_chart(values).one("Deployment")["spec"]["replicas"] == 4


# --- every value reaches the smartgate config --------------------------------------------------------


def _snake(name: str) -> str:
    """A values key (camelCase) as the smartgate config spells it (snake_case)."""
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def _snake_keys(section: dict[str, Any]) -> dict[str, Any]:
    return {_snake(key): value for key, value in section.items()}


ISSUER_KEYS = ("issuer", "jwksUri", "audiences", "profile", "claimsNamespace", "algorithms")


def test_each_issuers_audiences_profile_and_algorithms_reach_the_smartgate_config(
    production: Rendering, production_values: dict[str, Any]
) -> None:
    rendered = production.config("smartgate.yaml")["issuers"]
    assert len(rendered) == len(production_values["issuers"])
    for issuer, values in zip(rendered, production_values["issuers"], strict=True):
        assert {key: issuer.get(_snake(key)) for key in ISSUER_KEYS} == {key: values.get(key) for key in ISSUER_KEYS}
    assert rendered[0]["audiences"] == ["https://fhir.payer.example.org/r4", "api://fhir"]  # the file sets them


def test_an_issuers_claims_namespace_reaches_the_smartgate_config(production_values: dict[str, Any]) -> None:
    values = copy.deepcopy(production_values)
    values["issuers"][0].update(profile="auth0", claimsNamespace="https://payer.example.org/claims/")
    issuer = render_chart(values).config("smartgate.yaml")["issuers"][0]
    assert (issuer["profile"], issuer["claims_namespace"]) == ("auth0", "https://payer.example.org/claims/")


def test_an_issuers_introspection_settings_reach_the_smartgate_config(
    production: Rendering, production_values: dict[str, Any]
) -> None:
    values = production_values["issuers"][1]["introspection"]
    rendered = production.config("smartgate.yaml")["issuers"][1]["introspection"]
    assert rendered == {
        "endpoint": values["endpoint"],
        "client_id": values["clientId"],
        "client_secret_env": "SMARTGATE_INTROSPECTION_SECRET_1",
        "auth_method": values["authMethod"],
        "cache_max_ttl_seconds": values["cacheMaxTtlSeconds"],
    }


def test_the_public_routes_reach_the_smartgate_config(production: Rendering, production_values: dict[str, Any]) -> None:
    assert production.config("smartgate.yaml")["public_routes"] == production_values["publicRoutes"]


def test_the_token_settings_reach_the_smartgate_config(
    production: Rendering, production_values: dict[str, Any]
) -> None:
    assert production.config("smartgate.yaml")["tokens"] == _snake_keys(production_values["tokens"])


def test_the_dpop_settings_reach_the_smartgate_config(production: Rendering, production_values: dict[str, Any]) -> None:
    assert production.config("smartgate.yaml")["dpop"] == _snake_keys(production_values["dpop"])


def test_an_issuers_sender_constraint_reaches_the_smartgate_config_only_when_set(production: Rendering) -> None:
    """The second production issuer requires sender-constrained tokens; the first sets nothing, so smartgate's
    own default (optional) applies."""
    first, second = production.config("smartgate.yaml")["issuers"]
    assert "sender_constraint" not in first and second["sender_constraint"] == "required"


def test_the_jwks_settings_reach_the_smartgate_config(production: Rendering, production_values: dict[str, Any]) -> None:
    assert production.config("smartgate.yaml")["jwks"] == _snake_keys(production_values["jwks"])


def test_the_fhir_server_and_look_up_settings_reach_the_smartgate_config(
    production: Rendering, production_values: dict[str, Any]
) -> None:
    fhir = production_values["fhir"]
    assert production.config("smartgate.yaml")["fhir"] == {
        "base_url": fhir["baseUrl"],
        "upstream_url": fhir["upstreamUrl"],
        "lookup": _snake_keys(fhir["lookup"]),
    }


def test_the_mode_limits_workers_logging_and_verification_reach_the_smartgate_config(
    production: Rendering, production_values: dict[str, Any]
) -> None:
    config, values = production.config("smartgate.yaml"), production_values
    assert (config["mode"], config["workers"], config["decision_log"]) == (
        values["mode"],
        values["workers"],
        values["decisionLog"],
    )
    assert config["max_request_bytes"] == values["limits"]["maxRequestBytes"]
    assert config["response_verification"] == _snake_keys(values["responseVerification"])
    assert config["audit"] == _snake_keys(values["audit"])
    assert config["smart_configuration"] == {"capabilities": values["smartConfiguration"]["capabilities"]}


# --- monitoring ------------------------------------------------------------------------------------


def _metric_names() -> set[str]:
    """Every family smartgate exports, by its family name (counters without ``_total``)."""
    collectors = [value for value in vars(metrics).values() if isinstance(value, MetricWrapperBase)]
    return {family.name for collector in collectors for family in collector.describe()}


def _families(expr: str) -> set[str]:
    return {re.sub(r"_(total|bucket|count|sum)$", "", name) for name in re.findall(r"smartgate_[a-z_]+", expr)}


def test_the_alerts_cover_the_four_failure_modes_with_real_metric_names(production: Rendering) -> None:
    rule = production.one("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    alerts = {r["alert"]: r["expr"] for group in rule["spec"]["groups"] for r in group["rules"]}
    assert set(alerts) == {"SmartgateDenyRateSpike", "SmartgateJwksStale", "SmartgateLookupErrors", "SmartgateNotReady"}
    known = _metric_names()
    for expr in alerts.values():
        used = _families(expr)
        assert used and used <= known, (used - known, expr)


def test_the_service_monitor_scrapes_the_metrics_service(production: Rendering) -> None:
    monitor = production.one("ServiceMonitor")
    metrics_service = production.one("Service", "gw-smartgate-metrics")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= metrics_service["metadata"]["labels"].items()
    assert not selector.items() <= production.one("Service", "gw-smartgate")["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"


def test_the_grafana_dashboard_queries_real_metrics(production: Rendering) -> None:
    config_map = production.one("ConfigMap", "gw-smartgate-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["smartgate.json"])
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {family for expr in expressions for family in _families(expr)}
    assert len(used) >= 8 and used <= _metric_names(), used - _metric_names()
    assert len(dashboard["panels"]) >= 6


def test_the_notes_tell_the_installer_how_to_call_the_api(rendering: Rendering) -> None:
    notes = rendering.notes
    assert "kubectl -n fhir port-forward svc/gw-smartgate 8080:8080" in notes
    assert "Authorization: Bearer" in notes and "/.well-known/smart-configuration" in notes


# --- values the schema refuses ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda v: v["fhir"].pop("upstreamUrl"), "upstreamUrl"),
        (lambda v: v["fhir"].update(baseUrl="fhir.example.org/r4"), "baseUrl"),
        (lambda v: v.update(issuers=[]), "issuers"),
        (lambda v: v["issuers"][0].update(jwksUri="ftp://idp/keys"), "jwksUri"),
        (lambda v: v["issuers"][0].update(algorithms=["HS256"]), "algorithms"),
        (lambda v: v.update(mode="allow_all"), "mode"),
        (lambda v: v.update(responseVerification={"mode": "on"}), "mode"),
        (lambda v: v.update(tokenz={}), "tokenz"),
        (
            lambda v: v["issuers"][0].update(
                introspection={
                    "endpoint": "https://idp/introspect",
                    "clientId": "x",
                    "clientSecret": "plain-text-secret",
                }
            ),
            "clientSecret",
        ),
        (lambda v: v["issuers"][0].update(senderConstraint="always"), "senderConstraint"),
        (lambda v: v.update(dpop={"algorithms": ["HS256"]}), "algorithms"),
        (lambda v: v.update(dpop={"algorithms": ["none"]}), "algorithms"),
        (lambda v: v.update(dpop={"algorithms": []}), "algorithms"),
        (lambda v: v.update(dpop={"iatWindowSeconds": 0}), "iatWindowSeconds"),
        (lambda v: v.update(dpop={"replayCacheSize": 2.5}), "replayCacheSize"),
        (lambda v: v.update(dpop={"nonces": True}), "nonces"),
    ],
    ids=[
        "no-upstream",
        "base-not-url",
        "no-issuers",
        "jwks-not-http",
        "hmac",
        "bad-mode",
        "bad-verification",
        "unknown-key",
        "inline-secret",
        "bad-sender-constraint",
        "dpop-hmac",
        "dpop-none",
        "dpop-no-algorithms",
        "dpop-zero-window",
        "dpop-fractional-cache",
        "dpop-unknown-key",
    ],
)
def test_bad_values_fail_to_render_naming_the_value(change: Any, named: str) -> None:
    values = load_values(CHART / "ci" / "minimal-values.yaml")
    change(values)
    with pytest.raises(HelmError) as raised:
        render_chart(values)
    assert named in str(raised.value), str(raised.value)


# --- the front door (issue 17): Envoy's client-facing limits and the optional mTLS listener -----------


def _hcm(envoy: dict[str, Any], listener: str = "fhir_ingress") -> dict[str, Any]:
    [found] = [item for item in envoy["static_resources"]["listeners"] if item["name"] == listener]
    typed: dict[str, Any] = found["filter_chains"][0]["filters"][0]["typed_config"]
    return typed


def test_the_front_door_values_reach_the_envoy_config(production: Rendering, production_values: dict[str, Any]) -> None:
    envoy, values = production.config("envoy.yaml"), production_values["envoy"]
    [connections] = [
        m
        for m in envoy["overload_manager"]["resource_monitors"]
        if m["name"] == "envoy.resource_monitors.global_downstream_max_connections"
    ]
    assert connections["typed_config"]["max_active_downstream_connections"] == values["maxConnections"]
    hcm = _hcm(envoy)
    assert hcm["request_headers_timeout"] == f"{values['timeouts']['requestHeadersSeconds']}s"
    assert hcm["xff_num_trusted_hops"] == values["xffNumTrustedHops"] and hcm["use_remote_address"] is True
    assert hcm["http2_protocol_options"]["max_concurrent_streams"] == values["http2"]["maxConcurrentStreams"]


def test_probes_and_the_admin_are_outside_the_connection_cap(rendering: Rendering) -> None:
    envoy = rendering.config("envoy.yaml")
    [ready] = [item for item in envoy["static_resources"]["listeners"] if item["name"] == "envoy_ready"]
    assert ready["ignore_global_conn_limit"] is True and envoy["admin"]["ignore_global_conn_limit"] is True


def test_without_tls_values_there_is_no_mtls_listener_port_or_volume() -> None:
    minimal = render_chart(load_values(CHART / "ci" / "minimal-values.yaml"))
    listeners = [item["name"] for item in minimal.config("envoy.yaml")["static_resources"]["listeners"]]
    assert listeners == ["fhir_ingress", "envoy_ready"]
    pod = minimal.one("Deployment")["spec"]["template"]["spec"]
    assert "envoy-tls" not in {volume["name"] for volume in pod["volumes"]}


def test_the_mtls_listener_mounts_the_existing_secrets_and_is_exposed(production: Rendering) -> None:
    pod = production.one("Deployment")["spec"]["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if v["name"] == "envoy-tls"]
    sources = [
        (s["secret"]["name"], [item["path"] for item in s["secret"]["items"]]) for s in volume["projected"]["sources"]
    ]
    assert sources == [("fhir-gateway-tls", ["tls.crt", "tls.key"]), ("partner-client-ca", ["client-ca.crt"])]
    envoy_container = next(c for c in _containers(production) if c["name"] == "envoy")
    assert {"name": "envoy-tls", "mountPath": TLS_MOUNT, "readOnly": True} in envoy_container["volumeMounts"]
    assert {"name": "https", "containerPort": 8443, "protocol": "TCP"} in envoy_container["ports"]
    service_ports = production.one("Service", "gw-smartgate")["spec"]["ports"]
    assert {"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"} in service_ports
    [ingress, *_] = production.one("NetworkPolicy", "gw-smartgate")["spec"]["ingress"]
    assert {"port": "https", "protocol": "TCP"} in ingress["ports"]


def test_the_mtls_listener_checks_client_certificates_against_the_client_ca(production: Rendering) -> None:
    tls = production.config("envoy.yaml")["static_resources"]["listeners"][1]
    context = tls["filter_chains"][0]["transport_socket"]["typed_config"]
    assert context["common_tls_context"]["validation_context"] == {
        "trusted_ca": {"filename": f"{TLS_MOUNT}/client-ca.crt"}
    }
    assert context["require_client_certificate"] is False  # as the production values ask
    ext_authz = _hcm(production.config("envoy.yaml"), "fhir_ingress_tls")["http_filters"][0]["typed_config"]
    assert ext_authz["include_peer_certificate"] is True


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda v: v.setdefault("envoy", {}).update(tls={"enabled": True}), "secretName"),
        (lambda v: v.setdefault("envoy", {}).update(maxConnections=0), "maxConnections"),
        (
            lambda v: v.setdefault("envoy", {}).update(http2={"initialStreamWindowBytes": 1024}),
            "initialStreamWindowBytes",
        ),
        (lambda v: v.setdefault("envoy", {}).update(timeouts={"requestHeadersSeconds": 0}), "requestHeadersSeconds"),
        (lambda v: v.setdefault("envoy", {}).update(timeouts={"streamIdleSeconds": 30}), "streamIdleSeconds"),
        (lambda v: v.setdefault("envoy", {}).update(xffNumTrustedHops=-1), "xffNumTrustedHops"),
    ],
    ids=[
        "tls-without-secret",
        "no-connections",
        "tiny-http2-window",
        "zero-header-timeout",
        "idle-shorter-than-upstream",
        "negative-hops",
    ],
)
def test_bad_front_door_values_fail_to_render_naming_the_value(change: Any, named: str) -> None:
    values = load_values(CHART / "ci" / "minimal-values.yaml")
    change(values)
    with pytest.raises(HelmError) as raised:
        render_chart(values)
    assert named in str(raised.value), str(raised.value)


def _quantity_bytes(quantity: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    return int(quantity[:-2]) * units[quantity[-2:]] if quantity[-2:] in units else int(quantity)


def test_envoys_heap_limit_comes_before_its_containers_memory_limit(rendering: Rendering) -> None:
    """Envoy answers 503 at 98 % of its heap limit; the kernel kills it at the container limit."""
    monitors = {
        m["name"]: m["typed_config"] for m in rendering.config("envoy.yaml")["overload_manager"]["resource_monitors"]
    }
    heap = monitors["envoy.resource_monitors.fixed_heap"]["max_heap_size_bytes"]
    envoy_container = next(c for c in _containers(rendering) if c["name"] == "envoy")
    assert heap <= 0.8 * _quantity_bytes(envoy_container["resources"]["limits"]["memory"])
