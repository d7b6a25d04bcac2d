"""The leak test: with tokens for patient A (from the real IdP: JWT RS256, JWT ES256, opaque),
try every door (tests/e2e/doors.py) against patient B's data, and C's, through the real Envoy
and smartgate in front of the real FHIR server; then assert that

- no byte of another patient's records came back (their resource ids, names, identifiers and
  member ids are searched for in every response, headers included);
- nothing of theirs was created, changed or deleted (their compartments, read straight from the
  FHIR server before and after, are identical, version ids included);
- every door that is not bound to A was refused before the FHIR server (each request carries an
  ``x-e2e-probe`` id and the FHIR server lists the ids it saw), apart from the searches smartgate
  narrows to A and, through the enforcing gateway, the includes whose responses it verifies
  (``doors.MAY_PASS``, ``doors.MAY_PASS_WHEN_ENFORCING``).

B's Patient links to A (``seed.LINKED``): the linked-patient doors (``doors._linked_patient_doors``)
try every way the official compartment definition's ``link`` rule would open to B's Patient.

Figures (tried / denied / passed through / leaked) are printed and written to
tests/e2e/leak-report.json (gitignored).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from . import seed
from .conftest import LOOKUP_CACHE_SECONDS, E2EStack
from .doors import Door, doors_into

REPORT = Path(__file__).resolve().parent / "leak-report.json"
SMARTGATE_REASONS = "https://smartgate.dev/reason"
TOKENS = (
    ("jwt-rs256 patient/*.cruds", "smart-rs256", "launch/patient patient/*.cruds"),
    ("jwt-es256 patient/*.* (v1)", "smart-es256", "launch/patient patient/*.*"),
    ("opaque patient/*.cruds", "smart-opaque", "launch/patient patient/*.cruds"),
)


@dataclass
class Attempt:
    probe: str
    gateway: str
    token: str
    target: str
    category: str
    name: str
    method: str
    path: str
    must_deny: bool
    status: int
    reason: str | None  # smartgate's reason code, from its decision log (None: smartgate never saw it)
    body_reason: str | None  # the reason code in the OperationOutcome of a denial
    reached_fhir_server: bool
    leaked: list[str]


@dataclass
class LeakRun:
    gateway: str
    attempts: list[Attempt]
    before: dict[str, dict[str, str]]
    after: dict[str, dict[str, str]]
    seconds: float


def _smartgate_reason(response: httpx.Response) -> str | None:
    try:
        body = response.json()
        coding = body["issue"][0]["details"]["coding"][0]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return str(coding["code"]) if coding.get("system") == SMARTGATE_REASONS else None


def _send(e2e: E2EStack, door: Door, token: str, probe: str) -> httpx.Response:
    headers = {**door.headers, "authorization": f"Bearer {token}", "x-e2e-probe": probe, "x-request-id": probe}
    return e2e.client.request(door.method, e2e.base_url + door.path, headers=headers, content=door.body)


def _versions(e2e: E2EStack, patient: seed.PatientData) -> dict[str, str]:
    versions = {}
    for ref in patient.resources:
        resource = e2e.fhir.resource(ref)
        assert resource is not None, ref
        versions[ref] = resource["meta"]["versionId"]
    return versions


_REPORTS: dict[str, Any] = {}


@pytest.fixture(scope="module", params=["default", "verified"])
def leak_run(request: pytest.FixtureRequest) -> LeakRun:
    """All doors, through one gateway: as shipped, then with response verification enforcing."""
    gateway: str = request.param
    e2e: E2EStack = request.getfixturevalue("e2e" if gateway == "default" else "e2e_verified")
    started = time.monotonic()
    a = e2e.data.patients["A"]
    others = [p for key, p in e2e.data.patients.items() if key != "A"]
    markers = {marker: p.key for p in others for marker in p.markers()}
    before = {p.key: seed.snapshot(e2e.fhir, p) for p in others}
    pending: list[tuple[Attempt, httpx.Response]] = []
    for label, client_id, scope in TOKENS:
        token = e2e.token("alice", scope, client_id)
        targets = others if client_id == "smart-rs256" else others[:1]
        for other in targets:
            doors = doors_into(other, a, e2e.data, e2e.public_url, e2e.fhir.base_url, _versions(e2e, other))
            for door in doors:
                probe = f"leak-{gateway}-{len(pending)}"
                response = _send(e2e, door, token, probe)
                blob = response.text + json.dumps(dict(response.headers))
                leaked = sorted(f"{markers[m]}:{m}" for m in markers if m in blob)
                must_deny = door.must_deny and not (gateway == "verified" and door.enforcing_may_pass)
                attempt = Attempt(
                    probe,
                    gateway,
                    label,
                    other.key,
                    door.category,
                    door.name,
                    door.method,
                    door.path[:160],
                    must_deny,
                    response.status_code,
                    None,
                    _smartgate_reason(response),
                    False,
                    leaked,
                )
                pending.append((attempt, response))
    seen = e2e.fhir.probes_seen()
    decisions = {d["request_id"]: d for d in e2e.decisions() if d.get("request_id", "").startswith("leak-")}
    attempts = []
    for attempt, _response in pending:
        attempt.reached_fhir_server = attempt.probe in seen
        decision = decisions.get(attempt.probe)
        attempt.reason = decision["reason"] if decision else None
        attempts.append(attempt)
    after = {p.key: seed.snapshot(e2e.fhir, p) for p in others}
    run = LeakRun(gateway, attempts, before, after, time.monotonic() - started)
    _report(run)
    return run


def _report(run: LeakRun) -> None:
    attempts = run.attempts
    denied = [x for x in attempts if not x.reached_fhir_server]
    passed = [x for x in attempts if x.reached_fhir_server]
    leaked = [x for x in attempts if x.leaked]
    changed = {key: sorted(set(run.before[key].items()) ^ set(run.after[key].items())) for key in run.before}
    refused_late = _refused_by_the_response_stage
    summary: dict[str, Any] = {
        "tried": len(attempts),
        "denied": len(denied),
        "passed_through": len(passed),
        "passed_through_unexpectedly": len([x for x in passed if x.must_deny and not refused_late(x)]),
        "refused_by_the_response_stage": len([x for x in passed if x.must_deny and refused_late(x)]),
        "leaked": len(leaked),
        "records_changed": {key: len(diff) for key, diff in changed.items()},
        "seconds": round(run.seconds, 2),
        "by_token": dict(Counter(x.token for x in attempts)),
        "by_category": {
            category: {
                "tried": sum(1 for x in attempts if x.category == category),
                "denied": sum(1 for x in denied if x.category == category),
                "leaked": sum(1 for x in leaked if x.category == category),
            }
            for category in sorted({x.category for x in attempts})
        },
        "deny_reasons": dict(Counter(x.reason or f"http {x.status} from Envoy" for x in denied).most_common()),
    }
    _REPORTS[run.gateway] = {"summary": summary, "changed": changed, "attempts": [asdict(x) for x in attempts]}
    totals = {
        key: sum(r["summary"][key] for r in _REPORTS.values())
        for key in (
            "tried",
            "denied",
            "passed_through",
            "passed_through_unexpectedly",
            "refused_by_the_response_stage",
            "leaked",
        )
    }
    REPORT.write_text(json.dumps({"totals": totals, "gateways": _REPORTS}, indent=1), encoding="utf-8")
    lines = [
        f"\n[leak] gateway {run.gateway!r}: tried {summary['tried']}, denied {summary['denied']}, passed through "
        f"{summary['passed_through']} ({summary['passed_through_unexpectedly']} unexpectedly, "
        f"{summary['refused_by_the_response_stage']} refused by the response stage), "
        f"leaked {summary['leaked']}, records changed {summary['records_changed']} "
        f"in {summary['seconds']}s -> {REPORT.name}"
    ]
    for category, figures in summary["by_category"].items():
        lines.append(
            f"[leak]   {category:18} tried {figures['tried']:4}  denied {figures['denied']:4}  "
            f"leaked {figures['leaked']}"
        )
    print("\n".join(lines))


def _describe(attempts: list[Attempt]) -> str:
    return "\n".join(
        f"  [{x.gateway}] {x.token} -> {x.target}: [{x.category}] {x.name}: {x.method} {x.path} "
        f"-> {x.status} {x.reason or ''} {x.leaked or ''}"
        for x in attempts
    )


def test_no_byte_of_another_patients_records_comes_back(leak_run: LeakRun) -> None:
    leaked = [x for x in leak_run.attempts if x.leaked]
    assert not leaked, "responses carried another patient's data:\n" + _describe(leaked)


def test_nothing_of_another_patient_is_created_changed_or_deleted(leak_run: LeakRun) -> None:
    for key, before in leak_run.before.items():
        after = leak_run.after[key]
        assert after == before, (
            f"patient {key}'s compartment changed: added {sorted(set(after) - set(before))}, "
            f"removed {sorted(set(before) - set(after))}, "
            f"modified {sorted(k for k in before.keys() & after.keys() if before[k] != after[k])}"
        )


def _refused_by_the_response_stage(attempt: Attempt) -> bool:
    """With response verification enforcing, a read is proven by its response instead of a look-up: it
    reaches the FHIR server, and the response stage refuses what is not the context patient's."""
    return (
        attempt.gateway == "verified"
        and attempt.reason == "allowed_verified_by_response"
        and attempt.status == 403
        and (attempt.body_reason == "response_foreign_resource" or attempt.method == "HEAD")
    )  # HEAD: no body


def test_every_door_not_bound_to_the_context_patient_is_refused_before_the_fhir_server(leak_run: LeakRun) -> None:
    through = [
        x for x in leak_run.attempts if x.must_deny and x.reached_fhir_server and not _refused_by_the_response_stage(x)
    ]
    assert not through, "requests that reached the FHIR server:\n" + _describe(through)


def test_reads_proven_by_their_response_are_refused_by_the_response_stage(leak_run: LeakRun) -> None:
    proven_later = [x for x in leak_run.attempts if x.must_deny and x.reason == "allowed_verified_by_response"]
    if leak_run.gateway == "verified":
        assert proven_later, "no read was proven by its response: the enforcing gateway did not skip a look-up"
    assert all(_refused_by_the_response_stage(x) for x in proven_later), _describe(
        [x for x in proven_later if not _refused_by_the_response_stage(x)]
    )


def test_refusals_are_smartgate_denials_or_envoy_rejections(leak_run: LeakRun) -> None:
    denied = [x for x in leak_run.attempts if not x.reached_fhir_server]
    assert all(x.status >= 400 for x in denied), _describe([x for x in denied if x.status < 400])
    by_smartgate = [x for x in denied if x.reason is not None]
    # What smartgate denied carries its reason in the OperationOutcome (HEAD responses have no body).
    mismatched = [x for x in by_smartgate if x.method != "HEAD" and x.body_reason != x.reason]
    assert not mismatched, "OperationOutcome and decision log disagree:\n" + _describe(mismatched)
    # What smartgate never saw, Envoy refused by itself: escaped slashes (400), oversized bodies (413).
    by_envoy = [x for x in denied if x.reason is None]
    assert all(x.status in (400, 413) for x in by_envoy), _describe([x for x in by_envoy if x.status not in (400, 413)])


def test_bound_requests_that_pass_return_only_the_context_patients_data(leak_run: LeakRun) -> None:
    passed = [x for x in leak_run.attempts if not x.must_deny]
    assert passed, "the doors bound to the context patient were not tried"
    assert all(x.status < 500 for x in passed), _describe([x for x in passed if x.status >= 500])


# --- versions: a record's history may hold another patient's data ----------------------------
# vread and instance _history follow the read rule, which looks up the *current* version's
# compartment. These tests give a record an old version that belongs to B and a current one that
# belongs to A: smartgate checks every version a vread or history would show.

FHIR_JSON = {"content-type": "application/fhir+json"}


def _put_direct(e2e: E2EStack, resource: dict[str, Any]) -> str:
    response = e2e.fhir.client.put(
        f"/{resource['resourceType']}/{resource['id']}", content=json.dumps(resource), headers=FHIR_JSON
    )
    assert response.status_code in (200, 201), response.text
    return str(response.json()["meta"]["versionId"])


def _assert_history_hides(e2e: E2EStack, token: str, ref: str, old_version: str, secret: str) -> None:
    history = e2e.get(f"/{ref}/_history", token)
    vread = e2e.get(f"/{ref}/_history/{old_version}", token)
    leaks = [
        f"{r.request.method} {r.request.url.path} -> {r.status_code}" for r in (history, vread) if secret in r.text
    ]
    assert not leaks, f"B's old version came back: {leaks}"


VERSION_GATEWAYS = pytest.mark.parametrize("gateway_name", ["default", "verified"])


def _gateway(request: pytest.FixtureRequest, name: str) -> E2EStack:
    stack: E2EStack = request.getfixturevalue("e2e" if name == "default" else "e2e_verified")
    return stack


@VERSION_GATEWAYS
def test_old_versions_of_a_record_moved_from_b_to_a_are_not_readable_by_a(
    request: pytest.FixtureRequest, gateway_name: str
) -> None:
    """A clinician corrects wrong-patient charting: the Observation filed under B is moved to A."""
    e2e = _gateway(request, gateway_name)
    a, b = e2e.data.patients["A"], e2e.data.patients["B"]
    secret = "WRONG-PATIENT-CHARTING-OF-B"
    record = f"e2e-moved-b-to-a-{gateway_name}"
    observation = {
        "resourceType": "Observation",
        "id": record,
        "status": "final",
        "code": {"text": secret},
        "subject": {"reference": b.reference},
    }
    old_version = _put_direct(e2e, observation)
    _put_direct(e2e, {**observation, "code": {"text": "corrected"}, "subject": {"reference": a.reference}})
    token = e2e.token("alice", "launch/patient patient/*.rs")
    assert e2e.get(f"/Observation/{record}", token).status_code == 200  # the current version is A's
    _assert_history_hides(e2e, token, f"Observation/{record}", old_version, secret)


@VERSION_GATEWAYS
def test_a_deleted_record_of_b_cannot_be_reclaimed_to_read_its_history(
    request: pytest.FixtureRequest, gateway_name: str
) -> None:
    """Medplum answers 404 to the _history of a deleted resource, so smartgate's upsert check takes the id
    for one that never existed; the new version is A's, and the old ones (B's) come with its history."""
    e2e = _gateway(request, gateway_name)
    a, b = e2e.data.patients["A"], e2e.data.patients["B"]
    secret = "DELETED-RECORD-OF-B"
    record = f"e2e-deleted-of-b-{gateway_name}"
    observation = {
        "resourceType": "Observation",
        "id": record,
        "status": "final",
        "code": {"text": secret},
        "subject": {"reference": b.reference},
    }
    old_version = _put_direct(e2e, observation)
    assert e2e.fhir.client.delete(f"/Observation/{record}").status_code in (200, 204)
    token = e2e.token("alice", "launch/patient patient/*.cruds")
    mine = {**observation, "code": {"text": "mine now"}, "subject": {"reference": a.reference}}
    e2e.request("PUT", f"/Observation/{record}", token, content=json.dumps(mine), headers=FHIR_JSON)
    time.sleep(LOOKUP_CACHE_SECONDS + 0.2)  # the PUT's look-up answer (not a member) expires
    _assert_history_hides(e2e, token, f"Observation/{record}", old_version, secret)
