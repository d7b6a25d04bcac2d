"""Health: grpc.health.v1 on the gRPC port, /healthz and /readyz on the HTTP port; an IdP that is
down at start-up leaves smartgate alive but not ready (and failing closed through Envoy) until the
backoff retries find the IdP up."""

from __future__ import annotations

import re
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from smartgate.dev.demo.upstream import start_upstream
from smartgate.envoy_glue.bootstrap import EnvoySettings, render
from tests.support.idp import IdentityProvider, base_claims, new_keys, sign
from tests.support.ports import free_port
from tests.support.processes import stop
from tests.support.stack import gated_fhir, grpc_health, launch_smartgate, running_envoy, smartgate_config
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration

AUTHORIZATION = "envoy.service.auth.v3.Authorization"
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) WARNING smartgate\.jwks: JWKS refresh failed", re.M)


def test_ready_smartgate_reports_serving_on_grpc_health_and_200_on_http(tmp_path: Path) -> None:
    with gated_fhir(tmp_path) as gated:
        grpc = gated.smartgate.grpc
        assert grpc_health(grpc, "") == "SERVING"
        assert grpc_health(grpc, AUTHORIZATION) == "SERVING"
        assert grpc_health(grpc, "no.such.Service") == "NOT_FOUND"
        assert httpx.get(gated.smartgate.url("/healthz")).status_code == 200
        assert httpx.get(gated.smartgate.url("/readyz")).status_code == 200
        assert gated.get("/Observation?patient=123", gated.token()).status_code == 200


def _failure_times(output: str) -> list[float]:
    return [datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp() for stamp in _LOG_TIME.findall(output)]


def test_idp_down_at_start_up_means_alive_not_ready_until_backoff_finds_it(tmp_path: Path) -> None:
    keys = new_keys()
    idp_port = free_port()  # nothing listens here yet: discovery is refused
    issuer = f"http://127.0.0.1:{idp_port}/idp"
    upstream_port, grpc_port, http_port, envoy_port, admin_port = (free_port() for _ in range(5))
    upstream = start_upstream("127.0.0.1", upstream_port)
    base_url = f"http://127.0.0.1:{envoy_port}/fhir"
    config = smartgate_config(
        grpc_port=grpc_port,
        http_port=http_port,
        base_url=base_url,
        upstream_url=f"http://127.0.0.1:{upstream_port}/fhir",
        issuers=[{"issuer": issuer}],
        workdir=tmp_path,
    )
    envoy = render(
        EnvoySettings(
            listen_host="127.0.0.1",
            listen_port=envoy_port,
            admin_port=admin_port,
            authz_port=grpc_port,
            upstream_url=f"http://127.0.0.1:{upstream_port}/fhir",
            smartgate_http_port=http_port,
        )
    )
    token = sign(keys, {**base_claims(issuer, base_url), "scope": "launch/patient patient/*.rs", "patient": "123"})
    smartgate = launch_smartgate(config, tmp_path, wait="alive")
    idp: IdentityProvider | None = None
    try:
        with running_envoy(envoy, tmp_path), httpx.Client(timeout=5) as client:
            alive_at = time.time()
            assert httpx.get(smartgate.url("/readyz")).status_code == 503
            assert grpc_health(smartgate.grpc, "") == "NOT_SERVING"
            assert grpc_health(smartgate.grpc, AUTHORIZATION) == "NOT_SERVING"
            denied = client.get(f"{base_url}/Observation?patient=123", headers={"authorization": f"Bearer {token}"})
            assert denied.status_code == 503
            assert "jwks_unavailable" in denied.text
            assert "x-demo-received-path" not in denied.headers

            time.sleep(max(0.0, alive_at + 1.6 - time.time()))  # two refused attempts: t0 and t0 + 1 s
            assert smartgate.process.poll() is None, "an IdP down at start-up must not crash smartgate"
            assert httpx.get(smartgate.url("/healthz")).status_code == 200
            idp = IdentityProvider(keys, port=idp_port)
            assert wait_until(lambda: httpx.get(smartgate.url("/readyz")).status_code == 200, seconds=6)
            ready_at = time.time()

            assert grpc_health(smartgate.grpc, "") == "SERVING"
            assert grpc_health(smartgate.grpc, AUTHORIZATION) == "SERVING"
            allowed = client.get(f"{base_url}/Observation?patient=123", headers={"authorization": f"Bearer {token}"})
            assert allowed.status_code == 200

        failures = _failure_times(smartgate.output())
        assert len(failures) == 2, smartgate.output()
        assert 0.8 <= failures[1] - failures[0] <= 1.6  # first retry after 1 s
        first_success = idp.discovery_times[0]
        assert 1.8 <= first_success - failures[1] <= 2.6  # then the delay doubles to 2 s
        assert ready_at - alive_at < 6
        metrics = smartgate.metrics()
        assert metrics.value("smartgate_jwks_fetches_total", issuer=issuer, result="failure") == 2
        assert metrics.value("smartgate_jwks_fetches_total", issuer=issuer, result="success") == 1
        assert metrics.value("smartgate_ready") == 1
    finally:
        stop(smartgate.process)
        if idp is not None:
            idp.close()
        upstream.shutdown()
        upstream.server_close()
