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

Anything the verifier cannot classify is a finding (fail closed):

- a ``resourceType`` R4 does not define (``"observation"``);
- a resource FHIR does not hold where it is: inside a contained resource (dom-2 forbids nesting), or
  anywhere but a Bundle entry, an entry's outcome or a resource's ``contained``;
- a compartment element referencing another server (an absolute URL on neither the public base
  nor the FHIR server's own address, ``fhir.upstream_url``), and, in a contained resource or an
  OperationOutcome, any reference that names or could name another patient.

Speed: the body is parsed by orjson, each entry's compartment elements are read where the
definition puts them, and contained resources and OperationOutcomes are walked once. A resource
anywhere else would go unseen, so the body's raw occurrences of ``"resourceType"`` are counted (in
C) and must equal the resources classified; otherwise (or when the body uses ``\\u`` escapes, which
could spell the word differently) the whole document is walked once to find and judge the rest.
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from smartgate.fhir.compartment import MEMBERSHIP_PARAMS
from smartgate.fhir.definitions import RESOURCE_TYPES
from smartgate.fhir.resources import (
    BodyError,
    ResolvedReference,
    belongs_to_patient,
    compartment_references,
    could_name_patient,
    is_other_server,
    resolve_reference,
    token_matches,
    walk_resource,
)
from smartgate.policy.access import resolve_access
from smartgate.tokens.scopes import ScopeGrants

_BUNDLE_TYPES = frozenset({"searchset", "history", "batch-response", "transaction-response"})
_NESTING_TYPES = frozenset({"batch-response", "transaction-response"})
_NESTED_TYPES = frozenset({"searchset", "history"})  # inside a batch response, one level deep
_OUTSIDE = "a resource outside the context patient's compartment"
_TYPE_WORD = b'"resourceType"'
_ESCAPE = b"\\u"
Access = tuple[bool, tuple[Any, ...]] | None


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
    # fhir.upstream_url: the FHIR server names its own resources by it; resolved like the public base.
    upstream_base_url: str = ""

    @property
    def bases(self) -> tuple[str, ...]:
        return (self.fhir_base_url, self.upstream_base_url) if self.upstream_base_url else (self.fhir_base_url,)


@dataclass(frozen=True, slots=True)
class Finding:
    where: str  # "entry 3" or "resource"
    resource_type: str
    problem: str


def check_response_body(body: bytes, context: ResponseContext) -> tuple[int, list[Finding]]:
    """Return (resources checked, findings). A body that is not FHIR JSON is one finding.

    The cyclic garbage collector is paused meanwhile: the parse allocates one object per JSON value and
    none of them forms a cycle, yet each 700 allocations would start a collection that scans them all
    again (a 2.8 MB Bundle took twice as long). Reference counting still frees everything."""
    paused = gc.isenabled()
    if paused:
        gc.disable()
    try:
        return _check_body(body, context)
    finally:
        if paused:
            gc.enable()


def _check_body(body: bytes, context: ResponseContext) -> tuple[int, list[Finding]]:
    try:
        document = orjson.loads(body)
    except (orjson.JSONDecodeError, RecursionError):  # JSONDecodeError: not UTF-8 JSON, or nested too deep
        return 0, [Finding("resource", "", "the response is not JSON")]
    if not isinstance(document, dict) or not isinstance(document.get("resourceType"), str):
        return 0, [Finding("resource", "", "the response is not a FHIR resource")]
    check = _Check(context)
    checked, findings = check.document(document, nested=False)
    return checked, findings + check.unaccounted(body, document)


class _Check:
    """One response's check: the scopes resolved per type once, and every resource object classified
    (by identity), so that a resource the structured pass did not meet can be found."""

    def __init__(self, context: ResponseContext) -> None:
        self.context = context
        self.access: dict[str, Access] = {}
        self.classified: set[int] = set()
        # How the context patient is named in a compartment element, so most references need no parsing.
        self.own_names = _own_names(context.patient, context.bases)

    def document(self, document: dict[str, Any], nested: bool) -> tuple[int, list[Finding]]:
        self.classified.add(id(document))
        resource_type = document["resourceType"]
        if resource_type != "Bundle":
            problem = self.resource(document)
            return 1, [Finding("resource", resource_type, problem)] if problem else []
        if document.get("type") not in (_NESTED_TYPES if nested else _BUNDLE_TYPES):
            return 0, [Finding("resource", "Bundle", f"a {document.get('type')} Bundle is not a response Bundle")]
        return self.bundle(document)

    def bundle(self, document: dict[str, Any]) -> tuple[int, list[Finding]]:
        findings: list[tuple[int, Finding]] = []
        checked = 0
        members = _BundleMembers(self.context.membership)
        provenances: list[tuple[int, dict[str, Any]]] = []  # outside the compartment by the definition
        entries = document.get("entry") or []
        for index, entry in enumerate(entries if isinstance(entries, list) else [entries]):
            for resource in _entry_resources(entry):
                checked += 1
                if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
                    findings.append((index, Finding(f"entry {index}", "", "not a FHIR resource")))
                    continue
                if resource["resourceType"] == "Bundle" and document["type"] in _NESTING_TYPES:
                    # A batch/transaction response carries the searchset of each GET entry: check inside it.
                    inner_checked, inner = self.document(resource, nested=True)
                    checked += inner_checked
                    findings.extend(
                        (index, Finding(f"entry {index} {f.where}", f.resource_type, f.problem)) for f in inner
                    )
                    continue
                problem = self.resource(resource)
                if problem == _OUTSIDE and resource["resourceType"] == "Provenance":
                    provenances.append((index, resource))  # decided once every other entry is known
                    continue
                members.record(entry, resource, passed=not problem)
                if problem:
                    findings.append((index, Finding(f"entry {index}", resource["resourceType"], problem)))
        for index, provenance in provenances:
            problem = self.provenance(provenance, members)
            if problem:
                findings.append((index, Finding(f"entry {index}", "Provenance", problem)))
        return checked, [finding for _, finding in sorted(findings, key=lambda pair: pair[0])]

    def resource(self, resource: dict[str, Any]) -> str:
        """The problem with one resource of the response (a document or an entry), or ""."""
        self.classified.add(id(resource))
        context = self.context
        resource_type: str = resource["resourceType"]
        if resource_type not in RESOURCE_TYPES:
            return f"{resource_type!r} is not an R4 resource type"
        if resource_type == "OperationOutcome":
            return self.embedded_references(resource, "an OperationOutcome") or self.contained(resource)
        if resource_type == "Bundle":
            return "a nested Bundle cannot be checked"
        if resource_type not in self.access:
            self.access[resource_type] = resolve_access_for_grants(context.grants, resource_type)
        access = self.access[resource_type]
        if access is None:
            return f"no scope grants reading {resource_type}"
        beyond_patient, constraints = access
        if beyond_patient:
            return self.contained(resource, judge=False)
        if constraints and not any(all(token_matches(resource, c, v) for c, v in q) for q in constraints):
            return "the resource does not meet the granular scope's constraint"
        if resource_type == "Binary":
            return _check_binary(resource, context)
        if resource_type in context.closed_types:
            return f"{resource_type} is not open to patient/ scopes"
        problem = self.membership(resource)
        if problem:
            return problem
        return self.contained(resource)

    def membership(self, resource: dict[str, Any]) -> str:
        """Is the resource in the context patient's compartment? One pass over its compartment elements,
        which must not reference another server: what it names there cannot be told."""
        context = self.context
        resource_type = resource["resourceType"]
        if resource_type == "Patient":
            if belongs_to_patient(
                resource,
                context.patient,
                context.fhir_base_url,
                context.follow_patient_links,
                context.membership,
                context.bases[1:],
            ):
                return ""
            return "another patient's record"
        params = context.membership.get(resource_type)
        if params is None:
            return ""  # outside the compartment: nobody's
        member = False
        for value in compartment_references(resource, params):
            reference = value.get("reference") if isinstance(value, dict) else None
            if not isinstance(reference, str):
                continue
            if reference in self.own_names:
                member = True
                continue
            if is_other_server(reference, context.bases):
                return "a compartment element referencing another server"
            resolved = self.resolve(reference)
            if resolved is not None and resolved.resource_type == "Patient" and resolved.resource_id == context.patient:
                member = True
        return "" if member else _OUTSIDE

    def contained(self, resource: dict[str, Any], judge: bool = True) -> str:
        """A contained resource has no id of its own to look up: it must be of an R4 type, must not be a
        Patient, must not reference any patient but the context patient (nor another server's one), and
        must hold no resource itself (dom-2). ``judge=False`` (a type the token reads beyond the patient):
        only account for the contained resources, so they are not taken for unclassified ones."""
        contained = resource.get("contained")
        if contained is None:
            return ""
        for inner in contained if isinstance(contained, list) else [contained]:
            if not isinstance(inner, dict) or not isinstance(inner.get("resourceType"), str):
                return "a contained resource that is not a FHIR resource"
            self.classified.add(id(inner))
            problem = self.embedded(inner) if judge else ""
            if problem:
                return problem
            if not judge:
                try:
                    self.classified.update(id(found) for found in walk_resource(inner).resources)
                except BodyError:
                    return "a contained resource nested too deeply to check"
        return ""

    def embedded(self, inner: dict[str, Any]) -> str:
        if inner["resourceType"] not in RESOURCE_TYPES:
            return f"a contained resource of a type R4 does not define ({inner['resourceType']!r})"
        if inner["resourceType"] == "Patient":
            return "a contained Patient"
        try:
            content = walk_resource(inner)
        except BodyError:
            return "a contained resource nested too deeply to check"
        self.classified.update(id(found) for found in content.resources)
        if content.resources:
            return "a resource nested inside a contained resource (dom-2 forbids it)"
        return self.references_name_other_patient(content.references, "a contained resource")

    def embedded_references(self, resource: dict[str, Any], what: str) -> str:
        """References anywhere in an OperationOutcome (its contained resources are judged separately)."""
        without_contained = {key: value for key, value in resource.items() if key != "contained"}
        try:
            content = walk_resource(without_contained)
        except BodyError:
            return f"{what} nested too deeply to check"
        return self.references_name_other_patient(content.references, what)

    def references_name_other_patient(self, references: list[str], what: str) -> str:
        for reference in references:
            resolved = self.resolve(reference)
            if resolved is not None:
                if resolved.resource_type == "Patient" and resolved.resource_id != self.context.patient:
                    return f"{what} naming another patient"
            elif (is_other_server(reference, self.context.bases) or "?" in reference) and could_name_patient(reference):
                return f"{what} naming a patient elsewhere"
        return ""

    def provenance(self, provenance: dict[str, Any], members: _BundleMembers) -> str:
        """A Provenance the definition leaves out (its target is not Patient/ctx) belongs when a target
        names a compartment resource of the same Bundle that passed, and no target names another patient
        or a resource of the Bundle that failed. Targets the Bundle does not hold are only references."""
        targets = provenance.get("target")
        anchored = False
        for target in targets if isinstance(targets, list) else []:
            reference = target.get("reference") if isinstance(target, dict) else None
            if not isinstance(reference, str):
                continue
            if is_other_server(reference, self.context.bases):
                return "a Provenance of another server's resource"
            resolved = self.resolve(reference)
            name = f"{resolved.resource_type}/{resolved.resource_id}" if resolved else reference
            if name in members.passed or reference in members.passed:
                anchored = True
            elif name in members.failed or reference in members.failed:
                return "a Provenance of a resource outside the context patient's compartment"
            elif (
                resolved is not None
                and resolved.resource_type == "Patient"
                and resolved.resource_id != self.context.patient
            ):
                return "a Provenance of another patient's record"
        if not anchored:
            return "a Provenance of nothing in the context patient's compartment"
        return self.contained(provenance)

    def resolve(self, reference: str) -> ResolvedReference | None:
        return resolve_reference(reference, *self.context.bases)

    def unaccounted(self, body: bytes, document: dict[str, Any]) -> list[Finding]:
        """Resources the structured pass did not meet: counted in C first, walked only when the count
        does not add up (or ``\\u`` escapes make the raw count unreliable)."""
        raw_count = body.count(_TYPE_WORD)
        escaped = _ESCAPE in body
        if not escaped and raw_count == len(self.classified):
            return []
        try:
            content = walk_resource(document)
        except BodyError:
            return [Finding("resource", "", "the response is nested too deeply to check")]
        findings = [
            Finding("resource", str(found.get("resourceType")), "a resource where FHIR holds none")
            for found in content.resources
            if id(found) not in self.classified
        ]
        if not escaped and raw_count > 1 + len(content.resources) + content.type_words:
            findings.append(Finding("resource", "", "a resource hidden by a duplicate JSON key"))
        return findings


@functools.lru_cache(maxsize=4096)
def _own_names(patient: str, bases: tuple[str, ...]) -> frozenset[str]:
    return frozenset({f"Patient/{patient}", *(f"{base.rstrip('/')}/Patient/{patient}" for base in bases)})


def _entry_resources(entry: Any) -> list[Any]:
    """The resource of an entry and its response outcome; [None] for an entry that is not an object."""
    if not isinstance(entry, dict):
        return [None]
    resources = [entry["resource"]] if entry.get("resource") is not None else []
    response = entry.get("response")
    if isinstance(response, dict) and isinstance(response.get("outcome"), dict):
        resources.append(response["outcome"])
    return resources


class _BundleMembers:
    """The compartment resources of one Bundle, by ``Type/id`` and by ``fullUrl``: those that passed
    (a Provenance may target them) and those that failed (a Provenance targeting them is foreign too)."""

    def __init__(self, membership: Mapping[str, tuple[str, ...]]) -> None:
        self._membership = membership
        self._recorded: list[tuple[Any, dict[str, Any], bool]] = []  # named only when a Provenance asks
        self._passed: set[str] | None = None
        self._failed: set[str] = set()

    def record(self, entry: Any, resource: dict[str, Any], passed: bool) -> None:
        self._recorded.append((entry, resource, passed))

    @property
    def passed(self) -> set[str]:
        self._name_all()
        assert self._passed is not None
        return self._passed

    @property
    def failed(self) -> set[str]:
        self._name_all()
        return self._failed

    def _name_all(self) -> None:
        if self._passed is not None:
            return
        self._passed = set()
        for entry, resource, passed in self._recorded:
            if resource["resourceType"] not in self._membership:
                continue  # a Practitioner or a Medication is nobody's: a Provenance of it is not the patient's
            names = self._passed if passed else self._failed
            if isinstance(resource.get("id"), str):
                names.add(f"{resource['resourceType']}/{resource['id']}")
            full_url = entry.get("fullUrl") if isinstance(entry, dict) else None
            if isinstance(full_url, str):
                names.add(full_url)


def _check_binary(resource: dict[str, Any], context: ResponseContext) -> str:
    security = resource.get("securityContext")
    reference = security.get("reference") if isinstance(security, dict) else None
    if isinstance(reference, str):
        resolved = resolve_reference(reference, *context.bases)
        if resolved is not None and resolved.resource_type == "Patient" and resolved.resource_id == context.patient:
            return ""
    return "a Binary whose securityContext is not the context patient"


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
