"""Linked patients through the real Envoy (issue 15): Patient/789's record links to Patient/123 in the
demo FHIR server. By default a token for 123 reaches nothing of 789's, at any door; with
``compartment.follow_patient_links: true`` it reads 789's Patient record, and response verification
agrees (the ``following`` gateway also enforces it)."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from tests.support.stack import Stack, start_stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def following(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = {"compartment": {"follow_patient_links": True}, "response_verification": {"mode": "enforce"}}
    with start_stack(tmp_path_factory.mktemp("follow"), config, {"response_verification": "enforce"}) as started:
        yield started


def _reason(response: httpx.Response) -> str:
    return str(response.json()["issue"][0]["details"]["coding"][0]["code"])


def _raw_get(stack: Stack, path: str, token: str) -> tuple[int, bytes]:
    """A GET whose path goes out byte for byte (httpx would remove the dot segments itself)."""
    url = urlsplit(stack.base_url)
    connection = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=10)
    try:
        connection.request("GET", url.path + path, headers={"authorization": f"Bearer {token}"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


# --- by default ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/Patient/789", "/Patient/789/", "/Patient/789/_history/1", "/Patient/789/_history"])
def test_reads_of_a_linked_patient_are_denied(stack: Stack, path: str) -> None:
    response = stack.get(path, stack.token())
    assert response.status_code == 403 and _reason(response) == "compartment_other_patient"
    assert "Chen" not in response.text and "x-demo-received-path" not in response.headers


def test_head_of_a_linked_patient_is_denied(stack: Stack) -> None:
    response = stack.client.head(stack.base_url + "/Patient/789", headers={"authorization": f"Bearer {stack.token()}"})
    assert response.status_code == 403 and "x-demo-received-path" not in response.headers


def test_a_linked_patient_behind_dot_segments_is_denied(stack: Stack) -> None:
    status, body = _raw_get(stack, "/Observation/../Patient/789", stack.token())
    assert status == 403 and b"Chen" not in body


def test_a_batch_entry_reading_a_linked_patient_is_denied(stack: Stack) -> None:
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [{"request": {"method": "GET", "url": "Patient/789"}}]}
    response = stack.post(
        "", stack.token(), content=json.dumps(batch), headers={"content-type": "application/fhir+json"}
    )
    assert response.status_code == 403 and _reason(response) == "bundle_entry_denied"


@pytest.mark.parametrize(
    "path", ["/Patient/123/Patient", "/Patient?link=Patient/123", "/Patient?_id=123&_revinclude=Patient:link"]
)
def test_searches_that_find_linked_patients_are_denied(stack: Stack, path: str) -> None:
    response = stack.get(path, stack.token())
    assert response.status_code == 403 and "Chen" not in response.text


def test_a_binary_whose_security_context_is_a_linked_patient_is_denied(stack: Stack) -> None:
    assert stack.get("/Binary/bin-123", stack.token()).status_code == 200
    response = stack.get("/Binary/bin-789", stack.token())
    assert response.status_code == 403 and _reason(response) == "not_in_compartment"


# --- follow_patient_links: true (with response verification enforcing) -----------------------------------


def test_following_links_the_linked_patient_record_is_readable_and_verified_clean(following: Stack) -> None:
    response = following.get("/Patient/789", following.token())
    assert response.status_code == 200 and response.json()["id"] == "789"


def test_following_links_the_patient_compartment_search_finds_the_linked_record(following: Stack) -> None:
    response = following.get("/Patient/123/Patient", following.token())
    assert response.status_code == 200
    assert {e["resource"]["id"] for e in response.json()["entry"]} == {"789"}


def test_following_links_a_binary_of_the_linked_patient_passes_its_lookup(following: Stack) -> None:
    response = following.get("/Binary/bin-789", following.token())
    decisions = [json.loads(line) for line in following.decision_log().splitlines()]
    request_side = [d for d in decisions if d.get("resource_type") == "Binary" and d.get("stage") != "response"]
    assert request_side[-1]["reason"] == "allowed_compartment_member"
    # Read as FHIR JSON, a Binary must name the context patient itself: the verifier sees no links.
    assert response.status_code == 403 and _reason(response) == "response_foreign_resource"


def test_following_links_never_opens_another_unlinked_patient(following: Stack) -> None:
    response = following.get("/Patient/456", following.token())
    assert response.status_code == 403 and "Brown" not in response.text


def test_following_links_never_opens_the_linked_patients_other_records(following: Stack) -> None:
    response = following.get("/Observation?patient=789", following.token())
    assert response.status_code == 403 and _reason(response) == "compartment_other_patient"
