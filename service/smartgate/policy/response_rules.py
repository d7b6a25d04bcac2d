"""Response checks live in the policy because they apply the same scope rules to what the server returned.

Defence in depth: check what the FHIR server returns to a patient-context token.

Pure: a response body + the verified context -> the list of foreign resources (empty when
every resource may be shown). A single resource, a searchset / history / batch-response /
transaction-response Bundle, or an OperationOutcome are understood; anything else is a
violation. Every resource must be of a type the scopes grant for reading, and compartment
types must belong to the context patient by the same compartment definition as writes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from smartgate.fhir.resources import (
    BodyError,
    all_reference_strings,
    belongs_to_patient,
    resolve_reference,
    token_matches,
)
from smartgate.policy.access import resolve_access
from smartgate.tokens.scopes import ScopeGrants

_BUNDLE_TYPES = frozenset({"searchset", "history", "batch-response", "transaction-response"})
_NESTING_TYPES = frozenset({"batch-response", "transaction-response"})
_NESTED_TYPES = frozenset({"searchset", "history"})  # inside a batch response, one level deep


@dataclass(frozen=True, slots=True)
class ResponseContext:
    """What the response stage knows of the request, handed over by ext_authz dynamic metadata."""

    patient: str
    grants: ScopeGrants
    fhir_base_url: str
    closed_types: frozenset[str]


@dataclass(frozen=True, slots=True)
class Finding:
    where: str  # "entry 3" or "resource"
    resource_type: str
    problem: str


def check_response_body(body: bytes, context: ResponseContext, nested: bool = False) -> tuple[int, list[Finding]]:
    """Return (resources checked, findings). A body that is not FHIR JSON is one finding."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deep
        return 0, [Finding("resource", "", "the response is not JSON")]
    if not isinstance(document, dict) or not isinstance(document.get("resourceType"), str):
        return 0, [Finding("resource", "", "the response is not a FHIR resource")]
    if document["resourceType"] != "Bundle":
        finding = _check_resource(document, context)
        return 1, [Finding("resource", document["resourceType"], finding)] if finding else []
    if document.get("type") not in (_NESTED_TYPES if nested else _BUNDLE_TYPES):
        return 0, [Finding("resource", "Bundle", f"a {document.get('type')} Bundle is not a response Bundle")]
    findings: list[Finding] = []
    checked = 0
    access_cache: dict[str, tuple[bool, tuple[Any, ...]] | None] = {}
    for index, entry in enumerate(document.get("entry") or []):
        resources = [entry.get("resource")] if isinstance(entry, dict) else [None]
        response = entry.get("response") if isinstance(entry, dict) else None
        if isinstance(response, dict) and isinstance(response.get("outcome"), dict):
            resources.append(response["outcome"])
        for resource in resources:
            if resource is None and isinstance(entry, dict):
                continue
            checked += 1
            if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
                findings.append(Finding(f"entry {index}", "", "not a FHIR resource"))
                continue
            if resource["resourceType"] == "Bundle" and document["type"] in _NESTING_TYPES:
                # A batch/transaction response carries the searchset of each GET entry: check inside it.
                inner_checked, inner = check_response_body(json.dumps(resource).encode(), context, nested=True)
                checked += inner_checked
                findings.extend(Finding(f"entry {index} {f.where}", f.resource_type, f.problem) for f in inner)
                continue
            problem = _check_resource(resource, context, access_cache)
            if problem:
                findings.append(Finding(f"entry {index}", resource["resourceType"], problem))
    return checked, findings


def _check_resource(
    resource: dict[str, Any], context: ResponseContext,
    access_cache: dict[str, tuple[bool, tuple[Any, ...]] | None] | None = None,
) -> str:
    resource_type: str = resource["resourceType"]
    if resource_type == "OperationOutcome":
        return ""
    if resource_type == "Bundle":
        return "a nested Bundle cannot be checked"
    if access_cache is None:
        access_cache = {}
    if resource_type not in access_cache:
        access_cache[resource_type] = resolve_access_for_grants(context.grants, resource_type)
    access = access_cache[resource_type]
    if access is None:
        return f"no scope grants reading {resource_type}"
    beyond_patient, constraints = access
    if beyond_patient:
        return ""
    if constraints and not any(all(token_matches(resource, c, v) for c, v in q) for q in constraints):
        return "the resource does not meet the granular scope's constraint"
    if resource_type == "Binary":
        return _check_binary(resource, context)
    if resource_type in context.closed_types:
        return f"{resource_type} is not open to patient/ scopes"
    if not belongs_to_patient(resource, context.patient, context.fhir_base_url):
        return "another patient's record" if resource_type == "Patient" else \
            "a resource outside the context patient's compartment"
    return _check_contained(resource, context)


def _check_contained(resource: dict[str, Any], context: ResponseContext) -> str:
    """A contained resource has no id of its own to look up: it must not be a Patient, and must
    not reference any patient but the context patient."""
    contained = resource.get("contained")
    if contained is None:
        return ""
    for inner in contained if isinstance(contained, list) else [contained]:
        if not isinstance(inner, dict):
            return "a contained resource that is not a FHIR resource"
        if inner.get("resourceType") == "Patient":
            return "a contained Patient"
        try:
            references = list(all_reference_strings(inner))
        except BodyError:
            return "a contained resource nested too deeply to check"
        for reference in references:
            resolved = resolve_reference(reference, context.fhir_base_url)
            if resolved is not None and resolved.resource_type == "Patient" and resolved.resource_id != context.patient:
                return "a contained resource naming another patient"
    return ""


def _check_binary(resource: dict[str, Any], context: ResponseContext) -> str:
    security = resource.get("securityContext")
    reference = security.get("reference") if isinstance(security, dict) else None
    if _is_context_patient(reference, context):
        return ""
    return "a Binary whose securityContext is not the context patient"


def _is_context_patient(reference: Any, context: ResponseContext) -> bool:
    if not isinstance(reference, str):
        return False
    resolved = resolve_reference(reference, context.fhir_base_url)
    return resolved is not None and resolved.resource_type == "Patient" and resolved.resource_id == context.patient


def resolve_access_for_grants(grants: ScopeGrants, resource_type: str) -> tuple[bool, tuple[Any, ...]] | None:
    """(granted beyond the patient, granular constraints or ()) for reading; None when not granted."""
    read = resolve_access(grants, resource_type, "r")
    search = resolve_access(grants, resource_type, "s")
    if read.type_unconstrained or search.type_unconstrained:
        return True, ()
    levels = read.patient_level + search.patient_level
    if () in levels:
        return False, ()
    if levels:
        return False, levels
    return None
