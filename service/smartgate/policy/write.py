"""Writes have their own module because they check the body sent, which reads never see.

Writes go under ``c``/``u``/``d`` scopes (v1 ``.write`` = ``cud``; write never implies read).

Patient context:
- create: the body is a resource of the URL's type; every compartment reference points at the
  context patient (at least one must, for compartment types); no contained resources, no
  conditional or unresolvable compartment reference, no reference to another patient anywhere;
- update: the stored resource is in the compartment (a PUT to an id that never existed is an
  upsert) and the new body stays in it;
- patch (JSON Patch, FHIRPath Patch, read by ``policy.patch``): the stored resource is in the
  compartment and no operation touches a compartment element;
- delete: the stored resource is in the compartment;
- conditional create/update/patch/delete are denied (they act on resources we cannot see).
"""

from __future__ import annotations

import json
from typing import Any

from smartgate.core.reasons import Reason
from smartgate.fhir.compartment import mentioned_patients
from smartgate.fhir.request import FhirRequest, Interaction
from smartgate.fhir.resources import (
    BodyError,
    all_reference_strings,
    all_strings,
    compartment_elements,
    compartment_references,
    element_paths,
    parse_resource,
    resolve_reference,
    token_matches,
)
from smartgate.policy.access import Access
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
from smartgate.policy.patch import fhirpath_patch_elements, json_patch_elements
from smartgate.policy.plan import MembershipCheck, Pending, Query
from smartgate.tokens.context import TokenContext

_PERMISSION = {Interaction.CREATE: "c", Interaction.UPDATE: "u", Interaction.PATCH: "u", Interaction.DELETE: "d"}
# A write's own URL may carry only these; any other parameter (one naming another patient above all) is
# refused, since a lenient server could read it as a condition on what it writes.
WRITE_PARAMS = frozenset({"_format", "_pretty", "_summary", "_elements"})
_JSON_PATCH = "application/json-patch+json"
_FHIR_JSON = ("application/fhir+json", "application/json", "")


def decide(request: FhirRequest, token: TokenContext, settings: PolicySettings) -> Decision | Pending:
    resource_type = request.resource_type
    assert resource_type is not None
    access = require_access(token, resource_type, _PERMISSION[request.interaction])
    if access.type_unconstrained:
        return decision(Reason.ALLOWED_BY_SCOPE, "granted by a user/ or system/ scope", request, token)
    if request.conditional:
        raise DenyError(Reason.CONDITIONAL_NOT_PERMITTED, "conditional writes act on resources that cannot be checked")
    if access.patient_level:
        patient = require_patient(token)
        check_patient_params(request.params, patient, WRITE_PARAMS)
        require_open_type(resource_type, settings)
    else:
        patient = None
    if request.interaction is Interaction.CREATE:
        resource = _body(request, resource_type)
        _check_body(resource, patient, access, settings)
        return decision(Reason.ALLOWED_WRITE, "the new resource stays in the compartment", request, token)
    resource_id = request.resource_id
    assert resource_id is not None
    if request.interaction is Interaction.UPDATE:
        resource = _body(request, resource_type)
        if resource.get("id") != resource_id:
            raise DenyError(Reason.BODY_INVALID, "the resource id must equal the id in the URL")
        _check_body(resource, patient, access, settings)
    elif request.interaction is Interaction.PATCH:
        constraints = access.patient_level if patient is not None else access.type_level
        _check_patch(request, resource_type, patient, constraints, settings)
    return _stored_resource_check(request, token, access, patient, resource_type, resource_id, settings)


def _stored_resource_check(
    request: FhirRequest,
    token: TokenContext,
    access: Access,
    patient: str | None,
    resource_type: str,
    resource_id: str,
    settings: PolicySettings,
) -> Decision | Pending:
    allow = decision(Reason.ALLOWED_WRITE, "the stored resource is in the compartment", request, token)
    upsert = request.interaction is Interaction.UPDATE
    if resource_type == "Patient" and patient is not None and access.patient_unconstrained:
        if resource_id != patient:
            raise DenyError(Reason.COMPARTMENT_OTHER_PATIENT, "only the context patient's own record may change")
        return allow
    membership = settings.bound.membership
    if patient is not None and access.patient_unconstrained and resource_type not in membership:
        return allow  # outside the compartment: the scope alone decides
    queries: list[Query] = list(access.type_level)
    if patient is not None:
        queries.extend(
            patient_queries(resource_type, resource_id, patient, access.patient_level, membership=membership)
        )
    return Pending((MembershipCheck(resource_type, resource_id, tuple(queries), absent_ok=upsert),), allow)


def _body(request: FhirRequest, resource_type: str) -> dict[str, Any]:
    if request.content_type not in _FHIR_JSON:
        raise DenyError(Reason.BODY_INVALID, "the body must be application/fhir+json")
    try:
        return parse_resource(request.body, resource_type)
    except BodyError as exc:
        raise DenyError(Reason.BODY_INVALID, str(exc)) from exc


def check_patient_body(resource: dict[str, Any], patient: str, settings: PolicySettings) -> None:
    """The rules a resource written in patient context must meet."""
    resource_type = resource["resourceType"]
    if resource.get("contained"):
        raise DenyError(Reason.COMPARTMENT_AMBIGUOUS, "contained resources cannot be checked")
    try:
        references = list(all_reference_strings(resource))
    except BodyError as exc:
        raise DenyError(Reason.BODY_INVALID, str(exc)) from exc
    for reference in references:
        if "?" in reference:
            raise DenyError(Reason.COMPARTMENT_AMBIGUOUS, "conditional references cannot be checked")
        resolved = resolve_reference(reference, settings.fhir_base_url)
        if resolved is not None and resolved.resource_type == "Patient" and resolved.resource_id != patient:
            raise DenyError(Reason.COMPARTMENT_OTHER_PATIENT, "the resource references another patient")
    if resource_type == "Patient":
        if resource.get("id") != patient or resource.get("link"):
            raise DenyError(Reason.COMPARTMENT_OTHER_PATIENT, "only the context patient's record, without links")
        return
    membership = settings.bound.membership
    if resource_type not in membership:
        return
    bound = False
    for value in compartment_references(resource, membership[resource_type]):
        if not isinstance(value, dict):
            raise DenyError(Reason.BODY_INVALID, "a compartment element is not a Reference")
        target = value.get("reference")
        if not isinstance(target, str):
            if value.get("identifier") is not None:
                raise DenyError(Reason.COMPARTMENT_AMBIGUOUS, "a logical reference cannot be resolved")
            continue
        resolved = resolve_reference(target, settings.fhir_base_url)
        if resolved is None:
            raise DenyError(Reason.COMPARTMENT_AMBIGUOUS, "a compartment reference cannot be resolved")
        if resolved.resource_type == "Patient":
            bound = True  # other patients were refused above
    if not bound:
        raise DenyError(Reason.COMPARTMENT_UNBOUND, f"the {resource_type} must reference the context patient")


def _check_body(resource: dict[str, Any], patient: str | None, access: Access, settings: PolicySettings) -> None:
    if patient is not None and access.patient_level:
        check_patient_body(resource, patient, settings)
    constraints = access.patient_level if patient is not None else access.type_level
    if () in constraints:
        return
    if not any(all(token_matches(resource, code, value) for code, value in q) for q in constraints):
        raise DenyError(Reason.SCOPE_INSUFFICIENT, "the resource does not meet the granular scope's constraint")


def _constraint_elements(resource_type: str, constraints: tuple[Query, ...]) -> set[str]:
    """Top-level elements a granular constraint reads (``category`` for ``?category=...``)."""
    return {path[0] for q in constraints for code, _ in q for path, _ in element_paths(resource_type, code) if path}


def _check_patch(
    request: FhirRequest,
    resource_type: str,
    patient: str | None,
    constraints: tuple[Query, ...],
    settings: PolicySettings,
) -> None:
    body = request.body or b""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nested too deep
        raise DenyError(Reason.BODY_INVALID, "the patch is not JSON") from exc
    protected = {"id", "resourceType", "contained", "meta"} | _constraint_elements(resource_type, constraints)
    if patient is not None:
        protected |= compartment_elements(resource_type, settings.bound.membership.get(resource_type, ()))
    if resource_type == "Patient":
        protected |= {"link"}
    if request.content_type == _JSON_PATCH:
        touched = json_patch_elements(document)
    elif (
        request.content_type in _FHIR_JSON
        and isinstance(document, dict)
        and document.get("resourceType") == "Parameters"
    ):
        touched = fhirpath_patch_elements(document, resource_type)
    else:
        raise DenyError(Reason.BODY_INVALID, "a patch must be JSON Patch or a FHIRPath Patch Parameters resource")
    if "" in touched or touched & protected:
        raise DenyError(Reason.COMPARTMENT_AMBIGUOUS, "the patch touches a compartment or constrained element")
    if patient is not None and any(mentioned_patients(text) - {patient} for text in all_strings(document)):
        raise DenyError(Reason.COMPARTMENT_OTHER_PATIENT, "the patch references another patient")
