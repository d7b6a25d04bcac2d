"""The gRPC face: envoy.service.auth.v3.Authorization/Check.

CheckRequest -> HttpRequest -> Decision -> CheckResponse, one stage each.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc

from smartgate.authorizer import Authorizer
from smartgate.decision import Decision
from smartgate.decision_log import DecisionLog
from smartgate.reasons import Reason
from smartgate.request import HttpRequest, from_check_request
from smartgate.response import ResponseBuilder

log = logging.getLogger("smartgate.authz")


class AuthorizationService(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    def __init__(self, authorizer: Authorizer, responses: ResponseBuilder, decision_log: DecisionLog) -> None:
        self._authorizer = authorizer
        self._responses = responses
        self._decision_log = decision_log

    async def Check(  # noqa: N802 - the gRPC method name
        self, request: external_auth_pb2.CheckRequest, context: Any
    ) -> external_auth_pb2.CheckResponse:
        started = time.perf_counter()
        try:
            http = from_check_request(request)
        except Exception:
            log.exception("unreadable CheckRequest; denying")
            http = HttpRequest(method="", path="")
            decision = Decision(Reason.REQUEST_MALFORMED, "the request could not be read")
        else:
            decision = await self._authorizer.authorize(http)
        response = self._responses.build(decision)
        self._decision_log.record(http, decision, time.perf_counter() - started)
        return response
