"""Search narrowing through the real Envoy (issue 15): the FHIR server receives the search with the
context patient's binding parameter added by Envoy (ext_authz ``query_parameters_to_set``), and
sends back only that patient's data. The demo server echoes the path it received in
``x-demo-received-path``.

Envoy's ``query_parameters_to_set`` overwrites: it removes every parameter of that name and adds the
one smartgate gives. smartgate narrows only a search that holds no parameter of that name in any
case, so no client-sent ``patient`` is ever there to be replaced or to survive next to it.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from tests.support.stack import Stack

pytestmark = pytest.mark.integration


def received_query(response: httpx.Response) -> list[tuple[str, str]]:
    """The query string the FHIR server received, decoded."""
    return parse_qsl(urlsplit(response.headers["x-demo-received-path"]).query, keep_blank_values=True)


def ids(response: httpx.Response) -> set[str]:
    return {entry["resource"]["id"] for entry in response.json().get("entry", [])}


def subjects(response: httpx.Response) -> set[str]:
    return {entry["resource"]["subject"]["reference"] for entry in response.json().get("entry", [])}


def test_an_unbound_observation_search_reaches_the_server_narrowed_to_the_context_patient(stack: Stack) -> None:
    response = stack.get("/Observation?status=final", stack.token())
    assert response.status_code == 200
    assert sorted(received_query(response)) == [("patient", "123"), ("status", "final")]
    assert {"obs-123-a", "obs-123-b"} <= ids(response)  # the session stack's write tests may add more of 123's
    assert subjects(response) == {"Patient/123"}


@pytest.mark.parametrize("path", ["/Observation", "/Observation?code=1234"])
def test_a_search_naming_no_patient_returns_none_of_another_patients_data(stack: Stack, path: str) -> None:
    """Denied before issue 15 (test_envoy_deny.py listed them); narrowed now."""
    response = stack.get(path, stack.token())
    assert response.status_code == 200
    assert ("patient", "123") in received_query(response)
    assert subjects(response) == {"Patient/123"}


def test_a_patient_search_by_name_is_narrowed_to_the_context_patients_id(stack: Stack) -> None:
    response = stack.get("/Patient?name=Brown", stack.token())
    assert response.status_code == 200
    assert ("_id", "123") in received_query(response)
    assert ids(response) <= {"123"}


def test_a_search_by_id_of_another_patients_resource_comes_back_empty(stack: Stack) -> None:
    own = stack.get("/Coverage?_id=cov-123", stack.token())
    other = stack.get("/Coverage?_id=cov-456", stack.token())
    assert (own.status_code, other.status_code) == (200, 200)
    assert ids(own) == {"cov-123"}
    assert ids(other) == set()


def test_the_other_parameters_reach_the_server_as_the_client_encoded_them(stack: Stack) -> None:
    response = stack.get("/Observation?code=http%3A%2F%2Floinc.org%7C8867-4&_count=5", stack.token())
    assert response.status_code == 200
    received = urlsplit(response.headers["x-demo-received-path"]).query.split("&")
    assert sorted(received) == sorted(["code=http%3A%2F%2Floinc.org%7C8867-4", "_count=5", "patient=123"])


def test_a_search_already_bound_is_forwarded_without_a_second_patient(stack: Stack) -> None:
    response = stack.get("/Observation?patient=123&status=final", stack.token())
    assert response.status_code == 200
    assert [value for name, value in received_query(response) if name.lower() == "patient"] == ["123"]


@pytest.mark.parametrize(
    "path",
    [
        "/Observation?patient=456",
        "/Observation?status=final&Patient=456",
        "/Observation?status=final&Patient=123",
        "/Observation?patient=123&Patient=123",
    ],
)
def test_a_client_sent_patient_is_never_narrowed_around(stack: Stack, path: str) -> None:
    response = stack.get(path, stack.token())
    assert response.status_code == 403
    assert "x-demo-received-path" not in response.headers


def test_a_narrowed_search_is_logged_and_counted_as_allowed_narrowed(stack: Stack) -> None:
    before = stack.metric("smartgate_decisions_total", outcome="allow", status="200", reason="allowed_narrowed")
    assert stack.get("/Observation?status=final", stack.token()).status_code == 200
    entries = [json.loads(line) for line in stack.decision_log().splitlines() if line.strip()]
    narrowed = [entry for entry in entries if entry.get("reason") == "allowed_narrowed"]
    assert narrowed and narrowed[-1]["narrowed_by"] == ["patient"]
    after = stack.metric("smartgate_decisions_total", outcome="allow", status="200", reason="allowed_narrowed")
    assert after == before + 1
