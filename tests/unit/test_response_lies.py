"""Response verification against a FHIR server that lies (issue 16, item 0): what the verifier cannot
classify is a finding. Each test is one lie that passed as ``response_clean`` before."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from smartgate.policy.response_rules import ResponseContext, check_response_body
from smartgate.tokens.scopes import parse_scopes

BASE = "https://fhir.example.org/r4"
UPSTREAM = "http://fhir-server:8080/fhir"


def context(scope: str = "patient/*.rs") -> ResponseContext:
    return ResponseContext("123", parse_scopes([scope]), BASE, frozenset({"Binary"}), upstream_base_url=UPSTREAM)


def observation(patient: str = "123", ident: str = "o1", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": ident,
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": f"Patient/{patient}"},
        **extra,
    }


def searchset(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "entry": list(entries)}


def problems(document: Any, ctx: ResponseContext | None = None) -> list[str]:
    body = document if isinstance(document, bytes) else orjson.dumps(document)
    _, findings = check_response_body(body, ctx or context())
    return [f"{f.where}: {f.problem}" for f in findings]


B_OBSERVATION = observation("456", "obs-456")


# --- (a) a resourceType R4 does not define ---------------------------------------------------------------


@pytest.mark.parametrize("resource_type", ["observation", "Observation ", "Foo", "Resource"])
def test_an_entry_of_a_type_r4_does_not_define_is_a_finding(resource_type: str) -> None:
    lie = {**B_OBSERVATION, "resourceType": resource_type}
    assert problems(searchset({"resource": observation()}, {"resource": lie})) == [
        f"entry 1: {resource_type!r} is not an R4 resource type"
    ]


def test_a_single_resource_of_a_type_r4_does_not_define_is_a_finding() -> None:
    assert problems({**B_OBSERVATION, "resourceType": "observation"})


def test_a_contained_resource_of_a_type_r4_does_not_define_is_a_finding() -> None:
    assert problems(observation(contained=[{"resourceType": "medication", "id": "m"}]))


# --- (b) an OperationOutcome is looked into -------------------------------------------------------------


def test_an_outcome_entry_containing_another_patients_resource_is_a_finding() -> None:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "information", "code": "informational"}],
        "contained": [B_OBSERVATION],
    }
    found = problems(searchset({"resource": observation()}, {"resource": outcome, "search": {"mode": "outcome"}}))
    assert found == ["entry 1: a contained resource naming another patient"]


def test_an_outcome_carrying_a_resource_in_an_extension_is_a_finding() -> None:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "information",
                "code": "informational",
                "extension": [{"url": "http://example.org/x", "valueResource": B_OBSERVATION}],
            }
        ],
    }
    assert problems(searchset({"resource": outcome, "search": {"mode": "outcome"}})) == [
        "entry 0: an OperationOutcome naming another patient",
        "resource: a resource where FHIR holds none",
    ]


def test_an_outcome_naming_another_patient_is_a_finding() -> None:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "processing",
                "extension": [{"url": "http://example.org/x", "valueReference": {"reference": "Patient/456"}}],
            }
        ],
    }
    assert problems(outcome) == ["resource: an OperationOutcome naming another patient"]


def test_an_ordinary_outcome_entry_passes() -> None:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "warning", "code": "informational", "diagnostics": "the search was narrowed"}],
    }
    assert problems(searchset({"resource": observation()}, {"resource": outcome, "search": {"mode": "outcome"}})) == []


# --- (c) contained resources at any depth ----------------------------------------------------------------


def test_a_resource_nested_in_a_contained_resource_is_a_finding() -> None:
    inner = {
        "resourceType": "Observation",
        "id": "x",
        "status": "final",
        "code": {"text": "x"},
        "contained": [{"resourceType": "Patient", "id": "p", "name": [{"family": "Brown"}]}],
    }
    condition = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/123"}, "contained": [inner]}
    assert problems(condition) == ["resource: a resource nested inside a contained resource (dom-2 forbids it)"]


def test_a_resource_hidden_anywhere_else_in_an_entry_is_a_finding() -> None:
    lie = observation(
        extension=[{"url": "http://example.org/x", "valueResource": {"resourceType": "Patient", "id": "456"}}]
    )
    assert problems(searchset({"resource": lie})) == ["resource: a resource where FHIR holds none"]


def test_a_resource_hidden_behind_a_unicode_escape_is_still_found() -> None:
    body = (
        b'{"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"},'
        b' "subject": {"reference": "Patient/123"},'
        b' "note": [{"text": "x", "x": {"resource\\u0054ype": "Patient", "id": "456"}}]}'
    )
    assert problems(body) == ["resource: a resource where FHIR holds none"]


def test_a_resource_hidden_by_a_duplicate_key_is_a_finding() -> None:
    body = (
        b'{"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"},'
        b' "subject": {"reference": "Patient/123"},'
        b' "contained": [{"resourceType": "Patient", "id": "456"}], "contained": []}'
    )
    assert problems(body) == ["resource: a resource hidden by a duplicate JSON key"]


def test_the_word_resource_type_as_a_value_is_not_taken_for_a_resource() -> None:
    assert problems(observation(code={"text": "resourceType"})) == []


# --- (d) the FHIR server's own direct address, and other servers ------------------------------------------


def test_a_contained_resource_naming_another_patient_by_the_upstream_address_is_a_finding() -> None:
    inner = {"resourceType": "Condition", "id": "c", "subject": {"reference": f"{UPSTREAM}/Patient/456"}}
    assert problems(observation(contained=[inner])) == ["resource: a contained resource naming another patient"]


def test_the_context_patient_by_the_upstream_address_is_the_context_patient() -> None:
    assert problems(observation(subject={"reference": f"{UPSTREAM}/Patient/123"})) == []
    inner = {"resourceType": "Condition", "id": "c", "subject": {"reference": f"{UPSTREAM}/Patient/123"}}
    assert problems(observation(contained=[inner])) == []


def test_another_patient_by_the_upstream_address_is_another_patient() -> None:
    assert problems(observation(subject={"reference": f"{UPSTREAM}/Patient/456"})) == [
        "resource: a resource outside the context patient's compartment"
    ]


def test_a_compartment_element_referencing_another_server_is_a_finding_even_beside_the_patient() -> None:
    lie = observation(performer=[{"reference": "https://other.example.org/fhir/Practitioner/1"}])
    assert problems(lie) == ["resource: a compartment element referencing another server"]


@pytest.mark.parametrize(
    "reference",
    [
        "https://other.example.org/fhir/Patient/456",
        "https://other.example.org/x",
        "Patient?identifier=http://hospital|456",
    ],
)
def test_a_contained_resource_that_could_name_a_patient_elsewhere_is_a_finding(reference: str) -> None:
    inner = {"resourceType": "Condition", "id": "c", "subject": {"reference": reference}}
    assert problems(observation(contained=[inner])) == ["resource: a contained resource naming a patient elsewhere"]


def test_a_contained_resource_naming_another_servers_practitioner_passes() -> None:
    inner = {
        "resourceType": "Medication",
        "id": "m",
        "manufacturer": {"reference": "https://other.example.org/fhir/Organization/1"},
    }
    assert problems(observation(contained=[inner])) == []


def test_a_binary_security_context_by_the_upstream_address_passes() -> None:
    binary = {"resourceType": "Binary", "id": "b", "securityContext": {"reference": f"{UPSTREAM}/Patient/123"}}
    assert problems(binary, context("patient/Binary.r")) == []
