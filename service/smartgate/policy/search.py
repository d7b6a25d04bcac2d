"""Searches have their own module because binding a search to the patient is the subtlest rule and changes alone.

A patient/ search must carry a binding parameter naming the context patient (or be a
compartment search of that patient), and no reference parameter may name another patient.
``_include`` and ``_revinclude`` may add only types the scopes grant and, under patient/
scopes, only resources that are provably in the compartment.
"""

from __future__ import annotations

from collections import Counter

from smartgate.core.reasons import Reason
from smartgate.fhir.compartment import BINDING_PARAMS, MEMBERSHIP_PARAMS, ReferenceKind, classify_reference
from smartgate.fhir.definitions import search_parameter
from smartgate.fhir.query import SearchParam
from smartgate.fhir.request import FhirRequest, Interaction, is_valid_id
from smartgate.policy.access import carries
from smartgate.policy.base import (
    DenyError,
    PolicySettings,
    check_patient_params,
    decision,
    require_access,
    require_open_type,
    require_patient,
)
from smartgate.policy.decision import Decision
from smartgate.tokens.context import TokenContext

# Result and common parameters that only shape or narrow a search: safe in patient context.
SAFE_CONTROL_PARAMS = frozenset({
    "_count", "_sort", "_summary", "_elements", "_total", "_format", "_pretty", "_id",
    "_lastUpdated", "_tag", "_profile", "_security", "_source", "_text", "_content", "_list", "_offset",
})
_INCLUDES = frozenset({"_include", "_revinclude"})


def decide(request: FhirRequest, token: TokenContext, settings: PolicySettings) -> Decision:
    searched = request.compartment_type or request.resource_type
    assert searched is not None
    access = require_access(token, searched, "s")
    params = request.params
    if access.type_unconstrained or any(carries(params, q) for q in access.type_level):
        _check_type_level_includes(request, token)
        return decision(Reason.ALLOWED_BY_SCOPE, "granted by a user/ or system/ scope", request, token)
    if not any(carries(params, q) for q in access.patient_level):
        raise DenyError(Reason.SCOPE_INSUFFICIENT, "the search does not carry the constraint of a granular scope")
    patient = require_patient(token)
    require_open_type(searched, settings)
    check_patient_params(params, patient, SAFE_CONTROL_PARAMS | _INCLUDES)
    return _patient_search(request, token, patient, searched, settings)


def _patient_search(
    request: FhirRequest, token: TokenContext, patient: str, searched: str, settings: PolicySettings
) -> Decision:
    bound_by_path = request.interaction is Interaction.SEARCH_COMPARTMENT
    if bound_by_path:
        if request.resource_type != "Patient":
            raise DenyError(Reason.INTERACTION_NOT_SUPPORTED, "only the Patient compartment is supported")
        if request.resource_id != patient:
            raise DenyError(Reason.COMPARTMENT_OTHER_PATIENT, "the compartment belongs to another patient")
        if searched not in BINDING_PARAMS:
            raise DenyError(Reason.INTERACTION_NOT_SUPPORTED, f"{searched} is not in the Patient compartment")
    binding = _binding(searched, request.params, patient, settings.fhir_base_url)
    compartment_type = searched in BINDING_PARAMS
    if not compartment_type:
        _check_patient_references(searched, request.params, patient, settings.fhir_base_url)
    if compartment_type and not bound_by_path and binding is None:
        raise DenyError(Reason.COMPARTMENT_UNBOUND, f"a {searched} search must be bound to the context patient")
    _check_patient_includes(request, token, searched, None if bound_by_path else binding, settings)
    if compartment_type:
        return decision(Reason.ALLOWED_COMPARTMENT_SEARCH, "search bound to the context patient", request, token)
    return decision(Reason.ALLOWED_OUTSIDE_COMPARTMENT, f"{searched} is outside the compartment", request, token)


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
                raise DenyError(Reason.COMPARTMENT_AMBIGUOUS, "_id must name exactly one patient")
            if param.value != patient:
                raise DenyError(Reason.COMPARTMENT_OTHER_PATIENT, "the search names another patient")
            bound_by = "_id"
            continue
        targets = bindings.get(param.code)
        if targets is None:
            continue
        if counts[param.code] > 1:
            raise DenyError(Reason.COMPARTMENT_AMBIGUOUS, f"{param.code} is given more than once")
        if param.chain is not None:
            raise DenyError(Reason.SEARCH_PARAMETER_NOT_PERMITTED, f"chained {param.code} cannot be bound")
        reference = classify_reference(param.value, targets, param.modifier, base_url)
        if reference.kind is ReferenceKind.AMBIGUOUS:
            raise DenyError(Reason.COMPARTMENT_AMBIGUOUS, f"{param.code} does not name exactly one resource")
        if reference.kind is ReferenceKind.PATIENT:
            if reference.patient_id != patient:
                raise DenyError(Reason.COMPARTMENT_OTHER_PATIENT, "the search names another patient")
            bound_by = bound_by or param.code
    return bound_by


def _check_patient_references(
    searched: str, params: tuple[SearchParam, ...], patient: str, base_url: str
) -> None:
    """Outside the compartment nothing binds the search, so every reference parameter that can
    target a Patient must name the context patient or, unambiguously, another type."""
    for param in params:
        info = search_parameter(searched, param.code)
        if info is None or info.type != "reference" or "Patient" not in info.targets:
            continue
        if param.chain is not None:
            raise DenyError(Reason.SEARCH_PARAMETER_NOT_PERMITTED, f"chained {param.code} cannot be checked")
        reference = classify_reference(param.value, info.targets, param.modifier, base_url)
        if reference.kind is ReferenceKind.AMBIGUOUS:
            raise DenyError(Reason.COMPARTMENT_AMBIGUOUS, f"{param.code} does not name exactly one resource")
        if reference.kind is ReferenceKind.PATIENT and reference.patient_id != patient:
            raise DenyError(Reason.COMPARTMENT_OTHER_PATIENT, "the search names another patient")


# --- _include / _revinclude --------------------------------------------------------------------


def _parse_include(param: SearchParam) -> tuple[str, str, str | None]:
    if param.modifier is not None or param.chain is not None:
        raise DenyError(Reason.INCLUDE_NOT_PERMITTED, f"{param.name} (iterate/recurse) is not permitted")
    parts = param.value.split(":")
    if len(parts) not in (2, 3) or "*" in parts:
        raise DenyError(Reason.INCLUDE_NOT_PERMITTED, f"{param.code} must be Type:param[:Target]")
    source, code = parts[0], parts[1]
    info = search_parameter(source, code)
    if info is None or info.type != "reference":
        raise DenyError(Reason.INCLUDE_NOT_PERMITTED, f"{source}:{code} is not a reference parameter")
    target = parts[2] if len(parts) == 3 else None
    if target is not None and target not in info.targets:
        raise DenyError(Reason.INCLUDE_NOT_PERMITTED, f"{target} is not a target of {source}:{code}")
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
                raise DenyError(Reason.INCLUDE_NOT_PERMITTED, f"_include must start from {searched}")
            included = _include_targets(source, code, target)
        else:
            included = frozenset({source})
        for resource_type in included:
            if not token.grants.permits_beyond_patient(resource_type, "r"):
                raise DenyError(Reason.INCLUDE_NOT_PERMITTED,
                                f"no user/ or system/ scope grants reading {resource_type}")


def _check_patient_includes(
    request: FhirRequest, token: TokenContext, searched: str, binding: str | None, settings: PolicySettings
) -> None:
    for param in request.params:
        if param.code == "_include":
            source, code, target = _parse_include(param)
            if source != searched:
                raise DenyError(Reason.INCLUDE_NOT_PERMITTED, f"_include must start from {searched}")
            info = search_parameter(source, code)
            single = info is not None and info.single
            if code == binding and binding != "_id" and target in (None, "Patient") and single:
                # Every match references the context patient through this very single-valued element.
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
        raise DenyError(Reason.INCLUDE_NOT_PERMITTED, f"no scope grants reading included {resource_type}")
    if resource_type in settings.patient_closed_types:
        raise DenyError(Reason.INCLUDE_NOT_PERMITTED, f"{resource_type} is not open to patient/ scopes")
    if resource_type in MEMBERSHIP_PARAMS and not proven_in_compartment:
        raise DenyError(Reason.INCLUDE_NOT_PERMITTED,
                        f"included {resource_type} resources cannot be proven to be in the compartment")
