"""Response verification against the real FHIR server: a search the request-side rules allow,
answered by a server that (on purpose) adds another patient's record, is blocked in enforce mode
and reported in report mode; the same search without the quirk passes untouched."""

from __future__ import annotations

import pytest

from .checks import assert_ok
from .conftest import E2EStack

pytestmark = pytest.mark.e2e
SCOPE = "launch/patient patient/*.rs"


def _foreign_observation(stack: E2EStack) -> str:
    b = stack.data.patients["B"]
    return f"Observation/{b.ids('Observation')[0]}"


def _leaky_search(stack: E2EStack) -> tuple[str, dict[str, str]]:
    a = stack.data.patients["A"].patient_id
    return f"/Observation?patient={a}&_count=5", {"x-e2e-misbehave": _foreign_observation(stack)}


def test_without_verification_the_misbehaving_server_leaks(e2e: E2EStack) -> None:
    path, headers = _leaky_search(e2e)
    response = e2e.get(path, e2e.token("alice", SCOPE), headers=headers)
    assert response.status_code == 200
    assert _foreign_observation(e2e).split("/")[1] in response.text


def test_enforce_mode_withholds_the_whole_response(e2e_verified: E2EStack) -> None:
    path, headers = _leaky_search(e2e_verified)
    response = e2e_verified.get(path, e2e_verified.token("alice", SCOPE), headers=headers)
    assert response.status_code == 403
    assert _foreign_observation(e2e_verified).split("/")[1] not in response.text
    assert e2e_verified.data.patients["B"].family not in response.text
    assert response.json()["issue"][0]["details"]["coding"][0]["code"] == "response_foreign_resource"


def test_enforce_mode_passes_the_ordinary_response_untouched(e2e: E2EStack, e2e_verified: E2EStack) -> None:
    path, _ = _leaky_search(e2e_verified)
    plain = assert_ok(e2e.get(path, e2e.token("alice", SCOPE)))
    verified = assert_ok(e2e_verified.get(path, e2e_verified.token("alice", SCOPE)))
    assert [entry["resource"] for entry in verified["entry"]] == [entry["resource"] for entry in plain["entry"]]


def test_report_mode_passes_the_response_and_reports_it(e2e_reporting: E2EStack) -> None:
    path, headers = _leaky_search(e2e_reporting)
    response = e2e_reporting.get(path, e2e_reporting.token("alice", SCOPE), headers=headers)
    assert response.status_code == 200
    reports = e2e_reporting.response_checks()
    assert any(
        entry["outcome"] == "reported"
        and entry["reason"] == "response_foreign_resource"
        and "Observation" in entry["findings"][0]
        for entry in reports
    )
