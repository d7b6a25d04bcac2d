"""Operations and type/system-level reads have their own module because none of them can be bound to one resource.

Operations, type- and system-level history, and system-level search:

- ``Patient/[ctx]/$everything`` only when the scopes grant reading every type it can return
  (all types, or those named in ``_type``); any other patient's, and the type-level form, are denied;
- ``$export`` and unknown operations are denied by default; ``PolicySettings.operations`` opens more;
- type-level and system-level ``_history`` and system-level search (``GET [base]?_type=``, and so
  server-minted paging links such as HAPI's ``[base]?_getpages=``) are denied for patient-context
  tokens: they cannot be bound to a patient. user/ and system/ scopes open them by type.
- the one exception: with response verification in ``enforce`` mode, a bare paging link
  (``GET [base]?_getpages=…`` with only paging parameters) is allowed for a patient-context token,
  because every resource of the page it returns is then checked against the patient and the scopes.
"""

from __future__ import annotations

from smartgate.core.reasons import Reason
from smartgate.fhir.definitions import RESOURCE_TYPES
from smartgate.fhir.request import FhirRequest, Interaction
from smartgate.policy.access import resolve_access
from smartgate.policy.base import (
    DenyError,
    PolicySettings,
    check_patient_params,
    decision,
    patient_queries,
    require_own_patient_record,
    require_patient,
)
from smartgate.policy.decision import Decision
from smartgate.policy.plan import MembershipCheck, Pending
from smartgate.tokens.context import TokenContext

_EVERYTHING_PARAMS = frozenset({"_since", "_count", "_type", "start", "end", "_elements", "_format"})


def _level(request: FhirRequest) -> str:
    if request.resource_id is not None:
        return "instance"
    return "type" if request.resource_type is not None else "system"


def decide_operation(request: FhirRequest, token: TokenContext, settings: PolicySettings) -> Decision | Pending:
    name = request.operation or ""
    if name == "$everything" and request.resource_type == "Patient":
        return _everything(request, token, settings)
    level = _level(request)
    for rule in settings.operations:
        if rule.name == name and level in rule.levels:
            return _configured(request, token, settings, rule.permission, rule.patient_context)
    raise DenyError(Reason.OPERATION_NOT_PERMITTED, f"the {name} operation is not open ({level} level)")


def _everything(request: FhirRequest, token: TokenContext, settings: PolicySettings) -> Decision:
    if request.resource_id is None:
        raise DenyError(Reason.OPERATION_NOT_PERMITTED, "type-level Patient/$everything is not open")
    if request.body:  # a POSTed Parameters body would carry parameters (_type...) this check never sees
        raise DenyError(Reason.SEARCH_PARAMETER_NOT_PERMITTED, "$everything parameters are accepted in the query only")
    for param in request.params:
        if param.code not in _EVERYTHING_PARAMS:
            raise DenyError(Reason.SEARCH_PARAMETER_NOT_PERMITTED, f"{param.code} is not a $everything parameter")
    requested = {t for p in request.params if p.code == "_type" for t in p.value.split(",")}
    if requested - RESOURCE_TYPES:
        raise DenyError(Reason.UNKNOWN_RESOURCE_TYPE, "_type names an unknown resource type")
    types = requested or RESOURCE_TYPES
    grants = token.grants
    if all(grants.permits_beyond_patient(t, "r") and grants.permits_beyond_patient(t, "s") for t in types):
        return decision(Reason.ALLOWED_OPERATION, "$everything granted by user/ or system/ scopes", request, token)
    patient = require_patient(token)
    if request.resource_id != patient:
        raise DenyError(Reason.COMPARTMENT_OTHER_PATIENT, "$everything of another patient")
    # Types named in _type must also be open to patient/ scopes; without _type the server decides
    # what the compartment holds (response verification is the backstop for what it returns).
    missing = sorted(
        t
        for t in types
        if not (grants.permits("patient", t, "r") and grants.permits("patient", t, "s"))
        or t in requested & settings.patient_closed_types
    )
    if missing:
        raise DenyError(
            Reason.SCOPE_INSUFFICIENT,
            f"$everything can return types the scopes do not grant ({', '.join(missing[:5])}...)",
        )
    return decision(Reason.ALLOWED_OPERATION, "$everything of the context patient", request, token)


def _configured(
    request: FhirRequest, token: TokenContext, settings: PolicySettings, permission: str, patient_context: bool
) -> Decision | Pending:
    resource_type = request.resource_type or "*"
    access = resolve_access(token.grants, resource_type, permission)
    if access.type_unconstrained:
        return decision(Reason.ALLOWED_OPERATION, f"{request.operation} opened by the config", request, token)
    if not (patient_context and access.patient_unconstrained):
        raise DenyError(Reason.OPERATION_NOT_PERMITTED, f"{request.operation} is not open to these scopes")
    patient = require_patient(token)
    check_patient_params(request.params, patient, frozenset())
    if request.resource_type is None or request.resource_id is None:
        raise DenyError(Reason.OPERATION_NOT_PERMITTED, "in patient context only instance-level operations are open")
    allow = decision(Reason.ALLOWED_OPERATION, f"{request.operation} on a compartment resource", request, token)
    if request.resource_type == "Patient" and request.resource_id == patient:
        return allow
    require_own_patient_record(request.resource_type, request.resource_id, patient, settings)
    queries = patient_queries(
        request.resource_type,
        request.resource_id,
        patient,
        ((),),
        settings.follow_patient_links,
        membership=settings.bound.membership,
    )
    return Pending((MembershipCheck(request.resource_type, request.resource_id, tuple(queries)),), allow)


_PAGING_PARAMS = frozenset({"_getpages", "_getpagesoffset", "_count", "_format", "_pretty", "_bundletype"})


def _is_paging_link(request: FhirRequest) -> bool:
    codes = [param.code for param in request.params]
    plain = all(
        param.code in _PAGING_PARAMS and param.modifier is None and param.chain is None for param in request.params
    )
    return request.method in ("GET", "HEAD") and "_getpages" in codes and len(set(codes)) == len(codes) and plain


def decide_type_level(request: FhirRequest, token: TokenContext, settings: PolicySettings) -> Decision:
    """Type/system history and system search: open to user/ and system/ scopes only, except a
    paging link when every response is verified."""
    grants = token.grants
    if (
        settings.responses_verified
        and grants.has_patient_scopes
        and request.interaction is Interaction.SEARCH_SYSTEM
        and _is_paging_link(request)
    ):
        require_patient(token)
        return decision(
            Reason.ALLOWED_PAGING_LINK,
            "a server-minted paging link: every resource of the page is verified",
            request,
            token,
        )
    if request.interaction is Interaction.SEARCH_SYSTEM:
        named = {t for p in request.params if p.code == "_type" for t in p.value.split(",")}
        types = named or {"*"}
        if all(grants.permits_beyond_patient(t, "s") for t in types):
            return decision(Reason.ALLOWED_BY_SCOPE, "system search granted by type", request, token)
    else:
        resource_type = request.resource_type or "*"
        if grants.permits_beyond_patient(resource_type, "r"):
            return decision(Reason.ALLOWED_BY_SCOPE, "history granted by type", request, token)
    if grants.has_patient_scopes:
        raise DenyError(
            Reason.INTERACTION_NOT_SUPPORTED, f"{request.interaction.value} cannot be bound to the context patient"
        )
    raise DenyError(Reason.SCOPE_INSUFFICIENT, f"no scope grants {request.interaction.value}")
