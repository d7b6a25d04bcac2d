"""Stage 3: the pure decision. FhirRequest + TokenContext -> Decision (or a MembershipCheck
that the authorizer must run before it can allow). No I/O, no gRPC types.

Scopes are a union. A ``user/`` or ``system/`` scope that grants the interaction on the
type allows it by type (the FHIR server applies the user's own permissions). Otherwise a
``patient/`` scope that grants it allows it only inside the context patient's compartment.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from smartgate.compartment import (
    BINDING_PARAMS,
    MEMBERSHIP_PARAMS,
    ReferenceKind,
    classify_reference,
    mentioned_patients,
)
from smartgate.config import DEFAULT_PATIENT_CLOSED_TYPES
from smartgate.decision import Decision, MembershipCheck
from smartgate.fhir_definitions import search_parameter
from smartgate.fhir_request import FhirRequest, Interaction, is_valid_id
from smartgate.query import SearchParam
from smartgate.reasons import Reason
from smartgate.token_context import TokenContext

# Result and common parameters that only shape or narrow a search: safe in patient context.
SAFE_CONTROL_PARAMS = frozenset({
    "_count", "_sort", "_summary", "_elements", "_total", "_format", "_pretty", "_id",
    "_lastUpdated", "_tag", "_profile", "_security", "_source", "_text", "_content", "_list", "_offset",
})
_READ_PARAMS = frozenset({"_format", "_pretty", "_summary", "_elements"})
_INCLUDES = frozenset({"_include", "_revinclude"})
_SEARCHES = frozenset({Interaction.SEARCH_TYPE, Interaction.SEARCH_COMPARTMENT})
_READS = frozenset({Interaction.READ, Interaction.VREAD})

@dataclass(frozen=True)
class PolicySettings:
    fhir_base_url: str
    patient_closed_types: frozenset[str] = DEFAULT_PATIENT_CLOSED_TYPES


class _DenyError(Exception):
    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def decide(request: FhirRequest, token: TokenContext, settings: PolicySettings) -> Decision | MembershipCheck:
    try:
        return _decide(request, token, settings)
    except _DenyError as deny:
        return _decision(deny.reason, deny.message, request, token)


def _decision(reason: Reason, message: str, request: FhirRequest, token: TokenContext) -> Decision:
    searched = request.compartment_type or request.resource_type or ""
    return Decision(reason, message, token, request.interaction.value, searched)


def _decide(request: FhirRequest, token: TokenContext, settings: PolicySettings) -> Decision | MembershipCheck:
    if request.interaction in _READS:
        permission = "r"
    elif request.interaction in _SEARCHES:
        permission = "s"
    else:
        raise _DenyError(Reason.INTERACTION_NOT_SUPPORTED, f"the {request.interaction.value} interaction is not open")
    target = request.compartment_type or request.resource_type
    assert target is not None
    grants = token.grants
    if grants.permits_beyond_patient(target, permission):
        _check_type_level_includes(request, token)
        return _decision(Reason.ALLOWED_BY_SCOPE, "granted by a user/ or system/ scope", request, token)
    if not grants.permits("patient", target, permission):
        raise _DenyError(Reason.SCOPE_INSUFFICIENT, f"no scope grants '{permission}' on {target}")
    patient = token.patient
    if patient is None:  # the verifier refuses such tokens; this keeps the rule local
        raise _DenyError(Reason.PATIENT_CONTEXT_MISSING, "patient/ scopes need a patient launch context")
    if target in settings.patient_closed_types:
        raise _DenyError(Reason.SCOPE_INSUFFICIENT, f"{target} is not open to patient/ scopes")
    _check_patient_params(request.params, patient, reading=permission == "r")
    if permission == "r":
        return _patient_read(request, token, patient)
    return _patient_search(request, token, patient, settings)


def _patient_read(request: FhirRequest, token: TokenContext, patient: str) -> Decision | MembershipCheck:
    resource_type, resource_id = request.resource_type, request.resource_id
    assert resource_type is not None and resource_id is not None
    if resource_type == "Patient" and resource_id == patient:
        return _decision(Reason.ALLOWED_CONTEXT_PATIENT, "the context patient", request, token)
    params = MEMBERSHIP_PARAMS.get(resource_type)
    if params is None:
        return _decision(Reason.ALLOWED_OUTSIDE_COMPARTMENT, f"{resource_type} is outside the compartment",
                         request, token)
    return MembershipCheck(resource_type, resource_id, patient, params)


def _check_patient_params(params: tuple[SearchParam, ...], patient: str, reading: bool) -> None:
    for param in params:
        if param.code.startswith("_"):
            allowed = _READ_PARAMS if reading else SAFE_CONTROL_PARAMS | _INCLUDES
            if param.code not in allowed:
                raise _DenyError(Reason.SEARCH_PARAMETER_NOT_PERMITTED, f"{param.code} is not permitted here")
        if mentioned_patients(param.value) - {patient}:
            raise _DenyError(Reason.COMPARTMENT_OTHER_PATIENT, f"parameter {param.code} names another patient")


def _patient_search(
    request: FhirRequest, token: TokenContext, patient: str, settings: PolicySettings
) -> Decision:
    searched = request.compartment_type or request.resource_type
    assert searched is not None
    bound_by_path = request.interaction is Interaction.SEARCH_COMPARTMENT
    if bound_by_path:
        if request.resource_type != "Patient":
            raise _DenyError(Reason.INTERACTION_NOT_SUPPORTED, "only the Patient compartment is supported")
        if request.resource_id != patient:
            raise _DenyError(Reason.COMPARTMENT_OTHER_PATIENT, "the compartment belongs to another patient")
        if searched not in BINDING_PARAMS:
            raise _DenyError(Reason.INTERACTION_NOT_SUPPORTED, f"{searched} is not in the Patient compartment")
    binding = _binding(searched, request.params, patient, settings.fhir_base_url)
    compartment_type = searched in BINDING_PARAMS
    if compartment_type and not bound_by_path and binding is None:
        raise _DenyError(Reason.COMPARTMENT_UNBOUND, f"a {searched} search must be bound to the context patient")
    _check_patient_includes(request, token, searched, None if bound_by_path else binding, settings)
    if compartment_type:
        return _decision(Reason.ALLOWED_COMPARTMENT_SEARCH, "search bound to the context patient", request, token)
    return _decision(Reason.ALLOWED_OUTSIDE_COMPARTMENT, f"{searched} is outside the compartment", request, token)


def _binding(searched: str, params: tuple[SearchParam, ...], patient: str, base_url: str) -> str | None:
    """Return the parameter that binds the search to ``patient`` (None when none does).

    Every binding parameter present must name the context patient or a non-patient resource,
    exactly once and unambiguously; anything else is a deny.
    """
    bindings = BINDING_PARAMS.get(searched, {})
    counts = Counter(param.code for param in params)
    bound_by: str | None = None
    for param in params:
        if searched == "Patient" and param.code == "_id":
            if counts["_id"] > 1 or param.modifier or not is_valid_id(param.value):
                raise _DenyError(Reason.COMPARTMENT_AMBIGUOUS, "_id must name exactly one patient")
            if param.value != patient:
                raise _DenyError(Reason.COMPARTMENT_OTHER_PATIENT, "the search names another patient")
            bound_by = "_id"
            continue
        targets = bindings.get(param.code)
        if targets is None:
            continue
        if counts[param.code] > 1:
            raise _DenyError(Reason.COMPARTMENT_AMBIGUOUS, f"{param.code} is given more than once")
        if param.chain is not None:
            raise _DenyError(Reason.SEARCH_PARAMETER_NOT_PERMITTED, f"chained {param.code} cannot be bound")
        reference = classify_reference(param.value, targets, param.modifier, base_url)
        if reference.kind is ReferenceKind.AMBIGUOUS:
            raise _DenyError(Reason.COMPARTMENT_AMBIGUOUS, f"{param.code} does not name exactly one resource")
        if reference.kind is ReferenceKind.PATIENT:
            if reference.patient_id != patient:
                raise _DenyError(Reason.COMPARTMENT_OTHER_PATIENT, "the search names another patient")
            bound_by = bound_by or param.code
    return bound_by


def _parse_include(param: SearchParam) -> tuple[str, str, str | None]:
    if param.modifier is not None or param.chain is not None:
        raise _DenyError(Reason.INCLUDE_NOT_PERMITTED, f"{param.name} (iterate/recurse) is not permitted")
    parts = param.value.split(":")
    if len(parts) not in (2, 3) or "*" in parts:
        raise _DenyError(Reason.INCLUDE_NOT_PERMITTED, f"{param.code} must be Type:param[:Target]")
    source, code = parts[0], parts[1]
    info = search_parameter(source, code)
    if info is None or info.type != "reference":
        raise _DenyError(Reason.INCLUDE_NOT_PERMITTED, f"{source}:{code} is not a reference parameter")
    target = parts[2] if len(parts) == 3 else None
    if target is not None and target not in info.targets:
        raise _DenyError(Reason.INCLUDE_NOT_PERMITTED, f"{target} is not a target of {source}:{code}")
    return source, code, target


def _include_targets(source: str, code: str, target: str | None) -> frozenset[str]:
    if target is not None:
        return frozenset({target})
    info = search_parameter(source, code)
    assert info is not None
    return info.targets


def _check_type_level_includes(request: FhirRequest, token: TokenContext) -> None:
    searched = request.compartment_type or request.resource_type
    for param in request.params:
        if param.code not in _INCLUDES:
            continue
        source, code, target = _parse_include(param)
        if param.code == "_include":
            if source != searched:
                raise _DenyError(Reason.INCLUDE_NOT_PERMITTED, f"_include must start from {searched}")
            included = _include_targets(source, code, target)
        else:
            included = frozenset({source})
        for resource_type in included:
            if not token.grants.permits_beyond_patient(resource_type, "r"):
                raise _DenyError(Reason.INCLUDE_NOT_PERMITTED,
                                 f"no user/ or system/ scope grants reading {resource_type}")


def _check_patient_includes(
    request: FhirRequest, token: TokenContext, searched: str, binding: str | None, settings: PolicySettings
) -> None:
    for param in request.params:
        if param.code == "_include":
            source, code, target = _parse_include(param)
            if source != searched:
                raise _DenyError(Reason.INCLUDE_NOT_PERMITTED, f"_include must start from {searched}")
            if code == binding and binding != "_id" and target in (None, "Patient"):
                # Every match references the context patient through this very parameter.
                _check_included_type(token, "Patient", True, settings)
                continue
            for included in _include_targets(source, code, target):
                _check_included_type(token, included, False, settings)
        elif param.code == "_revinclude":
            source, code, target = _parse_include(param)
            from_context_patient = (
                searched == "Patient" and binding == "_id" and code in BINDING_PARAMS.get(source, {})
                and target in (None, "Patient")
            )
            _check_included_type(token, source, from_context_patient, settings)


def _check_included_type(
    token: TokenContext, resource_type: str, proven_in_compartment: bool, settings: PolicySettings
) -> None:
    grants = token.grants
    if grants.permits_beyond_patient(resource_type, "r"):
        return
    if not grants.permits("patient", resource_type, "r"):
        raise _DenyError(Reason.INCLUDE_NOT_PERMITTED, f"no scope grants reading included {resource_type}")
    if resource_type in settings.patient_closed_types:
        raise _DenyError(Reason.INCLUDE_NOT_PERMITTED, f"{resource_type} is not open to patient/ scopes")
    if resource_type in MEMBERSHIP_PARAMS and not proven_in_compartment:
        raise _DenyError(Reason.INCLUDE_NOT_PERMITTED,
                    f"included {resource_type} resources cannot be proven to be in the compartment")
