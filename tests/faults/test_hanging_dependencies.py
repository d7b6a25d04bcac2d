"""A dependency that accepts the connection and never answers (the IdP's discovery/JWKS, the RFC
7662 introspection endpoint, the FHIR server asked for compartment look-ups): the request waiting
on it is answered 503 within the configured timeouts, is never allowed, never reaches the
upstream, and while it waits smartgate keeps answering other requests promptly."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.fhir_upstream import RecordingUpstream
from tests.support.idp import IdentityProvider, RotatingKeys
from tests.support.stack import FaultStack, fault_stack

from .fault_report import report_faults
from .fault_servers import SilentServer

pytestmark = pytest.mark.faults

SMARTGATE_TIMEOUT = 1.0  # jwks.fetch_timeout_seconds, introspection.timeout_seconds, fhir.lookup.timeout_seconds
ENVOY_TIMEOUT = 2.0  # ext_authz timeout; smartgate answers first with its own reason code
SLACK = 1.5  # a loaded two-core box


@dataclass
class HangOutcome:
    hung: httpx.Response
    hung_seconds: float
    fast_statuses: list[int]
    fast_latencies: list[float]
    fast_before_hung_returned: int
    smartgate_alive: bool

    @property
    def wrong(self) -> int:
        return int(self.hung.status_code < 400) + sum(1 for status in self.fast_statuses if status != 200)


def hang_while_serving(stack: FaultStack, hanging: Callable[[], httpx.Response], fast_token: str) -> HangOutcome:
    """Send ``hanging`` in a thread and, while it waits, searches with a token smartgate has cached."""
    assert stack.get("/Observation?patient=123", fast_token).status_code == 200  # warm the token cache
    answered: list[tuple[httpx.Response, float, float]] = []  # (response, seconds taken, monotonic end)

    def run() -> None:
        started = time.monotonic()
        response = hanging()
        answered.append((response, time.monotonic() - started, time.monotonic()))

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.2)  # the hanging request is now waiting inside smartgate
    statuses: list[int] = []
    latencies: list[float] = []
    finished: list[float] = []
    with httpx.Client(timeout=5) as client:
        while thread.is_alive() and len(statuses) < 200:
            started = time.monotonic()
            response = client.get(
                stack.base_url + "/Observation?patient=123",
                headers={"authorization": f"Bearer {fast_token}", "x-request-id": "fast"},
            )
            statuses.append(response.status_code)
            latencies.append(time.monotonic() - started)
            finished.append(time.monotonic())
            time.sleep(0.02)
    thread.join(timeout=ENVOY_TIMEOUT + 10)
    assert answered, "the hanging request was never answered"
    hung, seconds, ended = answered[0]
    return HangOutcome(
        hung,
        seconds,
        statuses,
        latencies,
        sum(1 for at in finished if at < ended),
        stack.smartgate.process.poll() is None,
    )


def wait_between_start_up_fetches(silent: SilentServer) -> None:
    """Start-up key loading retries the hung issuer at t0, t0+2, t0+5... (1 s timeout, backoff 1, 2, 4 s).
    A request arriving while one of those fetches hangs joins it and returns early; so wait until the
    second fetch has been swallowed and has timed out: the hung request then starts its own fetch and
    waits the whole timeout, well before the third one."""
    deadline = time.monotonic() + 15
    while silent.accepted < 2:
        assert time.monotonic() < deadline, "smartgate never retried the hung issuer"
        time.sleep(0.05)
    time.sleep(SMARTGATE_TIMEOUT + 0.3)


def assert_bounded_503(
    outcome: HangOutcome, reason: str, stack: FaultStack, marker: str, bound: float = SMARTGATE_TIMEOUT
) -> None:
    assert outcome.hung.status_code == 503, outcome.hung.text
    assert reason in outcome.hung.text
    assert outcome.hung_seconds <= bound + SLACK
    assert stack.upstream.forwarded(marker) == []
    assert outcome.fast_before_hung_returned >= 3, outcome  # the event loop kept serving meanwhile
    assert set(outcome.fast_statuses) == {200}
    assert max(outcome.fast_latencies) < 0.5, outcome.fast_latencies
    assert outcome.smartgate_alive


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


def test_a_hanging_idp_is_a_bounded_503_and_other_issuers_keep_being_served(
    tmp_path: Path, keys: RotatingKeys, idp: IdentityProvider, upstream: RecordingUpstream, silent: SilentServer
) -> None:
    hung_issuer = silent.url("/idp")  # discovery is accepted and never answered
    issuers = [{"issuer": idp.issuer}, {"issuer": hung_issuer}]
    with fault_stack(
        tmp_path,
        keys=keys,
        issuers=issuers,
        upstream=upstream,
        wait="alive",
        jwks={"fetch_timeout_seconds": SMARTGATE_TIMEOUT, "min_refresh_interval_seconds": 0.1},
        envoy={"authz_timeout_seconds": ENVOY_TIMEOUT},
    ) as stack:
        hung_token = stack.token(issuer=hung_issuer)
        wait_between_start_up_fetches(silent)
        outcome = hang_while_serving(
            stack, lambda: stack.get("/Observation?patient=123", hung_token, request_id="hung"), stack.token()
        )
        not_ready = not stack.ready()
    report_faults(
        "hanging_idp",
        injected=1,
        requests=1 + len(outcome.fast_statuses),
        wrong=outcome.wrong,
        hung_s=f"{outcome.hung_seconds:.2f}",
        served_meanwhile=outcome.fast_before_hung_returned,
    )
    assert_bounded_503(outcome, "jwks_unavailable", stack, "hung")
    assert silent.accepted >= 1
    assert not_ready  # an issuer without keys keeps smartgate not ready


def test_a_hanging_introspection_endpoint_is_a_bounded_503(
    tmp_path: Path, keys: RotatingKeys, idp: IdentityProvider, upstream: RecordingUpstream, silent: SilentServer
) -> None:
    opaque_issuer = {
        "issuer": "https://opaque.example.org",
        "introspection": {
            "endpoint": silent.url("/introspect"),
            "client_id": "smartgate",
            "client_secret_env": "FAULTS_SECRET",
            "timeout_seconds": SMARTGATE_TIMEOUT,
        },
    }
    with fault_stack(
        tmp_path,
        keys=keys,
        issuers=[{"issuer": idp.issuer}, opaque_issuer],
        upstream=upstream,
        env={"FAULTS_SECRET": secrets.token_hex(8)},
        envoy={"authz_timeout_seconds": ENVOY_TIMEOUT},
    ) as stack:
        opaque = secrets.token_urlsafe(32)
        outcome = hang_while_serving(
            stack, lambda: stack.get("/Observation?patient=123", opaque, request_id="hung"), stack.token()
        )
        again = stack.get("/Observation?patient=123", opaque, request_id="hung-again")  # a failure is not cached
    report_faults(
        "hanging_introspection",
        injected=1,
        requests=2 + len(outcome.fast_statuses),
        wrong=outcome.wrong + int(again.status_code < 400),
        hung_s=f"{outcome.hung_seconds:.2f}",
        served_meanwhile=outcome.fast_before_hung_returned,
    )
    assert_bounded_503(outcome, "introspection_failed", stack, "hung")
    assert again.status_code == 503
    assert silent.accepted >= 2  # asked each time: a failure is never cached as an answer


def test_a_hanging_fhir_lookup_is_a_bounded_503(
    tmp_path: Path, keys: RotatingKeys, idp: IdentityProvider, upstream: RecordingUpstream, silent: SilentServer
) -> None:
    with fault_stack(
        tmp_path,
        keys=keys,
        issuers=[{"issuer": idp.issuer}],
        upstream=upstream,
        lookup_url=silent.url("/fhir"),
        lookup={"timeout_seconds": SMARTGATE_TIMEOUT},
        envoy={"authz_timeout_seconds": ENVOY_TIMEOUT},
    ) as stack:
        token = stack.token()
        outcome = hang_while_serving(stack, lambda: stack.get("/Observation/obs-1", token, request_id="hung"), token)
    report_faults(
        "hanging_fhir_lookup",
        injected=1,
        requests=1 + len(outcome.fast_statuses),
        wrong=outcome.wrong,
        hung_s=f"{outcome.hung_seconds:.2f}",
        served_meanwhile=outcome.fast_before_hung_returned,
    )
    assert_bounded_503(outcome, "lookup_failed", stack, "hung")
    assert silent.accepted >= 1


def test_envoys_timeout_bounds_a_lookup_that_outlasts_it(
    tmp_path: Path, keys: RotatingKeys, idp: IdentityProvider, upstream: RecordingUpstream, silent: SilentServer
) -> None:
    envoy_timeout = 1.0
    with fault_stack(
        tmp_path,
        keys=keys,
        issuers=[{"issuer": idp.issuer}],
        upstream=upstream,
        lookup_url=silent.url("/fhir"),
        lookup={"timeout_seconds": 30},
        envoy={"authz_timeout_seconds": envoy_timeout},
    ) as stack:
        token = stack.token()
        outcome = hang_while_serving(stack, lambda: stack.get("/Observation/obs-1", token, request_id="hung"), token)
    report_faults(
        "fhir_lookup_beyond_envoy_timeout",
        injected=1,
        requests=1 + len(outcome.fast_statuses),
        wrong=outcome.wrong,
        hung_s=f"{outcome.hung_seconds:.2f}",
    )
    assert outcome.hung.status_code == 503  # Envoy's status_on_error: smartgate did not answer in time
    assert envoy_timeout - 0.1 <= outcome.hung_seconds <= envoy_timeout + SLACK
    assert upstream.forwarded("hung") == []
    assert set(outcome.fast_statuses) == {200} and outcome.fast_before_hung_returned >= 3
