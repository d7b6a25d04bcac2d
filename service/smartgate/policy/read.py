"""Reads (read, vread, instance history) have their own module so that a change to them leaves the kernel alone.

Under a user/ or system/ scope the scope decides. Under a patient/ scope the resource must be
proven to be the context patient's by a look-up (``MembershipCheck``), a Binary by its
securityContext (``BinaryCheck``), and past versions each by their own (``VersionCheck``).
"""

from __future__ import annotations

from smartgate.core.reasons import Reason
from smartgate.fhir.compartment import MEMBERSHIP_PARAMS
from smartgate.fhir.request import FhirRequest, Interaction
from smartgate.policy.base import (
    DenyError,
    PolicySettings,
    check_patient_params,
    decision,
    patient_queries,
    require_access,
    require_open_type,
    require_patient,
)
from smartgate.policy.decision import Decision
from smartgate.policy.plan import BinaryCheck, LookupCheck, MembershipCheck, Pending, Query, VersionCheck
from smartgate.tokens.context import TokenContext

READ_PARAMS = frozenset({"_format", "_pretty", "_summary", "_elements"})
HISTORY_PARAMS = READ_PARAMS | {"_count", "_since", "_at"}


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
        if access.patient_unconstrained:
            if resource_type == "Patient" and resource_id == patient:  # every version of it is the patient
                return decision(Reason.ALLOWED_CONTEXT_PATIENT, "the context patient", request, token)
            if resource_type not in MEMBERSHIP_PARAMS:
                return decision(Reason.ALLOWED_OUTSIDE_COMPARTMENT, f"{resource_type} is outside the compartment",
                                request, token)
        queries.extend(patient_queries(resource_type, resource_id, patient, access.patient_level))
    allow = decision(Reason.ALLOWED_COMPARTMENT_MEMBER, "proven by look-up", request, token)
    checks: list[LookupCheck] = [MembershipCheck(resource_type, resource_id, tuple(queries))]
    past_versions = request.interaction in (Interaction.VREAD, Interaction.HISTORY_INSTANCE)
    if past_versions and access.patient_level and not access.type_level and resource_type in MEMBERSHIP_PARAMS:
        checks.append(VersionCheck(resource_type, resource_id, request.version_id, require_patient(token)))
    return Pending(tuple(checks), allow)


