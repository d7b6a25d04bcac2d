"""Searches have their own module because binding a search to the patient is the subtlest rule and changes alone.

A patient/ search must carry a binding parameter naming the context patient (or be a
compartment search of that patient), and no reference parameter may name another patient.
``_include`` and ``_revinclude`` may add only types the scopes grant and, under patient/
scopes, only resources that are provably in the compartment (Provenance of the matches, the
context patient through the binding) or, when response verification enforces, resources the
response stage will check one by one. Other Patient resources reach a patient search only
through ``Patient.link``, and only with ``compartment.follow_patient_links``.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from smartgate.core.reasons import Reason
from smartgate.fhir.compartment import (
    BINDING_PARAMS,
    PATIENT_LINK_PARAM,
    ReferenceKind,
    classify_reference,
)
from smartgate.fhir.definitions import RESOURCE_TYPES, SEARCH_PARAMETERS, search_parameter
from smartgate.fhir.query import SearchParam
from smartgate.fhir.request import FhirRequest, Interaction, is_valid_id
from smartgate.policy.access import Access, carries_any
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
from smartgate.policy.plan import MembershipCheck, Pending
from smartgate.tokens.context import TokenContext

# Result and common parameters that only shape or narrow a search: safe in patient context.
SAFE_CONTROL_PARAMS = frozenset(
    {
        "_count",
        "_sort",
        "_summary",
        "_elements",
        "_total",
        "_format",
        "_pretty",
        "_id",
        "_lastUpdated",
        "_tag",
        "_profile",
        "_security",
        "_source",
        "_text",
        "_content",
        "_list",
        "_offset",
    }
)
_INCLUDES = frozenset({"_include", "_revinclude"})


def decide(request: FhirRequest, token: TokenContext, settings: PolicySettings) -> Decision | Pending:
    searched = request.compartment_type or request.resource_type
    assert searched is not None
    access = require_access(token, searched, "s")
    params = request.params
    if access.type_unconstrained or carries_any(params, access.type_level):
        _check_type_level_includes(request, token)
        return decision(Reason.ALLOWED_BY_SCOPE, "granted by a user/ or system/ scope", request, token)
    if not carries_any(params, access.patient_level):
        raise DenyError(Reason.SCOPE_INSUFFICIENT, "the search does not carry the constraint of a granular scope")
    patient = require_patient(token)
    require_open_type(searched, settings)
    check_patient_params(params, patient, SAFE_CONTROL_PARAMS | _INCLUDES)
    return _patient_search(request, token, patient, searched, access, settings)


def _patient_search(
    request: FhirRequest,
    token: TokenContext,
    patient: str,
    searched: str,
    access: Access,
    settings: PolicySettings,
) -> Decision | Pending:
    bound_by_path = request.interaction is Interaction.SEARCH_COMPARTMENT
    if bound_by_path:
        if request.resource_type != "Patient":
            raise DenyError(Reason.INTERACTION_NOT_SUPPORTED, "only the Patient compartment is supported")
        if request.resource_id != patient:
            raise DenyError(Reason.COMPARTMENT_OTHER_PATIENT, "the compartment belongs to another patient")
        if searched not in BINDING_PARAMS:
            raise DenyError(Reason.INTERACTION_NOT_SUPPORTED, f"{searched} is not in the Patient compartment")
    binding = _binding(searched, request.params, patient, settings)
    bound_type = searched in settings.bound.binding  # a compartment type, or one of extra_binding_params
    if not bound_type:
        _check_patient_references(searched, request.params, patient, settings.fhir_base_url)
    narrowing: tuple[tuple[str, str], ...] = ()
    proven_id = _single_id(request) if bound_type and not bound_by_path and binding is None else None
    if proven_id is not None:
        binding = "_id"  # the one resource it can match is proven the patient's by look-up, below
    elif bound_type and not bound_by_path and binding is None:
        narrowing = _narrowing(request, searched, patient, access, settings)
        binding = narrowing[0][0]  # the upstream search is bound through it, includes included
    _check_linked_patients(request, searched, settings)
    _check_patient_includes(request, token, searched, None if bound_by_path else binding, settings)
    if proven_id is not None:
        allow = decision(Reason.ALLOWED_COMPARTMENT_SEARCH, f"_id {proven_id} proven by look-up", request, token)
        queries = patient_queries(
            searched,
            proven_id,
            patient,
            access.patient_level,
            settings.follow_patient_links,
            membership=settings.bound.membership,
        )
        return Pending((MembershipCheck(searched, proven_id, tuple(queries)),), allow)
    if narrowing:
        narrowed = decision(
            Reason.ALLOWED_NARROWED, f"narrowed to the context patient through {binding}", request, token
        )
        return dataclasses.replace(narrowed, query_parameters_to_set=narrowing)
    if bound_type:
        return decision(Reason.ALLOWED_COMPARTMENT_SEARCH, "search bound to the context patient", request, token)
    return decision(Reason.ALLOWED_OUTSIDE_COMPARTMENT, f"{searched} is outside the compartment", request, token)


def _binding(searched: str, params: tuple[SearchParam, ...], patient: str, settings: PolicySettings) -> str | None:
    """Return the parameter that binds the search to ``patient`` (None when none does).

    Every binding parameter present must name the context patient or a non-patient resource,
    exactly once and unambiguously; anything else is a deny. So must every name that differs from
    a binding parameter only in case (``Patient=456``): a server that folds case reads it as one.
    """
    bindings = settings.bound.binding.get(searched, {})
    _refuse_case_variants(searched, params, bindings, patient, settings.fhir_base_url)
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
        reference = classify_reference(param.value, targets, param.modifier, settings.fhir_base_url)
        if reference.kind is ReferenceKind.AMBIGUOUS:
            raise DenyError(Reason.COMPARTMENT_AMBIGUOUS, f"{param.code} does not name exactly one resource")
        if reference.kind is ReferenceKind.PATIENT:
            if reference.patient_id != patient:
                raise DenyError(Reason.COMPARTMENT_OTHER_PATIENT, "the search names another patient")
            bound_by = bound_by or param.code
    return bound_by


def _refuse_case_variants(
    searched: str,
    params: tuple[SearchParam, ...],
    references: Mapping[str, frozenset[str]],
    patient: str,
    base_url: str,
) -> None:
    """A parameter named like one of ``references`` but for case never binds (a server that keeps
    case ignores it): one naming another patient is ``compartment_other_patient``, any other
    (the context patient's id included, alone or next to the real parameter) ``compartment_ambiguous``."""
    names = {code.lower(): code for code in references}
    if searched == "Patient":
        names["_id"] = "_id"
    for param in params:
        code = names.get(param.code.lower())
        if code is None or code == param.code:
            continue
        targets = references.get(code, frozenset({"Patient"}))  # Patient's _id names a Patient
        reference = classify_reference(param.value, targets, param.modifier, base_url)
        if reference.kind is ReferenceKind.PATIENT and reference.patient_id != patient:
            raise DenyError(Reason.COMPARTMENT_OTHER_PATIENT, f"{param.code} names another patient")
        raise DenyError(
            Reason.COMPARTMENT_AMBIGUOUS,
            f"{param.code} differs from {code} only in case; a server may or may not read it as {code}",
        )


def _single_id(request: FhirRequest) -> str | None:
    """The id of a POST _search that selects by one ``_id`` (Inferno sends ``Encounter/_search`` with
    ``_id=…`` in the form body). Such a search cannot be narrowed through the URL, but it can match one
    resource only, which a look-up proves the patient's as it proves a read. GET searches are narrowed."""
    if request.method != "POST":
        return None
    ids = [param for param in request.params if param.code == "_id"]
    if len(ids) != 1 or ids[0].modifier is not None or ids[0].chain is not None or not is_valid_id(ids[0].value):
        return None
    return ids[0].value


def _narrowing(
    request: FhirRequest, searched: str, patient: str, access: Access, settings: PolicySettings
) -> tuple[tuple[str, str], ...]:
    """The parameter that narrows an unbound search of a bound type to ``patient`` (Envoy sets it on
    the request before it goes upstream, replacing any parameter of that name), or a deny."""
    unbound = f"a {searched} search must be bound to the context patient"
    if not settings.search_narrowing:
        raise DenyError(Reason.COMPARTMENT_UNBOUND, f"{unbound} (search_narrowing is off)")
    if request.method == "POST":
        # Narrowing adds a URL parameter; Medplum's POST _search reads the form body alone, so the search
        # would reach the server unbound.
        raise DenyError(
            Reason.COMPARTMENT_UNBOUND,
            f"{unbound} in its form body: a POST _search cannot be narrowed, since some FHIR "
            "servers ignore URL parameters there",
        )
    narrowing = settings.bound.narrowing(searched, patient)
    assert narrowing is not None  # only bound types are narrowed
    code, _ = narrowing
    if any(param.code.lower() == code.lower() for param in request.params):
        raise DenyError(Reason.COMPARTMENT_UNBOUND, f"{unbound}: narrowing would replace its {code} parameter")
    if any(constrained == code for constraint in access.patient_level for constrained, _ in constraint):
        raise DenyError(Reason.COMPARTMENT_UNBOUND, f"{unbound}: a granular scope constrains {code}")
    return (narrowing,)


def _check_patient_references(searched: str, params: tuple[SearchParam, ...], patient: str, base_url: str) -> None:
    """Outside the compartment nothing binds the search, so every reference parameter that can
    target a Patient must name the context patient or, unambiguously, another type."""
    references = {
        code: info.targets
        for code, info in SEARCH_PARAMETERS.get(searched, {}).items()
        if info.type == "reference" and "Patient" in info.targets
    }
    _refuse_case_variants(searched, params, references, patient, base_url)
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


# --- linked patients ------------------------------------------------------------------------------


def _check_linked_patients(request: FhirRequest, searched: str, settings: PolicySettings) -> None:
    """Without ``follow_patient_links`` the context patient is the only Patient in its compartment:
    the Patient compartment search (``Patient/ctx/Patient``) and a Patient search by ``link`` (in
    any letter case a server might fold) find only other patients' records."""
    if searched != "Patient" or settings.follow_patient_links:
        return
    if request.interaction is Interaction.SEARCH_COMPARTMENT:
        raise DenyError(
            Reason.COMPARTMENT_OTHER_PATIENT,
            "Patient/[id]/Patient finds linked patients (compartment.follow_patient_links is off)",
        )
    if any(param.code.lower() == PATIENT_LINK_PARAM for param in request.params):
        raise DenyError(
            Reason.COMPARTMENT_OTHER_PATIENT,
            "a Patient search by link finds other patients (compartment.follow_patient_links is off)",
        )


# --- _include / _revinclude --------------------------------------------------------------------

_WILDCARD = "*"  # `_include=ExplanationOfBenefit:*`: through every reference parameter of the type
# Reference parameters that implementation guides smartgate's users serve define beyond R4, by the
# (type, code) and the types they can target: CARIN Blue Button's SearchParameter-explanationofbenefit-insurer.
_GUIDE_REFERENCE_PARAMS: dict[tuple[str, str], frozenset[str]] = {
    ("ExplanationOfBenefit", "insurer"): frozenset({"Organization"}),
}
_ENFORCE_HINT = "(allowed only when every response is verified: response_verification.mode: enforce)"


@dataclass(frozen=True, slots=True)
class _Include:
    """One `_include`/`_revinclude` value: ``source:code[:target]``; ``code`` may be ``*``."""

    source: str
    code: str
    target: str | None


def _parse_include(param: SearchParam) -> _Include:
    if param.modifier is not None or param.chain is not None:
        raise DenyError(Reason.INCLUDE_NOT_PERMITTED, f"{param.name} (iterate/recurse) is not permitted")
    parts = param.value.split(":")
    if len(parts) not in (2, 3):
        raise DenyError(Reason.INCLUDE_NOT_PERMITTED, f"{param.code} must be Type:param[:Target] or Type:*")
    source, code = parts[0], parts[1]
    target = parts[2] if len(parts) == 3 else None
    if code == _WILDCARD:
        if target is not None or source not in RESOURCE_TYPES:
            raise DenyError(Reason.INCLUDE_NOT_PERMITTED, f"{param.code} must be Type:* with an R4 type")
        return _Include(source, code, None)
    targets = _reference_targets(source, code)
    if targets is None:
        raise DenyError(Reason.INCLUDE_NOT_PERMITTED, f"{source}:{code} is not a reference parameter")
    if target is not None and target not in targets:
        raise DenyError(Reason.INCLUDE_NOT_PERMITTED, f"{target} is not a target of {source}:{code}")
    return _Include(source, code, target)


def _reference_targets(source: str, code: str) -> frozenset[str] | None:
    """The types a reference parameter of ``source`` can target (R4 or a guide's); None if it is not one."""
    info = search_parameter(source, code)
    if info is not None:
        return info.targets if info.type == "reference" else None
    return _GUIDE_REFERENCE_PARAMS.get((source, code))


def _include_targets(include: _Include) -> frozenset[str]:
    """Every type an `_include` can bring in: for ``*``, every target of every reference parameter."""
    if include.target is not None:
        return frozenset({include.target})
    if include.code == _WILDCARD:
        params = SEARCH_PARAMETERS.get(include.source, {}).values()
        guides = (targets for (source, _), targets in _GUIDE_REFERENCE_PARAMS.items() if source == include.source)
        return frozenset().union(*(info.targets for info in params if info.type == "reference"), *guides)
    targets = _reference_targets(include.source, include.code)
    assert targets is not None
    return targets


def _included_types(param: SearchParam, include: _Include) -> frozenset[str]:
    """`_include` brings in the targets of its parameter; `_revinclude` resources of its source type."""
    return _include_targets(include) if param.code == "_include" else frozenset({include.source})


def _check_type_level_includes(request: FhirRequest, token: TokenContext) -> None:
    searched = request.compartment_type or request.resource_type
    for param in request.params:
        if param.code not in _INCLUDES:
            continue
        include = _parse_include(param)
        if param.code == "_include" and include.source != searched:
            raise DenyError(Reason.INCLUDE_NOT_PERMITTED, f"_include must start from {searched}")
        for resource_type in sorted(_included_types(param, include)):
            if not token.grants.permits_beyond_patient(resource_type, "r"):
                raise DenyError(
                    Reason.INCLUDE_NOT_PERMITTED, f"no user/ or system/ scope grants reading {resource_type}"
                )


def _check_patient_includes(
    request: FhirRequest, token: TokenContext, searched: str, binding: str | None, settings: PolicySettings
) -> None:
    """``binding`` is the parameter that bound the search to the context patient (None for a
    compartment search by path, which is bound all the same)."""
    bound = binding is not None or request.interaction is Interaction.SEARCH_COMPARTMENT
    for param in request.params:
        if param.code == "_include":
            _check_patient_include(_parse_include(param), token, searched, binding, settings)
        elif param.code == "_revinclude":
            _check_patient_revinclude(_parse_include(param), token, searched, binding, bound, settings)


def _check_patient_include(
    include: _Include, token: TokenContext, searched: str, binding: str | None, settings: PolicySettings
) -> None:
    if include.source != searched:
        raise DenyError(Reason.INCLUDE_NOT_PERMITTED, f"_include must start from {searched}")
    info = search_parameter(include.source, include.code)
    single = info is not None and info.single
    if include.code == binding and binding != "_id" and include.target in (None, "Patient") and single:
        # Every match references the context patient through this very single-valued element.
        _check_included_type(token, "Patient", True, settings)
        return
    for included in sorted(_include_targets(include)):
        _check_included_type(token, included, False, settings)


def _check_patient_revinclude(
    include: _Include,
    token: TokenContext,
    searched: str,
    binding: str | None,
    bound: bool,
    settings: PolicySettings,
) -> None:
    if (
        include.source == "Patient"
        and include.code in (PATIENT_LINK_PARAM, _WILDCARD)
        and not settings.follow_patient_links
    ):
        raise DenyError(
            Reason.INCLUDE_NOT_PERMITTED,
            "Patient:link brings in other patients' records (compartment.follow_patient_links is off)",
        )
    from_context_patient = (
        searched == "Patient"
        and binding == "_id"
        and include.code in settings.bound.binding.get(include.source, {})
        and include.target in (None, "Patient")
    )
    proven = from_context_patient or (bound and _is_provenance_of_matches(include, searched))
    _check_included_type(token, include.source, proven, settings)


def _is_provenance_of_matches(include: _Include, searched: str) -> bool:
    """`_revinclude=Provenance:target` brings in only Provenance whose target is a resource the
    search matched; on a search bound to the context patient every match is the patient's, so
    these are records about the patient's own data (SECURITY.md, "Provenance")."""
    return include.source == "Provenance" and include.code == "target" and include.target in (None, searched)


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
    bound_to_a_patient = resource_type in settings.bound.membership  # the compartment, and Device
    if bound_to_a_patient and not proven_in_compartment and not settings.responses_verified:
        raise DenyError(
            Reason.INCLUDE_NOT_PERMITTED,
            f"included {resource_type} resources cannot be proven to be in the compartment {_ENFORCE_HINT}",
        )
