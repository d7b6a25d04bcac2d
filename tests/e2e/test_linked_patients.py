"""Linked patients: B's Patient has a ``link`` to A (seed.LINKED). The official R4 compartment
definition puts B's Patient in A's compartment through ``link``; smartgate keeps it out by default
(``compartment.follow_patient_links: false``), as HAPI and Blaze do. With A's token, every way to
B's Patient record is denied or returns nothing of B's, through each gateway."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import httpx
import pytest

from .checks import assert_no_foreign_data, assert_ok, assert_only_patients_data, entry_refs
from .conftest import E2EStack

pytestmark = pytest.mark.e2e

SCOPE = "launch/patient patient/*.rs"
FHIR_JSON = {"content-type": "application/fhir+json"}


def _ids(stack: E2EStack) -> tuple[str, str]:
    return stack.data.patients["A"].patient_id, stack.data.patients["B"].patient_id


def test_the_seed_links_b_to_a(e2e: E2EStack) -> None:
    a, b = _ids(e2e)
    stored = e2e.fhir.resource(f"Patient/{b}")
    assert stored is not None and stored["link"][0]["other"]["reference"] == f"Patient/{a}"


def _requests(a: str, b: str, binary_b: str) -> list[tuple[str, str, str, bytes | None]]:
    """(name, method, path, body): every way to B's Patient that the issue lists, and a few more."""
    batch = json.dumps(
        {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [
                {"request": {"method": "GET", "url": f"Patient/{a}"}},
                {"request": {"method": "GET", "url": f"Patient/{b}"}},
            ],
        }
    ).encode()
    batch_search = json.dumps(
        {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [{"request": {"method": "GET", "url": f"Patient?link=Patient/{a}"}}],
        }
    ).encode()
    return [
        ("read", "GET", f"/Patient/{b}", None),
        ("read with trailing slash", "GET", f"/Patient/{b}/", None),
        ("HEAD", "HEAD", f"/Patient/{b}", None),
        ("dot segment", "GET", f"/Observation/../Patient/{b}", None),
        ("vread", "GET", f"/Patient/{b}/_history/1", None),
        ("instance history", "GET", f"/Patient/{b}/_history", None),
        ("batch entry", "POST", "", batch),
        ("batch search by link", "POST", "", batch_search),
        ("revinclude Patient:link", "GET", f"/Patient?_id={a}&_revinclude=Patient:link", None),
        ("compartment search Patient/A/Patient", "GET", f"/Patient/{a}/Patient", None),
        ("search by link", "GET", f"/Patient?link=Patient/{a}", None),
        ("search by link, bare id", "GET", f"/Patient?link={a}", None),
        ("search by _id of B", "GET", f"/Patient?_id={b}", None),
        ("search by _id list", "GET", f"/Patient?_id={a},{b}", None),
        ("POST _search by link", "POST", "/Patient/_search", urlencode({"link": f"Patient/{a}"}).encode()),
        ("Binary with securityContext B", "GET", f"/Binary/{binary_b}", None),
        ("B's Observations", "GET", f"/Observation?patient={b}", None),
    ]


REQUEST_NAMES = [name for name, *_ in _requests("a", "b", "x")]


@pytest.mark.parametrize("index", range(len(REQUEST_NAMES)), ids=REQUEST_NAMES)
def test_linked_patient_is_not_in_the_context_patients_compartment(gateway: E2EStack, index: int) -> None:
    a, b = _ids(gateway)
    binary_b = gateway.data.patients["B"].owner().ref("Binary", "binary").split("/")[1]
    name, method, path, body = _requests(a, b, binary_b)[index]
    headers = FHIR_JSON if path == "" else {"content-type": "application/x-www-form-urlencoded"} if body else {}
    response = gateway.request(method, path, gateway.token("alice", SCOPE), content=body, headers=headers)
    assert response.status_code in (200, 400, 403, 404), f"{name}: {response.status_code} {response.text[:300]}"
    _assert_nothing_of_b(gateway, response, b)


def _assert_nothing_of_b(stack: E2EStack, response: httpx.Response, b: str) -> None:
    assert_only_patients_data(stack, "A", response)
    if response.status_code == 200 and response.content:
        body = response.json()
        nested = [entry.get("resource", {}) for entry in body.get("entry", [])]
        for inner in nested:  # batch responses hold searchsets
            if inner.get("resourceType") == "Bundle":
                assert f"Patient/{b}" not in entry_refs(inner), json.dumps(inner)[:300]
        assert f"Patient/{b}" not in entry_refs(body)


def test_the_context_patients_own_compartment_search_of_patient_returns_only_the_patient(gateway: E2EStack) -> None:
    """What the FHIR server answers to ``Patient/A/Patient`` (B, through link) does not pass: the request
    is refused, or the answer holds only A."""
    a, b = _ids(gateway)
    response = gateway.get(f"/Patient/{a}/Patient", gateway.token("alice", SCOPE))
    if response.status_code == 200:
        assert entry_refs(assert_ok(response)) == {f"Patient/{a}"}
    _assert_nothing_of_b(gateway, response, b)


def test_reading_the_context_patient_still_shows_no_linked_record(gateway: E2EStack) -> None:
    a, _b = _ids(gateway)
    response = gateway.get(f"/Patient/{a}", gateway.token("alice", SCOPE))
    assert assert_ok(response)["id"] == a
    assert_no_foreign_data(gateway, "A", response)
