"""The whole Check for a cached token, as the gRPC servicer runs it (issue 16, item 3: ≤ 50 µs of Python).

CheckRequest (20 headers) -> HttpRequest -> token cache -> policy -> CheckResponse, the decision metric,
the latency histogram, a decision-log line and (audit-on) an audit event, to files through their writers.
Each benchmark asserts the answer it times, so with ``--benchmark-disable`` they run once as tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tokens
from conftest import AUDIENCE, run_now
from envoy.service.auth.v3 import external_auth_pb2
from google.rpc import code_pb2
from test_decision_micro import _check_request

from smartgate.config.model import Config
from smartgate.envoy_glue.authz_service import AuthorizationService, Pipeline
from smartgate.envoy_glue.check_response import ResponseBuilder
from smartgate.pipeline.audit_event import AuditEventLog
from smartgate.pipeline.authorizer import Authorizer
from smartgate.pipeline.decision_log import DecisionLog
from smartgate.pipeline.fhir_lookup import MembershipLookup
from smartgate.pipeline.public_routes import PublicRoutes
from smartgate.policy import PolicySettings
from smartgate.tokens.verifier import TokenVerifier


@pytest.fixture(params=["audit-off", "audit-on"])
def service(
    request: pytest.FixtureRequest, verifier: TokenVerifier, config: Config, tmp_path: Path
) -> Iterator[AuthorizationService]:
    """As shipped (decision log on, audit off), and with the audit log on too."""
    authorizer = Authorizer(
        "/fhir",
        PublicRoutes("/fhir", config.public_routes),
        verifier,
        PolicySettings(AUDIENCE),
        MembershipLookup("http://127.0.0.1:9/fhir", config.fhir.lookup, None),  # type: ignore[arg-type]
        config.tokens.max_token_bytes,
    )
    pipeline = Pipeline(
        authorizer,
        ResponseBuilder(config.headers, config.realm),
        DecisionLog(str(tmp_path / "decisions.jsonl")),
        AuditEventLog(str(tmp_path / "audit.jsonl") if request.param == "audit-on" else "off", AUDIENCE, "bench"),
    )
    yield AuthorizationService(pipeline)
    pipeline.decision_log.close()
    pipeline.audit_log.close()


def test_whole_check_for_a_cached_token(benchmark: Any, service: AuthorizationService, keys: tokens.BenchKeys) -> None:
    """One cached-token search through ``AuthorizationService.Check``: everything but gRPC itself."""
    request = _check_request(tokens.sign(keys, "ES256", AUDIENCE))
    assert run_now(service.Check(request, None)).status.code == code_pb2.OK  # the token is now cached

    def check() -> external_auth_pb2.CheckResponse:
        return run_now(service.Check(request, None))

    response = benchmark(check)
    assert response.status.code == code_pb2.OK
    assert any(option.header.key == "x-smart-patient" for option in response.ok_response.headers)
