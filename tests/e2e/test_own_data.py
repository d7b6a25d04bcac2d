"""The other side of the leak test: with A's token, the same kinds of requests on A's own data
succeed where the scopes allow (reads, vreads, searches, instance history, $everything,
batch/transaction Bundles, create, update, patch, delete)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from .checks import assert_no_foreign_data, assert_ok, entry_refs
from .conftest import E2EStack

pytestmark = pytest.mark.e2e

SCOPE = "launch/patient patient/*.cruds"
FHIR_JSON = {"content-type": "application/fhir+json"}


def _gateway_params() -> pytest.MarkDecorator:
    return pytest.mark.parametrize(
        "gateway_name",
        [
            "default",
            "verified",
        ],
    )


def _stack(request: pytest.FixtureRequest, name: str) -> E2EStack:
    stack: E2EStack = request.getfixturevalue("e2e" if name == "default" else "e2e_verified")
    return stack


def _observation(subject: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "preliminary",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
        "subject": {"reference": subject},
        "valueQuantity": {"value": 64, "unit": "/min"},
        **extra,
    }


def test_reads_vreads_and_searches_of_own_data(gateway: E2EStack) -> None:
    token = gateway.token("alice", SCOPE)
    a = gateway.data.patients["A"]
    for ref in sorted(a.resources):
        assert assert_ok(gateway.get(f"/{ref}", token))["id"] == ref.split("/")[1], ref
    obs = f"Observation/{a.ids('Observation')[0]}"
    resource = gateway.fhir.resource(obs)
    assert resource is not None, obs
    version = resource["meta"]["versionId"]
    assert assert_ok(gateway.get(f"/{obs}/_history/{version}", token))["meta"]["versionId"] == version
    for path in (
        f"Observation?patient={a.patient_id}",
        f"Patient/{a.patient_id}/Condition",
        f"Coverage?beneficiary=Patient/{a.patient_id}",
        f"Patient?_id={a.patient_id}",
    ):
        response = gateway.get(f"/{path}", token)
        assert entry_refs(assert_ok(response)), path
        assert_no_foreign_data(gateway, "A", response)


def test_instance_history_of_own_record(gateway: E2EStack) -> None:
    token = gateway.token("alice", SCOPE)
    a = gateway.data.patients["A"]
    body = assert_ok(gateway.get(f"/Observation/{a.ids('Observation')[1]}/_history", token))
    assert body["type"] == "history"


@_gateway_params()
def test_everything_of_the_context_patient(request: pytest.FixtureRequest, gateway_name: str) -> None:
    gateway = _stack(request, gateway_name)
    token = gateway.token("alice", SCOPE)
    a = gateway.data.patients["A"]
    response = gateway.get(f"/Patient/{a.patient_id}/$everything", token)
    refs = entry_refs(assert_ok(response))
    assert a.compartment_refs() <= refs and gateway.data.cross_reference in refs
    assert_no_foreign_data(gateway, "A", response)


@_gateway_params()
def test_a_batch_of_own_reads_and_searches(request: pytest.FixtureRequest, gateway_name: str) -> None:
    gateway = _stack(request, gateway_name)
    token = gateway.token("alice", SCOPE)
    a = gateway.data.patients["A"]
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": f"Patient/{a.patient_id}"}},
            {"request": {"method": "GET", "url": f"Observation?patient={a.patient_id}&_count=2"}},
            {"request": {"method": "GET", "url": f"Condition/{a.ids('Condition')[0]}"}},
        ],
    }
    response = gateway.request("POST", "", token, content=json.dumps(bundle), headers=FHIR_JSON)
    body = assert_ok(response)
    assert [e["response"]["status"][:3] for e in body["entry"]] == ["200"] * 3
    assert_no_foreign_data(gateway, "A", response)


def test_a_transaction_creating_own_record(gateway: E2EStack) -> None:
    token = gateway.token("alice", SCOPE)
    a = gateway.data.patients["A"]
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": _observation(a.reference), "request": {"method": "POST", "url": "Observation"}}],
    }
    body = assert_ok(gateway.request("POST", "", token, content=json.dumps(bundle), headers=FHIR_JSON))
    assert body["entry"][0]["response"]["status"].startswith("201")


def test_create_read_update_patch_delete_own_record(gateway: E2EStack) -> None:
    token = gateway.token("alice", SCOPE)
    a = gateway.data.patients["A"]
    created = assert_ok(
        gateway.request(
            "POST", "/Observation", token, content=json.dumps(_observation(a.reference)), headers=FHIR_JSON
        ),
        201,
    )
    ref = f"Observation/{created['id']}"
    assert assert_ok(gateway.get(f"/{ref}", token))["status"] == "preliminary"
    updated = {**_observation(a.reference), "id": created["id"], "status": "final"}
    assert (
        assert_ok(gateway.request("PUT", f"/{ref}", token, content=json.dumps(updated), headers=FHIR_JSON))["status"]
        == "final"
    )
    patch = [{"op": "replace", "path": "/valueQuantity/value", "value": 66}]
    patched = assert_ok(
        gateway.request(
            "PATCH",
            f"/{ref}",
            token,
            content=json.dumps(patch),
            headers={"content-type": "application/json-patch+json"},
        )
    )
    assert patched["valueQuantity"]["value"] == 66
    assert gateway.request("DELETE", f"/{ref}", token).status_code in (200, 204)
    assert gateway.fhir.resource(ref) is None


def test_fhirpath_patch_replace_in_own_record(gateway: E2EStack) -> None:
    token = gateway.token("alice", SCOPE)
    a = gateway.data.patients["A"]
    ref = f"Condition/{a.ids('Condition')[-1]}"
    patch = {
        "resourceType": "Parameters",
        "parameter": [
            {
                "name": "operation",
                "part": [
                    {"name": "type", "valueCode": "replace"},
                    {"name": "path", "valueString": "Condition.verificationStatus"},
                    {"name": "value", "valueCodeableConcept": {"text": "provisional"}},
                ],
            }
        ],
    }
    body = assert_ok(gateway.request("PATCH", f"/{ref}", token, content=json.dumps(patch), headers=FHIR_JSON))
    assert body["verificationStatus"] == {"text": "provisional"}


def test_fhirpath_patch_adding_a_top_level_element_to_own_record(gateway: E2EStack) -> None:
    """FHIRPath Patch adds a top-level element with path = the resource type and name = the element."""
    token = gateway.token("alice", SCOPE)
    a = gateway.data.patients["A"]
    ref = f"Condition/{a.ids('Condition')[0]}"
    patch = {
        "resourceType": "Parameters",
        "parameter": [
            {
                "name": "operation",
                "part": [
                    {"name": "type", "valueCode": "add"},
                    {"name": "path", "valueString": "Condition"},
                    {"name": "name", "valueString": "note"},
                    {"name": "value", "valueAnnotation": {"text": "e2e"}},
                ],
            }
        ],
    }
    body = assert_ok(gateway.request("PATCH", f"/{ref}", token, content=json.dumps(patch), headers=FHIR_JSON))
    assert body["note"][-1]["text"] == "e2e"


def test_upsert_of_a_new_own_record(gateway: E2EStack) -> None:
    token = gateway.token("alice", SCOPE)
    a = gateway.data.patients["A"]
    new_id = f"e2e-upsert-{uuid.uuid4().hex[:12]}"
    body = {**_observation(a.reference), "id": new_id}
    response = gateway.request("PUT", f"/Observation/{new_id}", token, content=json.dumps(body), headers=FHIR_JSON)
    assert response.status_code in (200, 201), response.text
    assert gateway.fhir.resource(f"Observation/{new_id}") is not None


def test_create_own_record_with_a_list_valued_compartment_element(gateway: E2EStack) -> None:
    """Observation.performer and Coverage.payor are lists of References."""
    token = gateway.token("alice", SCOPE)
    a = gateway.data.patients["A"]
    observation = _observation(a.reference, performer=[{"reference": a.reference}])
    assert_ok(gateway.request("POST", "/Observation", token, content=json.dumps(observation), headers=FHIR_JSON), 201)
    payer = next(ref for ref in gateway.data.shared if ref.startswith("Organization/"))
    coverage = {
        "resourceType": "Coverage",
        "status": "draft",
        "beneficiary": {"reference": a.reference},
        "payor": [{"reference": payer}],
    }
    assert_ok(gateway.request("POST", "/Coverage", token, content=json.dumps(coverage), headers=FHIR_JSON), 201)
