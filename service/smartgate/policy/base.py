"""The shared kernel every rule module stands on, so that no rule module needs another one.

``DenyError`` is how a rule refuses, always with a reason code; ``decision`` builds the
Decision that names the request; ``require_*`` and ``patient_queries`` /
``check_patient_params`` are the checks reads, searches, writes and operations have in
common. This module imports no rule module: the dispatcher in ``smartgate.policy`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from smartgate.config.model import DEFAULT_EXTRA_BINDINGS, DEFAULT_PATIENT_CLOSED_TYPES, OperationRule
from smartgate.core.reasons import Reason
from smartgate.fhir.compartment import BoundTypes, bound_types, mentioned_patients, proving_params
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
    # With responses_verified, a patient/ read of a bound type is proven by its response, not looked up
    # (policy/read.py). Off for Bundle entries: a batch answers each entry's 404 inside a 200, which would tell
    # "no such id" from "another patient's" where the look-up answers both alike.
    reads_proven_by_response: bool = True
    follow_patient_links: bool = False  # compartment.follow_patient_links: R4's Patient.link rule
    # A patient/ search of a bound type that names no patient gains the binding parameter (Decision.narrowing).
    search_narrowing: bool = True
    # Types outside the R4 compartment bound to one patient like compartment types (Device: patient).
    extra_binding_params: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: dict(DEFAULT_EXTRA_BINDINGS), hash=False
    )

    @property
    def bound(self) -> BoundTypes:
        """The compartment's types and the extra bound ones, with their look-up and binding parameters."""
        return bound_types(self.extra_binding_params)


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


def patient_queries(
    resource_type: str,
    resource_id: str,
    patient: str,
    constraints: tuple[Query, ...],
    follow_patient_links: bool = False,
    *,
    membership: Mapping[str, tuple[str, ...]],
) -> list[Query]:
    """Searches any of which proves the resource is the patient's (and meets a constraint set).

    Another Patient is provable only through ``Patient.link`` and only when links are followed;
    the default (writes never pass it) leaves no query, so nothing proves it."""
    if resource_type not in membership:  # ``PolicySettings.bound.membership``: with the extra bound types
        return list(constraints)  # outside the compartment: only the constraint needs proving
    params = (
        proving_params(resource_type, follow_patient_links) if resource_type == "Patient" else membership[resource_type]
    )
    check = compartment_check(resource_type, resource_id, patient, params, constraints)
    queries = list(check.queries)
    if resource_type == "Patient" and resource_id == patient:
        queries.extend(constraints)
    return queries


def require_own_patient_record(resource_type: str, resource_id: str, patient: str, settings: PolicySettings) -> None:
    """Patient/other is never in the context patient's compartment unless Patient.link is followed:
    refuse it before any look-up (HAPI's interceptors treat linked records the same way)."""
    if resource_type == "Patient" and resource_id != patient and not settings.follow_patient_links:
        raise DenyError(
            Reason.COMPARTMENT_OTHER_PATIENT, "another patient's record (compartment.follow_patient_links is off)"
        )


def check_patient_params(params: tuple[SearchParam, ...], patient: str, allowed: frozenset[str]) -> None:
    for param in params:
        if param.code.startswith("_") and param.code not in allowed:
            raise DenyError(Reason.SEARCH_PARAMETER_NOT_PERMITTED, f"{param.code} is not permitted here")
        if mentioned_patients(param.value) - {patient}:
            raise DenyError(Reason.COMPARTMENT_OTHER_PATIENT, f"parameter {param.code} names another patient")
