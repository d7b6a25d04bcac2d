"""Response verification for issue 15: Provenance brought in by ``_revinclude=Provenance:target``,
entries brought in by ``_include`` (``search.mode: include``), and Patient records linked to the
context patient. Pure checks of a response body against patient 123 and ``patient/*.rs``."""

from __future__ import annotations

import json
from typing import Any

from smartgate.policy.response_rules import ResponseContext, check_response_body
from smartgate.tokens.scopes import parse_scopes

BASE = "https://fhir.example.org/r4"
SERVER = "http://fhir-server:8080/fhir"  # the FHIR server's own base, as it writes fullUrl
CLOSED = frozenset({"Binary", "Task"})


def context(scope: str = "patient/*.rs", follow_patient_links: bool = False) -> ResponseContext:
    return ResponseContext("123", parse_scopes([scope]), BASE, CLOSED, follow_patient_links)


def observation(ident: str, patient: str = "123") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": ident,
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": f"Patient/{patient}"},
    }


def provenance(ident: str, *targets: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Provenance",
        "id": ident,
        "recorded": "2024-01-01T00:00:00Z",
        "target": [{"reference": target} for target in targets],
        "agent": [{"who": {"reference": "Organization/org-1"}}],
        **extra,
    }


def entry(resource: dict[str, Any], mode: str = "match", full_url: str | None = None) -> dict[str, Any]:
    built: dict[str, Any] = {"resource": resource, "search": {"mode": mode}}
    built["fullUrl"] = full_url or f"{SERVER}/{resource['resourceType']}/{resource['id']}"
    return built


def searchset(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "entry": list(entries)}


def problems(document: dict[str, Any], ctx: ResponseContext | None = None) -> list[str]:
    _, findings = check_response_body(json.dumps(document).encode(), ctx or context())
    return [f"{f.where} {f.resource_type}: {f.problem}" for f in findings]


# --- Provenance --------------------------------------------------------------------------------------


def test_a_provenance_of_an_observation_of_the_same_response_passes() -> None:
    assert problems(searchset(entry(observation("o1")), entry(provenance("p1", "Observation/o1"), "include"))) == []


def test_a_provenance_may_come_before_the_resource_it_targets() -> None:
    assert problems(searchset(entry(provenance("p1", "Observation/o1"), "include"), entry(observation("o1")))) == []


def test_a_provenance_targeting_a_resource_of_the_response_by_its_full_url_passes() -> None:
    assert (
        problems(
            searchset(
                entry(observation("o1"), full_url="urn:uuid:4f1d"), entry(provenance("p1", "urn:uuid:4f1d"), "include")
            )
        )
        == []
    )


def test_a_provenance_targeting_an_absolute_reference_on_our_base_passes() -> None:
    assert (
        problems(
            searchset(entry(observation("o1")), entry(provenance("p1", f"{BASE}/Observation/o1/_history/2"), "include"))
        )
        == []
    )


def test_a_provenance_of_the_context_patient_passes_on_its_own() -> None:
    assert problems(provenance("p1", "Patient/123")) == []
    assert problems(searchset(entry(provenance("p1", "Patient/123"), "include"))) == []


def test_a_provenance_also_targeting_resources_the_response_does_not_hold_passes() -> None:
    document = searchset(
        entry(observation("o1")), entry(provenance("p1", "Observation/o1", "Observation/o2", "Encounter/e9"), "include")
    )
    assert problems(document) == []


def test_a_provenance_targeting_another_patient_is_a_finding() -> None:
    document = searchset(entry(observation("o1")), entry(provenance("p1", "Observation/o1", "Patient/456"), "include"))
    assert problems(document) == ["entry 1 Provenance: a Provenance of another patient's record"]


def test_a_provenance_of_another_patients_resource_in_the_response_is_a_finding() -> None:
    document = searchset(
        entry(observation("o1")),
        entry(observation("o9", patient="456")),
        entry(provenance("p1", "Observation/o1", "Observation/o9"), "include"),
    )
    assert problems(document) == [
        "entry 1 Observation: a resource outside the context patient's compartment",
        "entry 2 Provenance: a Provenance of a resource outside the context patient's compartment",
    ]


def test_a_provenance_of_nothing_in_the_response_is_a_finding() -> None:
    document = searchset(entry(observation("o1")), entry(provenance("p1", "Observation/o2"), "include"))
    assert problems(document) == ["entry 1 Provenance: a Provenance of nothing in the context patient's compartment"]


def test_a_provenance_of_a_resource_outside_the_compartment_is_a_finding() -> None:
    practitioner = {"resourceType": "Practitioner", "id": "pr1"}
    document = searchset(entry(practitioner), entry(provenance("p1", "Practitioner/pr1"), "include"))
    assert problems(document) == ["entry 1 Provenance: a Provenance of nothing in the context patient's compartment"]


def test_a_provenance_alone_targeting_an_observation_is_a_finding() -> None:
    assert problems(provenance("p1", "Observation/o1")) == [
        "resource Provenance: a resource outside the context patient's compartment"
    ]


def test_a_provenance_still_needs_a_scope_that_reads_it() -> None:
    document = searchset(entry(observation("o1")), entry(provenance("p1", "Observation/o1"), "include"))
    assert problems(document, context("patient/Observation.rs")) == [
        "entry 1 Provenance: no scope grants reading Provenance"
    ]


def test_a_provenance_with_a_contained_patient_is_a_finding() -> None:
    contained = [{"resourceType": "Patient", "id": "x"}]
    document = searchset(
        entry(observation("o1")), entry(provenance("p1", "Observation/o1", contained=contained), "include")
    )
    assert problems(document) == ["entry 1 Provenance: a contained Patient"]


def test_a_provenance_in_a_searchset_inside_a_batch_response_is_anchored_in_its_own_searchset() -> None:
    inner = searchset(entry(observation("o1")), entry(provenance("p1", "Observation/o1"), "include"))
    stray = searchset(entry(provenance("p2", "Observation/o1"), "include"))
    batch = {"resourceType": "Bundle", "type": "batch-response", "entry": [{"resource": inner}, {"resource": stray}]}
    assert problems(batch) == [
        "entry 1 entry 0 Provenance: a Provenance of nothing in the context patient's compartment"
    ]


# --- included entries are checked like matches ----------------------------------------------------------


def test_an_included_resource_of_another_patient_is_a_finding() -> None:
    eob = {
        "resourceType": "ExplanationOfBenefit",
        "id": "eob1",
        "patient": {"reference": "Patient/123"},
        "insurance": [{"focal": True, "coverage": {"reference": "Coverage/c9"}}],
    }
    coverage = {
        "resourceType": "Coverage",
        "id": "c9",
        "status": "active",
        "beneficiary": {"reference": "Patient/456"},
        "payor": [{"reference": "Organization/o"}],
    }
    assert problems(searchset(entry(eob), entry(coverage, "include"))) == [
        "entry 1 Coverage: a resource outside the context patient's compartment"
    ]


def test_an_included_type_the_scopes_do_not_grant_is_a_finding() -> None:
    eob = {"resourceType": "ExplanationOfBenefit", "id": "eob1", "patient": {"reference": "Patient/123"}}
    organization = {"resourceType": "Organization", "id": "org-1"}
    assert problems(
        searchset(entry(eob), entry(organization, "include")), context("patient/ExplanationOfBenefit.rs")
    ) == ["entry 1 Organization: no scope grants reading Organization"]


def test_included_resources_of_the_context_patient_pass() -> None:
    eob = {"resourceType": "ExplanationOfBenefit", "id": "eob1", "patient": {"reference": "Patient/123"}}
    coverage = {
        "resourceType": "Coverage",
        "id": "c1",
        "status": "active",
        "beneficiary": {"reference": "Patient/123"},
        "payor": [{"reference": "Organization/o"}],
    }
    organization = {"resourceType": "Organization", "id": "o"}
    document = searchset(
        entry(eob),
        entry(coverage, "include"),
        entry(organization, "include"),
        entry({"resourceType": "Patient", "id": "123"}, "include"),
    )
    assert problems(document) == []


# --- linked patients --------------------------------------------------------------------------------------


LINKED = {"resourceType": "Patient", "id": "789", "link": [{"other": {"reference": "Patient/123"}, "type": "seealso"}]}


def test_a_patient_linking_to_the_context_patient_is_a_finding_by_default() -> None:
    assert problems(LINKED) == ["resource Patient: another patient's record"]
    assert problems(searchset(entry({"resourceType": "Patient", "id": "123"}), entry(LINKED, "include"))) == [
        "entry 1 Patient: another patient's record"
    ]


def test_a_patient_linking_to_the_context_patient_passes_when_links_are_followed() -> None:
    assert problems(LINKED, context(follow_patient_links=True)) == []


def test_a_patient_not_linking_to_the_context_patient_is_a_finding_even_when_links_are_followed() -> None:
    other = {"resourceType": "Patient", "id": "456", "link": [{"other": {"reference": "Patient/999"}}]}
    assert problems(other, context(follow_patient_links=True)) == ["resource Patient: another patient's record"]


def test_a_provenance_of_a_linked_patient_follows_the_same_rule() -> None:
    document = searchset(entry(LINKED), entry(provenance("p1", "Patient/789"), "include"))
    assert problems(document, context(follow_patient_links=True)) == []
    assert problems(document) == [
        "entry 0 Patient: another patient's record",
        "entry 1 Provenance: a Provenance of a resource outside the context patient's compartment",
    ]
