"""Response verification against a FHIR server that lies (issue 16, item 0): a proxy between Envoy and
Medplum (``lying_proxy.py``) answers requests smartgate allowed for patient A with another patient's data,
or A's data the token may not read, in 16 ways. Enforce mode withholds every one of them (403
``response_foreign_resource``); report mode lets each through and logs it as reported."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.ports import free_port

from . import us_core
from .conftest import Components, E2EStack, _gateway
from .lying_proxy import LIE_HEADER, READ_LIES, SEARCH_LIES, Victims, lying_proxy

pytestmark = pytest.mark.e2e
SCOPE = "launch/patient patient/*.rs"
LAB = f"{us_core.OBS_CATEGORY}|laboratory"
SCOPES = {
    "ungranted-type": "launch/patient patient/Observation.rs",
    "granular": f"launch/patient patient/Observation.rs?category={LAB}",
}
ALL_LIES = (*SEARCH_LIES, *READ_LIES)


@pytest.fixture(scope="module")
def liar(components: Components) -> Iterator[str]:
    """The lying proxy's FHIR base (in front of the shared Medplum)."""
    b = components.data.patients["B"]

    def victims(upstream_url: str) -> Victims:
        return Victims(
            patient_a=components.data.patients["A"].patient_id,
            patient_b=b.resources[b.reference],
            observation_b=b.resources[f"Observation/{b.ids('Observation')[0]}"],
            upstream_url=upstream_url,
        )

    with lying_proxy(components.fhir.base_url, free_port(), victims) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def lied_to_enforcing(components: Components, liar: str) -> Iterator[E2EStack]:
    with _gateway(components, "lied-to-enforce", free_port(), "enforce", upstream_url=liar) as stack:
        yield stack


@pytest.fixture(scope="module")
def lied_to_reporting(components: Components, liar: str) -> Iterator[E2EStack]:
    with _gateway(components, "lied-to-report", free_port(), "report", upstream_url=liar) as stack:
        yield stack


def _ask(stack: E2EStack, lie: str, request_id: str = "") -> httpx.Response:
    """A request smartgate allows for A (a search of A's Observations, or a read of one), told to lie."""
    a = stack.data.patients["A"]
    if lie in READ_LIES:
        path = f"/Observation/{a.ids('Observation')[0]}"
    elif lie == "granular":
        path = f"/Observation?patient={a.patient_id}&category={LAB}&_count=5"
    else:
        path = f"/Observation?patient={a.patient_id}&_count=5"
    headers = {LIE_HEADER: lie, **({"x-request-id": request_id} if request_id else {})}
    return stack.get(path, stack.token("alice", SCOPES.get(lie, SCOPE)), headers=headers)


def test_the_proxy_passes_honest_requests_through(lied_to_enforcing: E2EStack) -> None:
    a = lied_to_enforcing.data.patients["A"]
    response = lied_to_enforcing.get(
        f"/Observation?patient={a.patient_id}&_count=5", lied_to_enforcing.token("alice", SCOPE)
    )
    assert response.status_code == 200 and response.json()["entry"]


@pytest.mark.parametrize("lie", ALL_LIES)
def test_enforce_mode_withholds_every_lie(lied_to_enforcing: E2EStack, lie: str) -> None:
    response = _ask(lied_to_enforcing, lie)
    assert response.status_code == 403, response.text[:300]
    assert response.json()["issue"][0]["details"]["coding"][0]["code"] == "response_foreign_resource"
    b = lied_to_enforcing.data.patients["B"]
    assert b.family not in response.text and b.ids("Observation")[0] not in response.text


@pytest.mark.parametrize("lie", ALL_LIES)
def test_report_mode_lets_every_lie_through_and_reports_it(lied_to_reporting: E2EStack, lie: str) -> None:
    request_id = f"lie-{lie}-{uuid.uuid4().hex[:8]}"
    response = _ask(lied_to_reporting, lie, request_id)
    assert response.status_code == (404 if lie == "not-found" else 200)
    entry = _response_check(lied_to_reporting, request_id)
    assert (entry["outcome"], entry["reason"]) == ("reported", "response_foreign_resource"), entry


def _response_check(stack: E2EStack, request_id: str, seconds: float = 5.0) -> dict[str, Any]:
    """The response stage's log entry for one request (the log is written off the request path)."""
    deadline = time.monotonic() + seconds
    while True:
        found = [e for e in stack.response_checks() if e["request_id"] == request_id]
        if found or time.monotonic() > deadline:
            assert len(found) == 1, f"{len(found)} response-stage entries for {request_id}"
            return found[0]
        time.sleep(0.05)
