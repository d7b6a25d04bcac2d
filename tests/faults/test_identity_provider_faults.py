"""The identity provider fails: down at start-up, down after a good fetch, rotating its keys, and
a flood of tokens naming random kids. Every request goes through real Envoy to a counting
upstream; the IdP stand-in counts what reaches it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.support.fhir_upstream import RecordingUpstream
from tests.support.idp import IdentityProvider, RotatingKeys
from tests.support.ports import free_port
from tests.support.stack import FaultStack, fault_stack, grpc_health
from tests.support.waits import seconds_until

from .fault_report import report_faults

pytestmark = pytest.mark.faults

AUTHORIZATION = "envoy.service.auth.v3.Authorization"
REFRESH_INTERVAL = 0.5  # jwks.min_refresh_interval_seconds: at most one unknown-kid refresh per interval
FETCH_TIMEOUT = 0.5


@pytest.fixture
def stack(
    tmp_path: Path, keys: RotatingKeys, idp: IdentityProvider, upstream: RecordingUpstream
) -> Iterator[FaultStack]:
    jwks = {"min_refresh_interval_seconds": REFRESH_INTERVAL, "fetch_timeout_seconds": FETCH_TIMEOUT}
    with fault_stack(tmp_path, keys=keys, issuers=[{"issuer": idp.issuer}], upstream=upstream, jwks=jwks) as started:
        yield started


def test_idp_down_at_start_up_denies_everything_and_allows_once_it_returns(
    tmp_path: Path, keys: RotatingKeys, upstream: RecordingUpstream
) -> None:
    idp_port = free_port()  # nothing listens here yet: discovery is refused
    issuer = f"http://127.0.0.1:{idp_port}/idp"
    with fault_stack(tmp_path, keys=keys, issuers=[{"issuer": issuer}], upstream=upstream, wait="alive") as stack:
        good = stack.token()
        other = stack.token(patient="456")
        shapes = [
            ("GET", "/Observation?patient=123", good),
            ("GET", "/Patient/123", good),
            ("GET", "/Observation?patient=456", other),
            ("GET", "/Observation?patient=123", None),
            ("POST", "/Observation/_search", good),
        ]
        answers: list[int] = []
        started = time.monotonic()
        while time.monotonic() - started < 1.5:  # spans the first refused attempt and the 1 s retry
            for index, (method, path, token) in enumerate(shapes):
                response = stack.send(
                    method,
                    path,
                    token,
                    request_id=f"down-{len(answers)}-{index}",
                    headers={"content-type": "application/x-www-form-urlencoded"},
                    content=b"patient=123" if method == "POST" else None,
                )
                answers.append(response.status_code)
            assert httpx.get(stack.smartgate.url("/readyz")).status_code == 503
            assert grpc_health(stack.smartgate.grpc, "") == "NOT_SERVING"
            assert grpc_health(stack.smartgate.grpc, AUTHORIZATION) == "NOT_SERVING"
        assert stack.smartgate.process.poll() is None, "an IdP down at start-up must not crash smartgate"
        reached = stack.upstream.forwarded("down-")
        wrong = sum(1 for status in answers if status < 400) + len(reached)

        idp = IdentityProvider(keys, port=idp_port)
        try:
            took = seconds_until(stack.ready, seconds=8)
            assert took is not None, "smartgate did not become ready after the IdP came back"
            assert grpc_health(stack.smartgate.grpc, AUTHORIZATION) == "SERVING"
            allowed = stack.get("/Observation?patient=123", good, request_id="back-1")
        finally:
            idp.close()
    report_faults(
        "idp_down_at_start_up", injected=1, requests=len(answers) + 1, wrong=wrong, ready_after_idp_up_s=f"{took:.2f}"
    )
    assert set(answers) <= {401, 503}, answers  # 503 jwks_unavailable for tokens, 401 without one
    assert 503 in answers
    assert reached == []
    assert allowed.status_code == 200
    assert [entry.path for entry in stack.upstream.forwarded("back-")] == ["/fhir/Observation?patient=123"]


def test_idp_down_later_keeps_the_cached_keys_and_refuses_a_new_key_until_it_returns(
    stack: FaultStack, keys: RotatingKeys, idp: IdentityProvider
) -> None:
    cached = stack.token()
    assert stack.get("/Observation?patient=123", cached).status_code == 200
    idp.close()  # the IdP goes down after a good fetch
    new_key = keys.add("ec-2")  # ... and signs with a key smartgate has never seen
    rotated = stack.token(kid="ec-2", signing_key=new_key)

    statuses: dict[str, list[int]] = {"cached token": [], "fresh old-key token": [], "new-key token": []}
    started = time.monotonic()
    while time.monotonic() - started < 3 * REFRESH_INTERVAL:  # several refresh attempts fail meanwhile
        statuses["cached token"].append(stack.get("/Observation?patient=123", cached, request_id="old-a").status_code)
        statuses["fresh old-key token"].append(
            stack.get("/Observation?patient=123", stack.token(), request_id="old-b").status_code
        )
        new_answer = stack.get("/Observation?patient=123", rotated, request_id="new-down")
        statuses["new-key token"].append(new_answer.status_code)
        assert "token_unknown_key" in new_answer.text
        time.sleep(0.1)
    still_ready = stack.ready()
    fetch_failures = stack.smartgate.metrics().value(
        "smartgate_jwks_fetches_total", issuer=idp.issuer, result="failure"
    )

    back = IdentityProvider(keys, port=idp.port)  # the IdP returns, now publishing ec-2
    try:
        took = seconds_until(
            lambda: stack.get("/Observation?patient=123", rotated, request_id="new-up").status_code == 200,
            seconds=REFRESH_INTERVAL + FETCH_TIMEOUT + 3,
        )
    finally:
        back.close()
    wrong = (
        sum(1 for s in statuses["new-key token"] if s != 401)
        + len(stack.upstream.forwarded("new-down"))
        + sum(1 for s in statuses["cached token"] + statuses["fresh old-key token"] if s != 200)
    )
    report_faults(
        "idp_down_later",
        injected=1,
        requests=sum(map(len, statuses.values())),
        wrong=wrong,
        failed_refreshes=int(fetch_failures),
        new_key_accepted_after_return_s=f"{took:.2f}" if took is not None else None,
    )
    assert statuses["cached token"] == [200] * len(statuses["cached token"])
    assert statuses["fresh old-key token"] == [200] * len(statuses["fresh old-key token"])
    assert statuses["new-key token"] == [401] * len(statuses["new-key token"])
    assert stack.upstream.forwarded("new-down") == []
    assert fetch_failures >= 2  # it did try, and kept the old set
    assert still_ready  # the cached key set keeps smartgate ready
    assert took is not None, "the new key was not accepted after the IdP came back"
    assert len(stack.upstream.forwarded("new-up")) == 1


def test_a_new_kid_is_accepted_within_one_refresh_interval(
    stack: FaultStack, keys: RotatingKeys, idp: IdentityProvider
) -> None:
    time.sleep(REFRESH_INTERVAL)  # past the allowance the start-up fetch used
    fetches_before = idp.jwks_requests
    assert stack.get("/Observation?patient=123", stack.token(kid="not-published")).status_code == 401
    refreshed_at = time.monotonic()
    assert idp.jwks_requests == fetches_before + 1  # that unknown kid used the refresh allowance just now
    fetches_before = idp.jwks_requests
    new_key = keys.add("ec-2")
    rotated = stack.token(kid="ec-2", signing_key=new_key)
    statuses = [stack.get("/Observation?patient=123", rotated).status_code]
    while statuses[-1] != 200 and time.monotonic() - refreshed_at < 4 * REFRESH_INTERVAL:
        time.sleep(0.05)
        statuses.append(stack.get("/Observation?patient=123", rotated, request_id="rotated").status_code)
    accepted_after = time.monotonic() - refreshed_at
    fetches = idp.jwks_requests - fetches_before
    report_faults(
        "key_rotation",
        injected=1,
        requests=len(statuses) + 1,
        wrong=0,
        accepted_after_s=f"{accepted_after:.2f}",
        jwks_fetches=fetches,
    )
    assert statuses[0] == 401  # within the interval the rate limit holds ...
    assert statuses[-1] == 200  # ... and after it the new kid is fetched and accepted
    assert REFRESH_INTERVAL - 0.1 <= accepted_after <= REFRESH_INTERVAL + 0.5
    assert fetches == 1
    assert len(stack.upstream.forwarded("rotated")) == 1


def test_a_flood_of_random_kids_refreshes_the_keys_at_most_once_per_interval(
    stack: FaultStack, idp: IdentityProvider
) -> None:
    duration = 3.0
    fetches_before = idp.jwks_requests + idp.discovery_requests

    def flood(worker: int) -> list[int]:
        statuses = []
        with httpx.Client(timeout=5) as client:
            end = time.monotonic() + duration
            while time.monotonic() < end:
                token = stack.token(kid=uuid.uuid4().hex)
                response = client.get(
                    stack.base_url + "/Observation?patient=123",
                    headers={"authorization": f"Bearer {token}", "x-request-id": f"flood-{worker}"},
                )
                statuses.append(response.status_code)
        return statuses

    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        results = [status for statuses in pool.map(flood, range(4)) for status in statuses]
    elapsed = time.monotonic() - started
    fetches = idp.jwks_requests + idp.discovery_requests - fetches_before
    limit = elapsed / REFRESH_INTERVAL + 1
    good = stack.get("/Observation?patient=123", stack.token())
    wrong = sum(1 for status in results if status != 401) + len(stack.upstream.forwarded("flood-"))
    report_faults(
        "random_kid_flood",
        injected=len(results),
        requests=len(results),
        wrong=wrong,
        idp_requests=fetches,
        limit=f"{limit:.1f}",
        seconds=f"{elapsed:.2f}",
    )
    assert len(results) >= 50
    assert set(results) == {401}
    assert stack.upstream.forwarded("flood-") == []
    assert 1 <= fetches <= limit
    assert good.status_code == 200
