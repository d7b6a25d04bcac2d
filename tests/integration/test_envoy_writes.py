"""Writes through the real Envoy: the compartment holds for create, update, delete and Bundles."""

from __future__ import annotations

import json

import pytest

from tests.support.stack import Stack

pytestmark = pytest.mark.integration
FHIR_JSON = {"content-type": "application/fhir+json"}
WRITER = "launch/patient patient/Observation.cruds patient/Observation.rs"


def observation(subject: str, resource_id: str | None = None) -> bytes:
    resource = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "Weight"},
        "subject": {"reference": subject},
    }
    if resource_id is not None:
        resource["id"] = resource_id
    return json.dumps(resource).encode()


def test_create_for_the_context_patient_is_allowed(stack: Stack) -> None:
    response = stack.post(
        "/Observation", stack.token(scope=WRITER), content=observation("Patient/123"), headers=FHIR_JSON
    )
    assert response.status_code == 201


def test_create_for_another_patient_is_denied(stack: Stack) -> None:
    response = stack.post(
        "/Observation", stack.token(scope=WRITER), content=observation("Patient/456"), headers=FHIR_JSON
    )
    assert response.status_code == 403
    assert "x-demo-received-path" not in response.headers


def test_create_needs_c_and_read_scope_does_not_imply_it(stack: Stack) -> None:
    response = stack.post("/Observation", stack.token(), content=observation("Patient/123"), headers=FHIR_JSON)
    assert response.status_code == 403


def test_conditional_create_is_denied_for_patient_tokens(stack: Stack) -> None:
    headers = {**FHIR_JSON, "if-none-exist": "identifier=x"}
    response = stack.post(
        "/Observation", stack.token(scope=WRITER), content=observation("Patient/123"), headers=headers
    )
    assert response.status_code == 403


def test_update_of_another_patients_resource_is_denied(stack: Stack) -> None:
    response = stack.client.put(
        f"{stack.base_url}/Observation/obs-456-a",
        content=observation("Patient/123", "obs-456-a"),
        headers={**FHIR_JSON, "authorization": f"Bearer {stack.token(scope=WRITER)}"},
    )
    assert response.status_code == 403
    assert response.json()["issue"][0]["details"]["coding"][0]["code"] == "not_in_compartment"


def test_upsert_of_a_new_id_bound_to_the_context_patient_is_allowed(stack: Stack) -> None:
    response = stack.client.put(
        f"{stack.base_url}/Observation/brand-new-1",
        content=observation("Patient/123", "brand-new-1"),
        headers={**FHIR_JSON, "authorization": f"Bearer {stack.token(scope=WRITER)}"},
    )
    assert response.status_code == 201


def test_delete_of_another_patients_resource_is_denied(stack: Stack) -> None:
    response = stack.client.delete(
        f"{stack.base_url}/Observation/obs-456-a", headers={"authorization": f"Bearer {stack.token(scope=WRITER)}"}
    )
    assert response.status_code == 403
    assert stack.get("/Observation/obs-456-a", stack.token(scope="user/*.rs", patient=None)).status_code == 200


def test_bundle_with_one_foreign_entry_is_denied_whole_and_names_the_entry(stack: Stack) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"request": {"method": "GET", "url": "Observation?patient=123"}},
            {"request": {"method": "POST", "url": "Observation"}, "resource": json.loads(observation("Patient/456"))},
        ],
    }
    response = stack.post("", stack.token(scope=WRITER), content=json.dumps(bundle).encode(), headers=FHIR_JSON)
    assert response.status_code == 403
    assert "entry 1" in response.json()["issue"][0]["details"]["text"]
