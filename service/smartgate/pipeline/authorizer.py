"""The decision path end to end: HttpRequest -> Decision, with the I/O at the edges.

public route? -> bearer token -> verified TokenContext -> FhirRequest -> policy -> look-ups.
Every exit is a Decision with a reason code; an unexpected exception becomes a deny.
"""

from __future__ import annotations

import asyncio
import logging

from smartgate.core.http import HttpRequest
from smartgate.core.reasons import Reason, Refusal
from smartgate.fhir.compartment import MEMBERSHIP_PARAMS
from smartgate.fhir.request import parse_fhir_request
from smartgate.fhir.resources import belongs_to_patient
from smartgate.pipeline.fhir_lookup import FhirLookupError, MembershipLookup
from smartgate.pipeline.public_routes import PublicRoutes
from smartgate.policy import PolicySettings, decide
from smartgate.policy.decision import Decision
from smartgate.policy.plan import BinaryCheck, LookupCheck, MembershipCheck, Pending, VersionCheck, compartment_check
from smartgate.tokens.bearer import extract_bearer
from smartgate.tokens.verifier import TokenVerifier

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
        if isinstance(token, Refusal):
            return Decision(token.reason, token.message)
        context = await self._verifier.verify(token)
        if isinstance(context, Refusal):
            return Decision(context.reason, context.message)
        request = parse_fhir_request(http, self._base_path)
        if isinstance(request, Refusal):
            return Decision(request.reason, request.message, context)
        outcome = decide(request, context, self._policy)
        if isinstance(outcome, Decision):
            return outcome
        return await self._run_checks(outcome)

    async def _run_checks(self, pending: Pending) -> Decision:
        template = pending.allow
        results = await asyncio.gather(*(self._check(check) for check in pending.checks), return_exceptions=True)
        for check, result in zip(pending.checks, results, strict=True):
            where = f"{check.label}: " if check.label else ""
            if isinstance(result, FhirLookupError):
                log.warning("look-up failed: %s", result)
                return _with(template, Reason.LOOKUP_FAILED, f"{where}the compartment look-up failed")
            if isinstance(result, BaseException):
                raise result
            if not result:
                return _with(template, Reason.NOT_IN_COMPARTMENT,
                             f"{where}the resource is not in the context patient's compartment")
        return template

    async def _check(self, check: LookupCheck) -> bool:
        if isinstance(check, BinaryCheck):
            return await self._binary(check)
        if isinstance(check, VersionCheck):
            versions = await self._lookup.versions(check.resource_type, check.resource_id, check.version_id)
            return all(
                isinstance(version, dict) and version.get("resourceType") == check.resource_type
                and belongs_to_patient(version, check.patient_id, self._policy.fhir_base_url)
                for version in versions
            )
        result = await self._lookup.is_member(check)
        if result.member:
            return True
        if check.absent_ok:
            return not await self._lookup.exists(check.resource_type, check.resource_id)
        return False

    async def _binary(self, check: BinaryCheck) -> bool:
        target = await self._lookup.binary_security_context(check.resource_id, self._policy.fhir_base_url)
        if target is None:
            return False
        resource_type, resource_id = target
        if resource_type == "Patient" and resource_id == check.patient_id:
            return True
        if resource_type not in MEMBERSHIP_PARAMS:
            return False
        membership = compartment_check(resource_type, resource_id, check.patient_id, MEMBERSHIP_PARAMS[resource_type])
        return (await self._lookup.is_member(membership)).member


def _with(template: Decision, reason: Reason, message: str) -> Decision:
    return Decision(reason, message, template.context, template.interaction, template.resource_type)


__all__ = ["Authorizer", "MembershipCheck"]
