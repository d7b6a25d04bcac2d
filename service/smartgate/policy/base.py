"""The shared kernel every rule module stands on, so that no rule module needs another one.

``DenyError`` is how a rule refuses, always with a reason code; ``decision`` builds the
Decision that names the request; ``require_*`` and ``patient_queries`` /
``check_patient_params`` are the checks reads, searches, writes and operations have in
common. This module imports no rule module: the dispatcher in ``smartgate.policy`` does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from smartgate.config.model import DEFAULT_PATIENT_CLOSED_TYPES, OperationRule
from smartgate.core.reasons import Reason
from smartgate.fhir.compartment import MEMBERSHIP_PARAMS, mentioned_patients
from smartgate.fhir.query import SearchParam
from smartgate.fhir.request import FhirRequest
from smartgate.policy.access import Access, resolve_access
from smartgate.policy.decision import Decision
from smartgate.policy.plan import Pending, Query, compartment_check
from smartgate.tokens.context import TokenContext


@dataclass(frozen=True)
class PolicySettings:
    fhir_base_url: str
    patient_closed_types: frozenset[str] = DEFAULT_PATIENT_CLOSED_TYPES
    operations: tuple[OperationRule, ...] = field(default_factory=tuple)
    max_bundle_entries: int = 500
    responses_verified: bool = False  # response verification enforces: every patient-context response is checked


# What every rule and the dispatcher itself are: a request and its token to a Decision or a look-up plan.
# The Bundle rule receives one as its entry decider (HAPI's IRuleApplier), so it never imports the dispatcher.
Rule = Callable[[FhirRequest, TokenContext, PolicySettings], Decision | Pending]


class DenyError(Exception):
    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def decision(reason: Reason, message: str, request: FhirRequest, token: TokenContext) -> Decision:
    searched = request.compartment_type or request.resource_type or ""
    return Decision(reason, message, token, request.interaction.value, searched)


def require_access(token: TokenContext, resource_type: str, permission: str) -> Access:
    access = resolve_access(token.grants, resource_type, permission)
    if not access.granted:
        raise DenyError(Reason.SCOPE_INSUFFICIENT, f"no scope grants '{permission}' on {resource_type}")
    return access


def require_patient(token: TokenContext) -> str:
    if token.patient is None:  # the verifier refuses such tokens; this keeps the rule local
        raise DenyError(Reason.PATIENT_CONTEXT_MISSING, "patient/ scopes need a patient launch context")
    return token.patient


def require_open_type(resource_type: str, settings: PolicySettings) -> None:
    if resource_type in settings.patient_closed_types:
        raise DenyError(Reason.SCOPE_INSUFFICIENT, f"{resource_type} is not open to patient/ scopes")


def patient_queries(resource_type: str, resource_id: str, patient: str, constraints: tuple[Query, ...]) -> list[Query]:
    """Searches any of which proves the resource is the patient's (and meets a constraint set)."""
    if resource_type not in MEMBERSHIP_PARAMS:
        return list(constraints)  # outside the compartment: only the constraint needs proving
    check = compartment_check(resource_type, resource_id, patient, MEMBERSHIP_PARAMS[resource_type], constraints)
    queries = list(check.queries)
    if resource_type == "Patient" and resource_id == patient:
        queries.extend(constraints)
    return queries


def check_patient_params(params: tuple[SearchParam, ...], patient: str, allowed: frozenset[str]) -> None:
    for param in params:
        if param.code.startswith("_") and param.code not in allowed:
            raise DenyError(Reason.SEARCH_PARAMETER_NOT_PERMITTED, f"{param.code} is not permitted here")
        if mentioned_patients(param.value) - {patient}:
            raise DenyError(Reason.COMPARTMENT_OTHER_PATIENT, f"parameter {param.code} names another patient")
