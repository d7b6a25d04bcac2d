"""Reads (read, vread, instance history) have their own module so that a change to them leaves the kernel alone.

Under a user/ or system/ scope the scope decides. Under a patient/ scope the resource must be
proven to be the context patient's by a look-up (``MembershipCheck``), a Binary by its
securityContext (``BinaryCheck``), and past versions each by their own (``VersionCheck``).

When response verification enforces, a read of a bound type is proven by its response instead
(``allowed_verified_by_response``): the ext_proc stage checks every resource of the response, each
version of a history included, before a byte reaches the client, so the look-up would only repeat
it at the cost of a second FHIR round trip. Writes still look up first (policy/write.py).
"""

from __future__ import annotations

from smartgate.core.reasons import Reason
from smartgate.fhir.compartment import MEMBERSHIP_PARAMS
from smartgate.fhir.request import FhirRequest, Interaction
from smartgate.policy.access import Access, resolve_access
from smartgate.policy.base import (
    DenyError,
    PolicySettings,
    check_patient_params,
    decision,
    patient_queries,
    require_access,
    require_open_type,
    require_own_patient_record,
    require_patient,
)
from smartgate.policy.decision import Decision
from smartgate.policy.plan import BinaryCheck, LookupCheck, MembershipCheck, Pending, Query, VersionCheck
from smartgate.tokens.context import TokenContext

READ_PARAMS = frozenset({"_format", "_pretty", "_summary", "_elements"})
HISTORY_PARAMS = READ_PARAMS | {"_count", "_since", "_at"}
# What leaves the response whole: _summary/_elements may strip the reference that proves membership, and
# _since/_at/_count may leave a history with no version to prove anything by. Those still look up.
WHOLE_RESPONSE_PARAMS = frozenset({"_format", "_pretty"})


def decide(request: FhirRequest, token: TokenContext, settings: PolicySettings) -> Decision | Pending:
    resource_type, resource_id = request.resource_type, request.resource_id
    assert resource_type is not None and resource_id is not None
    access = require_access(token, resource_type, "r")
    if access.type_unconstrained:
        return decision(Reason.ALLOWED_BY_SCOPE, "granted by a user/ or system/ scope", request, token)
    allowed = HISTORY_PARAMS if request.interaction is Interaction.HISTORY_INSTANCE else READ_PARAMS
    queries: list[Query] = list(access.type_level)
    if access.patient_level:
        patient = require_patient(token)
        check_patient_params(request.params, patient, allowed)
        if resource_type == "Binary" and access.patient_unconstrained:
            if request.interaction is not Interaction.READ:  # the look-up sees the current securityContext only
                raise DenyError(Reason.INTERACTION_NOT_SUPPORTED, "past Binary versions cannot be bound to the patient")
            allow = decision(Reason.ALLOWED_COMPARTMENT_MEMBER, "Binary in the compartment", request, token)
            return Pending((BinaryCheck(resource_id, patient),), allow)
        require_open_type(resource_type, settings)
        if not access.type_level:  # a user/ scope's constraint may still prove another Patient
            require_own_patient_record(resource_type, resource_id, patient, settings)
        if access.patient_unconstrained:
            if resource_type == "Patient" and resource_id == patient:  # every version of it is the patient
                return decision(Reason.ALLOWED_CONTEXT_PATIENT, "the context patient", request, token)
            if resource_type not in settings.bound.membership:
                return decision(
                    Reason.ALLOWED_OUTSIDE_COMPARTMENT, f"{resource_type} is outside the compartment", request, token
                )
        if _proven_by_response(request, token, access, settings):
            return decision(
                Reason.ALLOWED_VERIFIED_BY_RESPONSE,
                "to be proven by the response (verification enforces)",
                request,
                token,
            )
        queries.extend(
            patient_queries(
                resource_type,
                resource_id,
                patient,
                access.patient_level,
                settings.follow_patient_links,
                membership=settings.bound.membership,
            )
        )
    allow = decision(Reason.ALLOWED_COMPARTMENT_MEMBER, "proven by look-up", request, token)
    checks: list[LookupCheck] = [MembershipCheck(resource_type, resource_id, tuple(queries))]
    checks.extend(_version_checks(request, token, access, settings))
    return Pending(tuple(checks), allow)


def _version_checks(
    request: FhirRequest, token: TokenContext, access: Access, settings: PolicySettings
) -> list[LookupCheck]:
    """vread and instance history show past versions: each one shown must be the patient's too."""
    resource_type, resource_id = request.resource_type, request.resource_id
    assert resource_type is not None and resource_id is not None
    if request.interaction not in (Interaction.VREAD, Interaction.HISTORY_INSTANCE):
        return []
    if access.type_level:
        # The look-up proves the current version only; a constrained user/ or system/ scope has no per-version
        # check, so an earlier version could be another patient's or fail the constraint.
        raise DenyError(
            Reason.INTERACTION_NOT_SUPPORTED,
            "past versions cannot be checked against a granular user/ or system/ scope",
        )
    if not access.patient_level or resource_type not in settings.bound.membership:
        return []
    if resource_type not in MEMBERSHIP_PARAMS:  # the version check reads the official compartment only
        raise DenyError(
            Reason.INTERACTION_NOT_SUPPORTED, f"past {resource_type} versions cannot be bound to the patient"
        )
    return [VersionCheck(resource_type, resource_id, request.version_id, require_patient(token))]


def _proven_by_response(request: FhirRequest, token: TokenContext, access: Access, settings: PolicySettings) -> bool:
    """Whether the ext_proc stage will prove this read from the response, so no look-up is needed.

    Only when every patient-context response is checked (``response_verification.mode: enforce``), only
    for bound types (the response check applies the same compartment definition and granular
    constraints), only when no user/ scope's constraint could also prove it (the response check accepts
    the patient's resources only), only when the response check holds the response to the read scope's
    constraints (it accepts what a read or a search scope grants), and only when the response will carry
    every version whole."""
    if not (settings.responses_verified and settings.reads_proven_by_response):
        return False
    resource_type = request.resource_type
    if resource_type is None or resource_type not in settings.bound.membership or access.type_level:
        return False
    if not all(param.code in WHOLE_RESPONSE_PARAMS for param in request.params):
        return False
    return _search_grants_no_more(resolve_access(token.grants, resource_type, "s"), access)


def _search_grants_no_more(search: Access, read: Access) -> bool:
    """The response check accepts a resource that meets a read or a search scope; it proves what the
    look-up would only when the search scopes on the type grant nothing the read scopes do not."""
    if search.type_unconstrained or search.type_level:
        return False
    return read.patient_unconstrained or set(search.patient_level) <= set(read.patient_level)
