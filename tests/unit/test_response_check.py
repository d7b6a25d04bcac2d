"""Response verification, the pure part: which resources of a FHIR response may be shown to a
patient-context token (issue 8, item 2)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from smartgate.fhir.compartment import bound_types
from smartgate.policy.response_rules import ResponseContext, check_response_body
from smartgate.tokens.scopes import parse_scopes

BASE = "https://fhir.example.org/r4"
CLOSED = frozenset({"Binary", "Task"})
LAB = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"


def context(scope: str = "patient/*.rs", patient: str = "123") -> ResponseContext:
    return ResponseContext(patient, parse_scopes([scope]), BASE, CLOSED)


def observation(patient: str = "123", ident: str = "o1", category: str | None = None, **extra: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": ident,
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": f"Patient/{patient}"},
    }
    if category is not None:
        system, code = category.split("|")
        resource["category"] = [{"coding": [{"system": system, "code": code}]}]
    resource.update(extra)
    return resource


def bundle(kind: str, *resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": [{"resource": r} for r in resources]}


def problems(document: Any, ctx: ResponseContext | None = None) -> list[str]:
    body = document if isinstance(document, bytes) else json.dumps(document).encode()
    _, findings = check_response_body(body, ctx or context())
    return [f"{f.where}: {f.problem}" for f in findings]


# --- what passes ---------------------------------------------------------------------------------


def test_the_context_patients_own_resource_passes() -> None:
    assert problems(observation()) == []


def test_the_context_patient_record_passes() -> None:
    assert problems({"resourceType": "Patient", "id": "123"}) == []


def test_an_absolute_reference_on_our_base_to_the_context_patient_passes() -> None:
    assert problems(observation(subject={"reference": f"{BASE}/Patient/123"})) == []


def test_an_operation_outcome_passes() -> None:
    assert problems({"resourceType": "OperationOutcome", "issue": []}) == []


def test_a_granted_type_outside_the_compartment_passes() -> None:
    assert problems({"resourceType": "Practitioner", "id": "p1"}, context("patient/Practitioner.rs")) == []


def test_a_type_granted_beyond_the_patient_by_a_user_scope_passes() -> None:
    assert problems(observation("456"), context("patient/Patient.rs user/Observation.rs")) == []


@pytest.mark.parametrize("kind", ["searchset", "history"])
def test_a_bundle_of_own_resources_passes_and_every_resource_is_counted(kind: str) -> None:
    body = json.dumps(bundle(kind, observation(ident="a"), observation(ident="b"))).encode()
    checked, findings = check_response_body(body, context())
    assert (checked, findings) == (2, [])


def test_an_empty_searchset_passes() -> None:
    assert problems({"resourceType": "Bundle", "type": "searchset", "total": 0}) == []


def test_a_binary_whose_security_context_is_the_context_patient_passes() -> None:
    binary = {"resourceType": "Binary", "id": "b1", "securityContext": {"reference": "Patient/123"}}
    assert problems(binary) == []


# --- what is withheld ------------------------------------------------------------------------------


def test_another_patients_resource_is_a_finding() -> None:
    assert problems(observation("456")) == ["resource: a resource outside the context patient's compartment"]


def test_another_patient_record_is_a_finding() -> None:
    assert problems({"resourceType": "Patient", "id": "456"}) == ["resource: another patient's record"]


def test_a_reference_to_the_patient_on_another_server_is_a_finding() -> None:
    assert problems(observation(subject={"reference": "https://other.example.org/fhir/Patient/123"}))


def test_one_foreign_resource_in_a_searchset_is_named_by_its_entry() -> None:
    found = problems(bundle("searchset", observation(ident="a"), observation("456", ident="b")))
    assert found == ["entry 1: a resource outside the context patient's compartment"]


def test_a_type_the_scopes_do_not_grant_is_a_finding_even_for_the_context_patient() -> None:
    condition = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/123"}}
    assert problems(condition, context("patient/Observation.rs")) == ["resource: no scope grants reading Condition"]


def test_a_granted_type_outside_the_compartment_needs_its_scope() -> None:
    assert problems({"resourceType": "Practitioner", "id": "p1"}, context("patient/Observation.rs"))


def test_a_resource_outside_the_granular_constraint_is_a_finding() -> None:
    scoped = context(f"patient/Observation.rs?category={LAB}")
    assert problems(observation(category=LAB), scoped) == []
    vital = "http://terminology.hl7.org/CodeSystem/observation-category|vital-signs"
    assert problems(observation(category=vital), scoped) == [
        "resource: the resource does not meet the granular scope's constraint"
    ]


def test_several_granular_scopes_union() -> None:
    vital = "http://terminology.hl7.org/CodeSystem/observation-category|vital-signs"
    scoped = context(f"patient/Observation.rs?category={LAB} patient/Observation.rs?category={vital}")
    assert problems(bundle("searchset", observation(category=LAB), observation(category=vital)), scoped) == []


def test_a_closed_type_is_a_finding() -> None:
    task = {"resourceType": "Task", "id": "t1", "for": {"reference": "Patient/123"}}
    assert problems(task, context("patient/Task.rs")) == ["resource: Task is not open to patient/ scopes"]


def test_a_binary_without_the_context_patient_as_security_context_is_a_finding() -> None:
    assert problems({"resourceType": "Binary", "id": "b1"})
    assert problems({"resourceType": "Binary", "id": "b1", "securityContext": {"reference": "Patient/456"}})


def test_a_contained_patient_is_a_finding() -> None:
    contained = observation(contained=[{"resourceType": "Patient", "id": "p", "name": [{"family": "Brown"}]}])
    assert problems(contained) == ["resource: a contained Patient"]


def test_a_contained_resource_naming_another_patient_is_a_finding() -> None:
    inner = {"resourceType": "Condition", "id": "c", "subject": {"reference": "Patient/456"}}
    assert problems(observation(contained=[inner])) == ["resource: a contained resource naming another patient"]


def test_a_contained_resource_without_patient_references_passes() -> None:
    inner = {"resourceType": "Medication", "id": "m", "code": {"text": "aspirin"}}
    assert problems(observation(contained=[inner])) == []


# --- Bundles of every response kind ---------------------------------------------------------------


def test_a_searchset_inside_a_batch_response_is_checked_entry_by_entry() -> None:
    inner = bundle("searchset", observation(ident="a"), observation("456", ident="b"))
    outer = {
        "resourceType": "Bundle",
        "type": "batch-response",
        "entry": [{"resource": inner, "response": {"status": "200 OK"}}],
    }
    assert problems(outer) == ["entry 0 entry 1: a resource outside the context patient's compartment"]


def test_a_transaction_response_checks_resources_and_passes_outcomes() -> None:
    outcome = {"resourceType": "OperationOutcome", "issue": []}
    outer: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "transaction-response",
        "entry": [
            {"resource": observation(), "response": {"status": "201 Created"}},
            {"response": {"status": "204 No Content", "outcome": outcome}},
            {"response": {"status": "200 OK"}},
        ],
    }
    assert problems(outer) == []
    outer["entry"].append({"resource": observation("456"), "response": {"status": "200 OK"}})
    assert problems(outer) == ["entry 3: a resource outside the context patient's compartment"]


@pytest.mark.parametrize("kind", ["document", "collection", "transaction", "batch", "message", None])
def test_a_bundle_that_is_not_a_response_bundle_is_a_finding(kind: str | None) -> None:
    assert problems({"resourceType": "Bundle", "type": kind, "entry": []})


def test_a_bundle_nested_in_a_searchset_is_a_finding() -> None:
    assert problems(bundle("searchset", bundle("searchset", observation("456"))))


def test_a_batch_response_nested_in_a_batch_response_is_a_finding() -> None:
    inner = {"resourceType": "Bundle", "type": "batch-response", "entry": []}
    outer = {"resourceType": "Bundle", "type": "batch-response", "entry": [{"resource": inner}]}
    assert problems(outer)


def test_an_entry_that_is_not_a_resource_is_a_finding() -> None:
    assert problems({"resourceType": "Bundle", "type": "searchset", "entry": ["x", {"resource": {"id": "1"}}]}) == [
        "entry 0: not a FHIR resource",
        "entry 1: not a FHIR resource",
    ]


# --- what cannot be read -----------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"", b"not json", b"\xff\xfe", b"[]", b'{"id": "x"}', b'"Patient"'])
def test_a_body_that_is_not_a_fhir_resource_is_a_finding(body: bytes) -> None:
    assert problems(body)


def test_deeply_nested_json_is_a_finding_not_an_exception() -> None:
    assert problems(b'{"resourceType": "Observation", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")


def test_a_contained_resource_nested_too_deeply_is_a_finding() -> None:
    deep: Any = {"reference": "Patient/123"}
    for _ in range(200):
        deep = {"x": deep}
    inner = {"resourceType": "Medication", "id": "m", "extension": [deep]}
    assert problems(observation(contained=[inner])) == ["resource: a contained resource nested too deeply to check"]


# --- types a deployment binds beyond R4's compartment (Device through patient) ------------------------


def device(patient: str | None, ident: str = "d1") -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "Device", "id": ident}
    if patient is not None:
        resource["patient"] = {"reference": f"Patient/{patient}"}
    return resource


def bound_context() -> ResponseContext:
    return ResponseContext(
        "123", parse_scopes(["patient/*.rs"]), BASE, CLOSED, membership=bound_types({"Device": ("patient",)}).membership
    )


def test_a_device_of_another_patient_is_foreign_when_device_is_bound_through_patient() -> None:
    found = problems(bundle("searchset", device("123"), device("456", "d2")), bound_context())
    assert found == ["entry 1: a resource outside the context patient's compartment"]


@pytest.mark.parametrize("patient", [None, "456"])
def test_an_included_device_that_is_not_the_patients_is_foreign(patient: str | None) -> None:
    document = bundle("searchset", observation())
    document["entry"].append({"resource": device(patient, "d9"), "search": {"mode": "include"}})
    assert len(problems(document, bound_context())) == 1


def test_the_patients_own_device_passes() -> None:
    assert problems(bundle("searchset", device("123")), bound_context()) == []


def test_without_the_binding_a_device_is_outside_the_compartment_as_in_r4() -> None:
    assert problems(bundle("searchset", device("456"))) == []
