"""Response checks live in the policy because they apply the same scope rules to what the server returned.

Defence in depth: check what the FHIR server returns to a patient-context token.

Pure: a response body + the verified context -> the list of foreign resources (empty when
every resource may be shown). A single resource, a searchset / history / batch-response /
transaction-response Bundle, or an OperationOutcome are understood; anything else is a
violation. Every resource must be of a type the scopes grant for reading, and compartment
types must belong to the context patient by the same compartment definition as writes.

Two rules go beyond the definition. A Patient other than the context patient belongs only when
``follow_patient_links`` is set and its ``link`` names the context patient. A Provenance in a
Bundle (``_revinclude=Provenance:target``) belongs when its ``target`` names the context patient
or a compartment resource of the same Bundle that passed, and no target names another patient
or a resource of the Bundle that failed (SECURITY.md, "Provenance").
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from smartgate.fhir.compartment import MEMBERSHIP_PARAMS
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
_OUTSIDE = "a resource outside the context patient's compartment"


@dataclass(frozen=True, slots=True)
class ResponseContext:
    """What the response stage knows of the request, handed over by ext_authz dynamic metadata."""

    patient: str
    grants: ScopeGrants
    fhir_base_url: str
    closed_types: frozenset[str]
    follow_patient_links: bool = False  # compartment.follow_patient_links: R4's Patient.link rule
    # The bound types' membership parameters: R4's compartment plus compartment.extra_binding_params (Device).
    membership: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MEMBERSHIP_PARAMS)


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
    return _check_bundle(document, context)


def _entry_resources(entry: Any) -> list[Any]:
    """The resource of an entry and its response outcome; [None] for an entry that is not an object."""
    if not isinstance(entry, dict):
        return [None]
    resources = [entry["resource"]] if entry.get("resource") is not None else []
    response = entry.get("response")
    if isinstance(response, dict) and isinstance(response.get("outcome"), dict):
        resources.append(response["outcome"])
    return resources


def _check_bundle(document: dict[str, Any], context: ResponseContext) -> tuple[int, list[Finding]]:
    findings: list[tuple[int, Finding]] = []
    checked = 0
    access_cache: dict[str, tuple[bool, tuple[Any, ...]] | None] = {}
    members = _BundleMembers(context.membership)
    provenances: list[tuple[int, dict[str, Any]]] = []  # outside the compartment by the definition
    for index, entry in enumerate(document.get("entry") or []):
        for resource in _entry_resources(entry):
            checked += 1
            if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
                findings.append((index, Finding(f"entry {index}", "", "not a FHIR resource")))
                continue
            if resource["resourceType"] == "Bundle" and document["type"] in _NESTING_TYPES:
                # A batch/transaction response carries the searchset of each GET entry: check inside it.
                inner_checked, inner = check_response_body(json.dumps(resource).encode(), context, nested=True)
                checked += inner_checked
                findings.extend((index, Finding(f"entry {index} {f.where}", f.resource_type, f.problem))
                                for f in inner)
                continue
            problem = _check_resource(resource, context, access_cache)
            if problem == _OUTSIDE and resource["resourceType"] == "Provenance":
                provenances.append((index, resource))  # decided once every other entry is known
                continue
            members.record(entry, resource, passed=not problem)
            if problem:
                findings.append((index, Finding(f"entry {index}", resource["resourceType"], problem)))
    for index, provenance in provenances:
        problem = _check_provenance(provenance, members, context)
        if problem:
            findings.append((index, Finding(f"entry {index}", "Provenance", problem)))
    return checked, [finding for _, finding in sorted(findings, key=lambda pair: pair[0])]


class _BundleMembers:
    """The compartment resources of one Bundle, by ``Type/id`` and by ``fullUrl``: those that passed
    (a Provenance may target them) and those that failed (a Provenance targeting them is foreign too)."""

    def __init__(self, membership: Mapping[str, tuple[str, ...]]) -> None:
        self._membership = membership
        self.passed: set[str] = set()
        self.failed: set[str] = set()

    def record(self, entry: Any, resource: dict[str, Any], passed: bool) -> None:
        if resource["resourceType"] not in self._membership:
            return  # a Practitioner or a Medication is nobody's: a Provenance of it is not the patient's
        names = self.passed if passed else self.failed
        if isinstance(resource.get("id"), str):
            names.add(f"{resource['resourceType']}/{resource['id']}")
        full_url = entry.get("fullUrl") if isinstance(entry, dict) else None
        if isinstance(full_url, str):
            names.add(full_url)


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
    if not belongs_to_patient(resource, context.patient, context.fhir_base_url, context.follow_patient_links,
                              context.membership):
        return "another patient's record" if resource_type == "Patient" else _OUTSIDE
    return _check_contained(resource, context)


def _check_provenance(provenance: dict[str, Any], members: _BundleMembers, context: ResponseContext) -> str:
    """A Provenance the definition leaves out (its target is not Patient/ctx) belongs when a target
    names a compartment resource of the same Bundle that passed, and no target names another patient
    or a resource of the Bundle that failed. Targets the Bundle does not hold are only references."""
    targets = provenance.get("target")
    anchored = False
    for target in targets if isinstance(targets, list) else []:
        reference = target.get("reference") if isinstance(target, dict) else None
        if not isinstance(reference, str):
            continue
        resolved = resolve_reference(reference, context.fhir_base_url)
        name = f"{resolved.resource_type}/{resolved.resource_id}" if resolved else reference
        if name in members.passed or reference in members.passed:
            anchored = True
        elif name in members.failed or reference in members.failed:
            return "a Provenance of a resource outside the context patient's compartment"
        elif resolved is not None and resolved.resource_type == "Patient" and resolved.resource_id != context.patient:
            return "a Provenance of another patient's record"
    if not anchored:
        return "a Provenance of nothing in the context patient's compartment"
    return _check_contained(provenance, context)


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
