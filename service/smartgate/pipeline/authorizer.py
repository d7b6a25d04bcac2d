"""The decision path end to end: HttpRequest -> Decision, with the I/O at the edges.

public route? -> bearer token -> verified TokenContext -> FhirRequest -> policy -> look-ups.
Every exit is a Decision with a reason code; an unexpected exception becomes a deny.
"""

from __future__ import annotations

import asyncio
import logging

from smartgate.core.http import HttpRequest
from smartgate.core.reasons import Reason, Refusal
from smartgate.fhir.compartment import proving_params
from smartgate.fhir.request import parse_fhir_request
from smartgate.fhir.resources import belongs_to_patient
from smartgate.pipeline.fhir_lookup import FhirLookupError, MembershipLookup
from smartgate.pipeline.public_routes import PublicRoutes
from smartgate.policy import PolicySettings, decide
from smartgate.policy.decision import Decision
from smartgate.policy.plan import BinaryCheck, LookupCheck, MembershipCheck, Pending, VersionCheck, compartment_check
from smartgate.tokens.bearer import extract_credentials
from smartgate.tokens.sender_constraint import SenderConstraints
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
        sender_constraints: SenderConstraints | None = None,
    ) -> None:
        self._base_path = base_path
        self._public_routes = public_routes
        self._verifier = verifier
        self._policy = policy
        self._lookup = lookup
        self._max_token_bytes = max_token_bytes
        # Without DPoP settings a DPoP-bound token is refused; certificate-bound tokens are still checked.
        self._senders = sender_constraints or SenderConstraints(policy.fhir_base_url)

    @property
    def sender_constraints(self) -> SenderConstraints:
        return self._senders

    async def authorize(self, http: HttpRequest) -> Decision:
        try:
            return await self._authorize(http)
        except Exception:
            log.exception("unexpected error while deciding; denying")
            return Decision(Reason.INTERNAL_ERROR, "the authorizer failed; the request is denied")

    async def _authorize(self, http: HttpRequest) -> Decision:
        if self._public_routes.matches(http):
            return Decision(Reason.ALLOWED_PUBLIC_ROUTE, "public route")
        credentials = extract_credentials(http.headers, self._max_token_bytes, dpop=self._senders.dpop_enabled)
        if credentials is None:
            return Decision(Reason.TOKEN_MISSING, "a bearer token is required")
        if isinstance(credentials, Refusal):
            return Decision(credentials.reason, credentials.message)
        context = await self._verifier.verify(credentials.token)
        if isinstance(context, Refusal):
            return Decision(context.reason, context.message)
        unproven = self._senders.check(context, credentials, http)  # every request: proofs are never cached
        if unproven is not None:
            return Decision(unproven.reason, unproven.message, context)
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
                return _with(
                    template,
                    Reason.NOT_IN_COMPARTMENT,
                    f"{where}the resource is not in the context patient's compartment",
                )
        return template

    async def _check(self, check: LookupCheck) -> bool:
        if isinstance(check, BinaryCheck):
            return await self._binary(check)
        if isinstance(check, VersionCheck):
            versions = await self._lookup.versions(check.resource_type, check.resource_id, check.version_id)
            return all(
                isinstance(version, dict)
                and version.get("resourceType") == check.resource_type
                and belongs_to_patient(
                    version, check.patient_id, self._policy.fhir_base_url, self._policy.follow_patient_links
                )
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
        params = proving_params(resource_type, self._policy.follow_patient_links, self._policy.bound.membership)
        if not params:  # outside the compartment, or another Patient while links are not followed
            return False
        membership = compartment_check(resource_type, resource_id, check.patient_id, params)
        return (await self._lookup.is_member(membership)).member


def _with(template: Decision, reason: Reason, message: str) -> Decision:
    return Decision(reason, message, template.context, template.interaction, template.resource_type)


__all__ = ["Authorizer", "MembershipCheck"]
