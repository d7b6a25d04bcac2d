"""The gRPC face: envoy.service.auth.v3.Authorization/Check.

CheckRequest -> HttpRequest -> Decision -> CheckResponse, one stage each. In dry-run mode
the decision is computed, logged and counted as usual, but Envoy is told to allow the
request with no header changed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.rpc import code_pb2, status_pb2

from smartgate.core.http import HttpRequest
from smartgate.core.reasons import Reason
from smartgate.envoy_glue.check_request import from_check_request
from smartgate.envoy_glue.check_response import ResponseBuilder
from smartgate.pipeline.audit_event import AuditEventLog
from smartgate.pipeline.authorizer import Authorizer
from smartgate.pipeline.decision_log import DecisionLog
from smartgate.policy.decision import Decision
from smartgate.telemetry import metrics

log = logging.getLogger("smartgate.authz")

_DRY_RUN_ALLOW = external_auth_pb2.CheckResponse(
    status=status_pb2.Status(code=code_pb2.OK), ok_response=external_auth_pb2.OkHttpResponse()
)


@dataclass(frozen=True)
class Pipeline:
    """Everything one decision needs; replaced as a whole when the config is reloaded."""

    authorizer: Authorizer
    responses: ResponseBuilder
    decision_log: DecisionLog
    audit_log: AuditEventLog
    dry_run: bool = False


def read_check_request(request: external_auth_pb2.CheckRequest) -> tuple[HttpRequest, Decision | None]:
    """The HTTP request Envoy asks about, or (an empty request, a deny) when it cannot be read."""
    try:
        return from_check_request(request), None
    except Exception:
        log.exception("unreadable CheckRequest; denying")
        return HttpRequest(method="", path=""), Decision(Reason.REQUEST_MALFORMED, "the request could not be read")


def answer(
    pipeline: Pipeline, http: HttpRequest, decision: Decision, started: float
) -> external_auth_pb2.CheckResponse:
    """The CheckResponse for a decision, with its metrics, decision-log line and audit event."""
    response = _DRY_RUN_ALLOW if pipeline.dry_run else pipeline.responses.build(decision, http.request_id)
    elapsed = time.perf_counter() - started
    metrics.DECISIONS_BY_REASON[decision.reason].inc()  # the child resolved once per reason code
    metrics.DECISION_SECONDS.observe(elapsed)
    pipeline.decision_log.record(http, decision, elapsed, dry_run=pipeline.dry_run)
    pipeline.audit_log.record(http, decision)
    return response


class AuthorizationService(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    async def Check(  # noqa: N802 - the gRPC method name
        self, request: external_auth_pb2.CheckRequest, context: Any
    ) -> external_auth_pb2.CheckResponse:
        pipeline = self.pipeline  # one consistent pipeline per request, even across a reload
        started = time.perf_counter()
        http, unreadable = read_check_request(request)
        decision = unreadable if unreadable is not None else await pipeline.authorizer.authorize(http)
        return answer(pipeline, http, decision, started)
