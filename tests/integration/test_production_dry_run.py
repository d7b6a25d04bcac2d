"""Dry-run mode: every request reaches the FHIR server with no header changed, while the decision
log and the metrics record what enforce mode would have done; reloading into enforce mode then
denies the same request."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.support.metrics import Metrics, decision_counts
from tests.support.stack import GatedFhir, gated_fhir, received_smart_headers
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration

SPOOFED = {"x-smart-patient": "999", "x-smart-scope": "user/*.cruds"}


@dataclass
class DryRun:
    gated: GatedFhir
    token: str
    responses: dict[str, httpx.Response]
    metrics: Metrics


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DryRun]:
    with gated_fhir(tmp_path_factory.mktemp("dry-run"), mode="dry_run") as gated:
        token = gated.token()
        responses = {
            "dry-other": gated.get("/Observation?patient=456", token, headers={**SPOOFED, "x-request-id": "dry-other"}),
            "dry-own": gated.get("/Observation?patient=123", token, headers={"x-request-id": "dry-own"}),
            "dry-anonymous": gated.get("/Observation?patient=123", headers={"x-request-id": "dry-anonymous"}),
        }
        yield DryRun(gated, token, responses, gated.smartgate.metrics())


def test_a_request_enforce_would_deny_reaches_the_upstream_with_headers_unchanged(dry_run: DryRun) -> None:
    response = dry_run.responses["dry-other"]
    assert response.status_code == 200
    assert {entry["resource"]["id"] for entry in response.json()["entry"]} == {"obs-456-a", "obs-456-by-123"}
    assert received_smart_headers(response) == SPOOFED  # neither removed nor overwritten


def test_allowed_and_anonymous_requests_get_no_context_headers(dry_run: DryRun) -> None:
    assert received_smart_headers(dry_run.responses["dry-own"]) == {}
    assert received_smart_headers(dry_run.responses["dry-anonymous"]) == {}
    assert dry_run.responses["dry-anonymous"].status_code == 200


def test_the_decision_log_records_the_would_be_decisions_as_dry_run(dry_run: DryRun) -> None:
    logged = {entry["request_id"]: entry for entry in dry_run.gated.smartgate.decisions()}
    assert {rid: (e["outcome"], e["status"], e["reason"], e.get("dry_run")) for rid, e in logged.items()} == {
        "dry-other": ("deny", 403, "compartment_other_patient", True),
        "dry-own": ("allow", 200, "allowed_compartment_search", True),
        "dry-anonymous": ("deny", 401, "token_missing", True),
    }


def test_metrics_count_the_would_be_decisions(dry_run: DryRun) -> None:
    assert decision_counts(dry_run.metrics) == {
        ("deny", "403", "compartment_other_patient"): 1,
        ("allow", "200", "allowed_compartment_search"): 1,
        ("deny", "401", "token_missing"): 1,
    }


def test_reloading_into_enforce_mode_denies_the_same_request(dry_run: DryRun) -> None:
    smartgate = dry_run.gated.smartgate
    smartgate.write_config({**smartgate.read_config(), "mode": "enforce"})
    smartgate.signal(signal.SIGHUP)
    assert wait_until(lambda: "config reloaded" in smartgate.output(), seconds=5)
    response = dry_run.gated.get(
        "/Observation?patient=456", dry_run.token, headers={**SPOOFED, "x-request-id": "enforced-other"}
    )
    assert response.status_code == 403
    assert "x-demo-received-path" not in response.headers
    entry = [e for e in smartgate.decisions() if e["request_id"] == "enforced-other"]
    assert len(entry) == 1 and "dry_run" not in entry[0] and entry[0]["reason"] == "compartment_other_patient"
