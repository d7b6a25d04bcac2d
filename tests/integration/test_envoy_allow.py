"""Allowed requests through the real Envoy: the upstream sees verified context headers only."""

from __future__ import annotations

import json

import pytest

from tests.support.stack import Stack

pytestmark = pytest.mark.integration


def received_smart_headers(response_headers: dict[str, str]) -> dict[str, str]:
    return dict(json.loads(response_headers["x-demo-received-smart"]))


def test_bound_search_is_allowed_with_verified_context_headers(stack: Stack) -> None:
    token = stack.token(fhirUser=f"{stack.base_url}/Patient/123")
    response = stack.get("/Observation?patient=123", token)
    assert response.status_code == 200
    assert {e["resource"]["id"] for e in response.json()["entry"]} == {"obs-123-a", "obs-123-b"}
    assert received_smart_headers(dict(response.headers)) == {
        "x-smart-patient": "123",
        "x-smart-fhir-user": "Patient/123",
        "x-smart-scope": "launch/patient patient/*.rs",
        "x-smart-client-id": "app-1",
        "x-smart-subject": "user-1",
        "x-smart-issuer": stack.issuer,
    }


def test_spoofed_context_headers_are_overwritten_or_removed(stack: Stack) -> None:
    token = stack.token()  # no fhirUser claim
    response = stack.get(
        "/Observation?patient=123",
        token,
        headers={
            "x-smart-patient": "456",
            "x-smart-fhir-user": "Practitioner/evil",
            "x-smart-scope": "user/*.cruds",
        },
    )
    assert response.status_code == 200
    seen = received_smart_headers(dict(response.headers))
    assert seen["x-smart-patient"] == "123"
    assert seen["x-smart-scope"] == "launch/patient patient/*.rs"
    assert "x-smart-fhir-user" not in seen


def test_public_metadata_needs_no_token_and_strips_spoofed_headers(stack: Stack) -> None:
    response = stack.get("/metadata", headers={"x-smart-patient": "456"})
    assert response.status_code == 200
    assert response.json()["resourceType"] == "CapabilityStatement"
    assert received_smart_headers(dict(response.headers)) == {}


def test_rs256_token_is_accepted(stack: Stack) -> None:
    assert stack.get("/Observation?patient=123", stack.token(alg="RS256")).status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/Observation?patient=123",
        "/Observation?patient=Patient/123",
        "/Observation?subject=Patient/123",
        "/Observation?subject:Patient=123",
        "/Patient/123/Observation",
        "/Patient/123",
        "/Patient?_id=123",
    ],
)
def test_each_binding_form_for_the_context_patient_is_allowed(stack: Stack, path: str) -> None:
    assert stack.get(path, stack.token()).status_code == 200


def test_absolute_reference_on_our_base_is_allowed(stack: Stack) -> None:
    path = f"/Observation?subject={stack.base_url}/Patient/123"
    assert stack.get(path, stack.token()).status_code == 200


def test_read_by_id_of_a_compartment_member_is_allowed_after_look_up(stack: Stack) -> None:
    response = stack.get("/Observation/obs-123-a", stack.token())
    assert response.status_code == 200
    assert response.json()["id"] == "obs-123-a"


def test_read_through_a_second_compartment_parameter_is_allowed(stack: Stack) -> None:
    # obs-456-by-123 has subject Patient/456 but performer Patient/123: it is in 123's compartment.
    assert stack.get("/Observation/obs-456-by-123", stack.token()).status_code == 200


def test_coverage_is_read_through_beneficiary(stack: Stack) -> None:
    assert stack.get("/Coverage/cov-123", stack.token()).status_code == 200
    assert stack.get("/Coverage/cov-456", stack.token()).status_code == 403


def test_post_search_with_bound_form_body_is_allowed(stack: Stack) -> None:
    response = stack.post(
        "/Observation/_search",
        stack.token(),
        content=b"patient=123",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200
    assert response.json()["total"] == 2


def test_type_outside_the_compartment_is_readable_under_a_patient_scope(stack: Stack) -> None:
    token = stack.token(scope="launch/patient patient/Practitioner.rs")
    assert stack.get("/Practitioner/prac-1", token).status_code == 200


def test_user_scope_allows_by_type(stack: Stack) -> None:
    token = stack.token(scope="user/Observation.rs", patient=None)
    assert stack.get("/Observation?patient=456", token).status_code == 200


def test_decision_log_names_the_reason_and_never_the_token(stack: Stack) -> None:
    token = stack.token()
    stack.get("/Observation?patient=123", token)
    stack.get("/Observation?patient=456", token)
    log = stack.decision_log()
    assert token not in log and token.split(".")[2] not in log
    entries = [json.loads(line) for line in log.splitlines()]
    assert {"allowed_compartment_search", "compartment_other_patient"} <= {e["reason"] for e in entries}


def test_vread_of_a_compartment_member_checks_that_version_too(stack: Stack) -> None:
    assert stack.get("/Observation/obs-123-a/_history/1", stack.token()).status_code == 200
    assert stack.get("/Observation/obs-123-a/_history", stack.token()).status_code == 200
