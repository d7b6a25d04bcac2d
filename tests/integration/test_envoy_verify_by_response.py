"""Issue 16 item 1 through the real Envoy: with response verification enforcing, a patient/ read of a
compartment type reaches the FHIR server once, with no look-up before it, and the ext_proc stage proves
it from the response; writes still look up first. The recording FHIR server holds the demo seed data."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.support.fhir_upstream import RecordingUpstream
from tests.support.stack import GatedFhir, gated_fhir

pytestmark = pytest.mark.integration
WRITER = "launch/patient patient/*.cruds"


@dataclass
class Verifying:
    gate: GatedFhir
    upstream: RecordingUpstream

    def seed(self, resource: dict[str, Any]) -> None:
        """Store a resource straight in the FHIR server, behind smartgate's back: an id never looked up."""
        path = f"{self.upstream.url}/{resource['resourceType']}/{resource['id']}"
        assert httpx.put(path, json=resource).status_code in (200, 201)

    def looked_up(self, resource_id: str) -> bool:
        return any(f"_id={resource_id}" in entry.path for entry in self.upstream.requests())

    def decisions(self, request_id: str, count: int = 2) -> list[dict[str, Any]]:
        """The decision log's entries for ``request_id``, once ``count`` are there (a writer drains the log)."""
        deadline = time.monotonic() + 5
        while True:
            entries = [e for e in self.gate.smartgate.decisions() if e.get("request_id") == request_id]
            if len(entries) >= count or time.monotonic() > deadline:
                return entries
            time.sleep(0.02)

    def reason_counted(self, reason: str) -> float:
        return self.gate.smartgate.metrics().total("smartgate_decisions_total", reason=reason)


@pytest.fixture(scope="module")
def verifying(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Verifying]:
    upstream = RecordingUpstream(answers="demo")
    try:
        with gated_fhir(
            tmp_path_factory.mktemp("verify-by-response"),
            upstream_url=upstream.url,
            envoy={"response_verification": "enforce"},
            response_verification={"mode": "enforce"},
        ) as gate:
            yield Verifying(gate, upstream)
    finally:
        upstream.server.shutdown()
        upstream.server.server_close()


def observation(resource_id: str, patient: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": resource_id,
        "status": "final",
        "code": {"text": "glucose"},
        "subject": {"reference": f"Patient/{patient}"},
    }


def reason_of(response: httpx.Response) -> str:
    code: str = response.json()["issue"][0]["details"]["coding"][0]["code"]
    return code


def test_a_read_of_the_patients_own_resource_is_served_without_a_look_up(verifying: Verifying) -> None:
    verifying.seed(observation("own-new-1", "123"))
    response = verifying.gate.get(
        "/Observation/own-new-1", verifying.gate.token(), headers={"x-request-id": "verified-own-1"}
    )
    assert response.status_code == 200 and response.json()["id"] == "own-new-1"
    assert not verifying.looked_up("own-new-1")  # one FHIR round trip: the read itself


def test_the_decision_log_says_the_read_was_proven_by_its_response(verifying: Verifying) -> None:
    verifying.seed(observation("own-new-2", "123"))
    assert (
        verifying.gate.get(
            "/Observation/own-new-2", verifying.gate.token(), headers={"x-request-id": "verified-own-2"}
        ).status_code
        == 200
    )
    entries = verifying.decisions("verified-own-2")
    assert any(entry.get("reason") == "allowed_verified_by_response" for entry in entries)
    assert any(entry.get("stage") == "response" and entry["reason"] == "response_clean" for entry in entries)


def test_the_metrics_count_each_proof_under_its_own_reason(verifying: Verifying) -> None:
    verified_before = verifying.reason_counted("allowed_verified_by_response")
    looked_up_before = verifying.reason_counted("allowed_compartment_member")
    verifying.seed(observation("own-new-3", "123"))
    token = verifying.gate.token()
    assert verifying.gate.get("/Observation/own-new-3", token).status_code == 200
    assert verifying.gate.get("/Observation/own-new-3?_elements=status", token).status_code == 200  # looked up
    assert verifying.reason_counted("allowed_verified_by_response") == verified_before + 1
    assert verifying.reason_counted("allowed_compartment_member") == looked_up_before + 1
    assert verifying.looked_up("own-new-3")


def test_a_read_of_another_patients_resource_is_refused_by_its_response(verifying: Verifying) -> None:
    response = verifying.gate.get("/Observation/obs-456-a", verifying.gate.token())
    assert response.status_code == 403 and reason_of(response) == "response_foreign_resource"
    assert "Brown" not in response.text and "Patient/456" not in response.text
    assert not verifying.looked_up("obs-456-a")


def test_a_history_of_another_patients_resource_is_refused(verifying: Verifying) -> None:
    response = verifying.gate.get("/Observation/obs-456-a/_history", verifying.gate.token())
    assert response.status_code == 403 and reason_of(response) == "response_foreign_resource"
    assert "obs-456-a" not in response.text


def test_a_granular_constraint_is_still_enforced_on_the_response(verifying: Verifying) -> None:
    token = verifying.gate.token("launch/patient patient/Observation.r?category=laboratory")
    assert verifying.gate.get("/Observation/obs-123-a", token).status_code == 200  # a laboratory result
    response = verifying.gate.get("/Observation/obs-123-b", token)  # vital signs
    assert response.status_code == 403 and reason_of(response) == "response_foreign_resource"
    assert not verifying.looked_up("obs-123-b")


def test_a_missing_id_answers_exactly_as_another_patients(verifying: Verifying) -> None:
    token = verifying.gate.token()
    missing = verifying.gate.get("/Observation/no-such-id", token)
    foreign = verifying.gate.get("/Observation/obs-456-a", token)
    assert missing.status_code == foreign.status_code == 403
    assert missing.json() == foreign.json()


def test_a_conditional_read_gets_the_resource_for_the_response_stage_to_check(verifying: Verifying) -> None:
    verifying.seed(observation("own-new-4", "123"))
    response = verifying.gate.get(
        "/Observation/own-new-4",
        verifying.gate.token(),
        headers={"if-none-match": 'W/"1"', "x-request-id": "verified-conditional"},
    )
    assert response.status_code == 200
    [received] = verifying.upstream.forwarded("verified-conditional")
    assert "if-none-match" not in received.headers


def test_a_write_still_looks_up_first(verifying: Verifying) -> None:
    verifying.seed(observation("own-write-1", "123"))
    body = json.dumps(observation("own-write-1", "123")).encode()
    response = verifying.gate.client.put(
        f"{verifying.gate.base_url}/Observation/own-write-1",
        content=body,
        headers={"authorization": f"Bearer {verifying.gate.token(WRITER)}", "content-type": "application/fhir+json"},
    )
    assert response.status_code in (200, 201)
    assert verifying.looked_up("own-write-1")
