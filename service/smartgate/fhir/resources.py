"""What a FHIR resource body says about the patient compartment: the references held in its
compartment elements (from the official SearchParameter expressions), every Patient it
references anywhere, and whether it hides anything we cannot resolve (contained resources,
conditional or external references)."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from smartgate.fhir.compartment import MEMBERSHIP_PARAMS
from smartgate.fhir.definitions import search_parameter

_WHERE_PATIENT = ".where(resolve() is Patient)"
_RELATIVE = re.compile(r"([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?")
MAX_DEPTH = 64


class BodyError(ValueError):
    """The body is not a FHIR resource we can reason about."""


@dataclass(frozen=True, slots=True)
class ResolvedReference:
    resource_type: str
    resource_id: str


def parse_resource(body: bytes | None, expected_type: str | None) -> dict[str, Any]:
    if not body:
        raise BodyError("a resource body is required")
    try:
        resource = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nested too deep
        raise BodyError("the body is not JSON") from exc
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        raise BodyError("the body is not a FHIR resource")
    if expected_type is not None and resource["resourceType"] != expected_type:
        raise BodyError(f"the body is a {resource['resourceType']}, not a {expected_type}")
    return resource


def resolve_reference(reference: str, fhir_base_url: str, *other_bases: str) -> ResolvedReference | None:
    """``Type/id`` (optionally versioned, optionally absolute on our base or one of ``other_bases``, such as
    the FHIR server's own direct address); None for anything else: contained (``#x``), conditional
    (``Type?...``), ``urn:``, or another server's URL."""
    for base in (fhir_base_url, *other_bases):
        prefix = base.rstrip("/") + "/"
        if base and reference.startswith(prefix):
            reference = reference[len(prefix) :]
            break
    match = _RELATIVE.fullmatch(reference)
    if match is None:
        return None
    return ResolvedReference(match.group(1), match.group(2))


def is_other_server(reference: str, bases: tuple[str, ...]) -> bool:
    """An absolute URL on none of ``bases``: another server's resource, which nobody here can look up."""
    if "://" not in reference:
        return False
    return not any(base and reference.startswith(base.rstrip("/") + "/") for base in bases)


def could_name_patient(reference: str) -> bool:
    """Might this unresolvable reference (another server's URL, a conditional reference) name a Patient?
    True unless its tail is plainly ``OtherType/id`` or ``OtherType?...``; contained (``#x``) and
    ``urn:`` references name an entry of the same document, which is checked on its own."""
    if reference.startswith(("#", "urn:")):
        return False
    tail = reference.split("://", 1)[-1].split("?", 1)
    if len(tail) == 2:  # conditional: Type?criteria
        return tail[0].rsplit("/", 1)[-1] in ("Patient", "")
    segments = tail[0].rstrip("/").split("/")
    if len(segments) >= 4 and segments[-2] == "_history":
        segments = segments[:-2]
    if len(segments) < 2 or _RELATIVE.fullmatch("/".join(segments[-2:])) is None:
        return True  # cannot tell what it names
    return segments[-2] == "Patient"


def _values_at(node: Any, path: tuple[str, ...]) -> Iterator[Any]:
    """Every value at ``path``, flattening lists at every step (FHIRPath semantics)."""
    if isinstance(node, list):
        for item in node:
            yield from _values_at(item, path)
        return
    if not path:
        yield node
        return
    if isinstance(node, list):
        for item in node:
            yield from _values_at(item, path)
        return
    if isinstance(node, dict) and path[0] in node:
        yield from _values_at(node[path[0]], path[1:])


@functools.lru_cache(maxsize=8192)
def element_paths(resource_type: str, code: str) -> tuple[tuple[tuple[str, ...], bool], ...]:
    """(path below the resource, patient-only) for a search parameter's simple expressions."""
    info = search_parameter(resource_type, code)
    paths: list[tuple[tuple[str, ...], bool]] = []
    for expression in info.expressions if info else ():
        patient_only = expression.endswith(_WHERE_PATIENT)
        text = expression[: -len(_WHERE_PATIENT)] if patient_only else expression
        parts = text.strip("()").split(".")
        if parts[0] == resource_type and all(part.isidentifier() for part in parts):
            paths.append((tuple(parts[1:]), patient_only))
    return tuple(paths)


def compartment_elements(resource_type: str, params: tuple[str, ...] | None = None) -> frozenset[str]:
    """Top-level element names that hold compartment references (``subject``, ``performer``...).
    ``params``: the type's membership parameters when a deployment binds it beyond R4 (Device)."""
    names = set()
    for code in MEMBERSHIP_PARAMS.get(resource_type, ()) if params is None else params:
        for path, _ in element_paths(resource_type, code):
            if path:
                names.add(path[0])
    return frozenset(names)


@functools.lru_cache(maxsize=1024)
def _compartment_paths(resource_type: str, params: tuple[str, ...] | None) -> tuple[tuple[str, ...], ...]:
    codes = MEMBERSHIP_PARAMS.get(resource_type, ()) if params is None else params
    paths = {path for code in codes for path, _ in element_paths(resource_type, code)}
    return tuple(sorted(paths))


def compartment_references(resource: dict[str, Any], params: tuple[str, ...] | None = None) -> list[Any]:
    """Every value found in the resource's compartment elements (References, or junk); ``params`` as
    for ``compartment_elements``."""
    found: list[Any] = []
    for path in _compartment_paths(resource["resourceType"], params):
        _collect_along(resource, path, found)
    return found


def _collect_along(resource: dict[str, Any], path: tuple[str, ...], found: list[Any]) -> None:
    """Append the values at ``path``, lists flattened one level at each step (FHIR JSON nests no list in
    a list: a list found inside one is kept as a value, which no caller takes for a Reference). A loop, not
    generators: this runs for every entry of every verified response."""
    nodes: list[Any] = [resource]
    for step in path:
        following: list[Any] = []
        for node in nodes:
            value = node.get(step) if isinstance(node, dict) else None
            if isinstance(value, list):
                following.extend(value)
            elif value is not None:
                following.append(value)
        if not following:
            return
        nodes = following
    found.extend(nodes)


def all_reference_strings(node: Any, depth: int = 0) -> Iterator[str]:
    """Every ``reference`` string anywhere in the resource (and any string that looks like one)."""
    if depth > MAX_DEPTH:
        raise BodyError("the resource is nested too deeply")
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                yield value
            else:
                yield from all_reference_strings(value, depth + 1)
    elif isinstance(node, list):
        for item in node:
            yield from all_reference_strings(item, depth + 1)


@dataclass(slots=True)
class ResourceContent:
    """What one walk of a resource finds below it: every ``reference`` string, every resource object
    (anything with a ``resourceType``, in document order, parents before what they hold), and how many
    string values spell ``resourceType`` (so the body's raw count of that word can be accounted for)."""

    references: list[str]
    resources: list[dict[str, Any]]
    type_words: int


def walk_resource(root: Any, max_depth: int = MAX_DEPTH) -> ResourceContent:
    """One iterative walk of ``root`` (no recursion: any depth costs no stack). BodyError past ``max_depth``."""
    content = ResourceContent([], [], 0)
    stack: list[tuple[Any, int]] = [(root, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            raise BodyError("the resource is nested too deeply")
        if isinstance(node, dict):
            if node is not root and "resourceType" in node:
                content.resources.append(node)
            values: Any = node.values()
            reference = node.get("reference")
            if isinstance(reference, str):
                content.references.append(reference)
        elif isinstance(node, list):
            values = node
        else:
            continue
        for value in values:
            if isinstance(value, dict | list):
                stack.append((value, depth + 1))
            elif value == "resourceType":
                content.type_words += 1
    return content


def all_strings(node: Any, depth: int = 0) -> Iterator[str]:
    if depth > MAX_DEPTH:
        raise BodyError("the resource is nested too deeply")
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from all_strings(value, depth + 1)
    elif isinstance(node, list):
        for item in node:
            yield from all_strings(item, depth + 1)


def token_matches(resource: dict[str, Any], code: str, value: str) -> bool:
    """Does the resource satisfy ``code=value`` for a token search parameter (``system|code``,
    ``|code`` or ``code``)? Codings, CodeableConcepts, Identifiers and plain codes are read."""
    system, bar, token = value.rpartition("|") if "|" in value else ("", "", value)
    want_system = system if bar else None
    for path, _ in element_paths(resource["resourceType"], code):
        for found in _values_at(resource, path):
            for system_found, code_found in _codes(found):
                if code_found != token:
                    continue
                if want_system is None or (want_system == "" and system_found is None) or want_system == system_found:
                    return True
    return False


def _codes(value: Any) -> Iterator[tuple[str | None, str]]:
    if isinstance(value, str):
        yield None, value
    elif isinstance(value, dict):
        if isinstance(value.get("coding"), list):
            for coding in value["coding"]:
                yield from _codes(coding)
        if isinstance(value.get("code"), str):
            yield value.get("system"), value["code"]
        if isinstance(value.get("value"), str):
            yield value.get("system"), value["value"]


def belongs_to_patient(
    resource: dict[str, Any],
    patient: str,
    fhir_base_url: str,
    follow_patient_links: bool = False,
    membership: Mapping[str, tuple[str, ...]] = MEMBERSHIP_PARAMS,
    other_bases: tuple[str, ...] = (),
) -> bool:
    """Is this resource in ``patient``'s compartment, by the compartment definition's own elements?
    (Types outside the compartment belong to no patient: True.) Another Patient belongs only
    through ``Patient.link`` to ``patient``, and only when links are followed."""
    resource_type = resource.get("resourceType")
    if resource_type == "Patient":
        if resource.get("id") == patient:
            return True
        if not follow_patient_links:
            return False
        links = [link.get("other") for link in resource.get("link") or [] if isinstance(link, dict)]
        return any(_names_patient(link, patient, fhir_base_url, other_bases) for link in links)
    params = membership.get(resource_type) if isinstance(resource_type, str) else None
    if params is None:
        return True
    return any(
        _names_patient(value, patient, fhir_base_url, other_bases) for value in compartment_references(resource, params)
    )


def _names_patient(value: Any, patient: str, fhir_base_url: str, other_bases: tuple[str, ...] = ()) -> bool:
    reference = value.get("reference") if isinstance(value, dict) else None
    if not isinstance(reference, str):
        return False
    resolved = resolve_reference(reference, fhir_base_url, *other_bases)
    return resolved is not None and resolved.resource_type == "Patient" and resolved.resource_id == patient
