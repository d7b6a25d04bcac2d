"""The decision path end to end: HttpRequest -> Decision, with the I/O at the edges.

public route? -> bearer token -> verified TokenContext -> FhirRequest -> policy -> look-up.
Every exit is a Decision with a reason code; an unexpected exception becomes a deny.
"""

from __future__ import annotations

import logging

from smartgate.bearer import BearerError, extract_bearer
from smartgate.decision import Decision, MembershipCheck
from smartgate.fhir_request import RequestError, parse_fhir_request
from smartgate.membership import LookupError, MembershipLookup
from smartgate.policy import PolicySettings, decide
from smartgate.public_routes import PublicRoutes
from smartgate.reasons import Reason
from smartgate.request import HttpRequest
from smartgate.verifier import TokenError, TokenVerifier

log = logging.getLogger("smartgate.authorizer")


class Authorizer:
    def __init__(
        self,
        base_path: str,
        public_routes: PublicRoutes,
        verifier: TokenVerifier,
        policy: PolicySettings,
        lookup: MembershipLookup,
        max_token_bytes: int,
    ) -> None:
        self._base_path = base_path
        self._public_routes = public_routes
        self._verifier = verifier
        self._policy = policy
        self._lookup = lookup
        self._max_token_bytes = max_token_bytes

    async def authorize(self, http: HttpRequest) -> Decision:
        try:
            return await self._authorize(http)
        except Exception:
            log.exception("unexpected error while deciding; denying")
            return Decision(Reason.INTERNAL_ERROR, "the authorizer failed; the request is denied")

    async def _authorize(self, http: HttpRequest) -> Decision:
        if self._public_routes.matches(http):
            return Decision(Reason.ALLOWED_PUBLIC_ROUTE, "public route")
        token = extract_bearer(http.headers, self._max_token_bytes)
        if token is None:
            return Decision(Reason.TOKEN_MISSING, "a bearer token is required")
        if isinstance(token, BearerError):
            return Decision(token.reason, token.message)
        context = await self._verifier.verify(token)
        if isinstance(context, TokenError):
            return Decision(context.reason, context.message)
        request = parse_fhir_request(http, self._base_path)
        if isinstance(request, RequestError):
            return Decision(request.reason, request.message, context)
        outcome = decide(request, context, self._policy)
        if isinstance(outcome, Decision):
            return outcome
        return await self._check_membership(outcome, Decision(
            Reason.ALLOWED_COMPARTMENT_MEMBER, "", context, request.interaction.value, outcome.resource_type
        ))

    async def _check_membership(self, check: MembershipCheck, template: Decision) -> Decision:
        try:
            result = await self._lookup.is_member(check)
        except LookupError as exc:
            log.warning("compartment look-up failed: %s", exc)
            return _with(template, Reason.LOOKUP_FAILED, "the compartment look-up failed")
        if result.member:
            return _with(template, Reason.ALLOWED_COMPARTMENT_MEMBER, "in the context patient's compartment")
        return _with(template, Reason.NOT_IN_COMPARTMENT,
                     f"the {check.resource_type} is not in the context patient's compartment")


def _with(template: Decision, reason: Reason, message: str) -> Decision:
    return Decision(reason, message, template.context, template.interaction, template.resource_type)
