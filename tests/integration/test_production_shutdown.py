"""Graceful shutdown: SIGTERM while checks wait on a slow compartment look-up. The checks in flight
finish and are allowed, a check that arrives after the signal is refused (Envoy fails closed), and
the process exits within the grace period. A check that outlasts the grace period is cut off:
smartgate still exits on time, and Envoy denies that request (503) rather than forward it."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import stack as support_stack
from tests.support.fhir_upstream import RecordingUpstream
from tests.support.stack import gated_fhir, smartgate_config
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration

GRACE_SECONDS = 4.0
LOOKUP_SECONDS = 1.0
IN_FLIGHT = 4


def test_sigterm_finishes_in_flight_checks_and_exits_within_the_grace_period(tmp_path: Path) -> None:
    slow = RecordingUpstream(delay=LOOKUP_SECONDS, slow_marker="_summary=count")
    try:
        with (
            gated_fhir(
                tmp_path,
                upstream_url=slow.url,
                shutdown_grace_seconds=GRACE_SECONDS,
                envoy={"authz_timeout_seconds": 5.0},
            ) as gated,
            ThreadPoolExecutor(IN_FLIGHT) as pool,
        ):
            token = gated.token()
            process = gated.smartgate.process

            def read(index: int) -> httpx.Response:
                return gated.get(f"/Observation/slow-{index}", token, headers={"x-request-id": f"in-flight-{index}"})

            futures = [pool.submit(read, index) for index in range(IN_FLIGHT)]
            assert wait_until(lambda: len(slow.headers_for("_summary=count")) >= IN_FLIGHT, seconds=3)
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            late = gated.get("/Observation?patient=123", token, headers={"x-request-id": "after-sigterm"})
            answers = [future.result(timeout=10) for future in futures]
            try:
                process.wait(timeout=GRACE_SECONDS + 3)
            except subprocess.TimeoutExpired:
                pytest.fail(f"smartgate still running {GRACE_SECONDS + 3}s after SIGTERM")
            exited = time.monotonic() - signalled

            assert [answer.status_code for answer in answers] == [200] * IN_FLIGHT
            assert all(answer.headers.get("x-demo-received-smart") is None for answer in answers)  # slow upstream
            assert len(slow.headers_for("/fhir/Observation/slow-")) == IN_FLIGHT  # each read was forwarded
            assert late.status_code == 503  # the new check was refused; Envoy failed closed
            assert late.headers.get("x-demo-received-path") is None
            assert process.returncode == 0
            assert LOOKUP_SECONDS / 2 <= exited <= GRACE_SECONDS + 1.5  # waited for the checks, not the grace
            logged = {entry["request_id"]: entry["reason"] for entry in gated.smartgate.decisions()}
            assert logged == {f"in-flight-{index}": "allowed_compartment_member" for index in range(IN_FLIGHT)}
            assert "finishing in-flight checks" in gated.smartgate.output()
            print(f"shutdown: exited {exited:.2f}s after SIGTERM (grace {GRACE_SECONDS}s, look-up {LOOKUP_SECONDS}s)")

            after = gated.get("/Observation?patient=123", token)
            assert after.status_code == 503
    finally:
        slow.close()


# --- a check that outlasts the grace period ---------------------------------------------------------

SHORT_GRACE_SECONDS = 1.0
EXIT_MARGIN_SECONDS = 1.0  # cancelling the cut-off checks, closing clients, interpreter exit
STALLED_LOOKUP_SECONDS = 8.0  # the FHIR stand-in answers look-ups only after this
LOOKUP_TIMEOUT_SECONDS = 15.0  # smartgate would wait this long for the answer if nothing cut it off


@dataclass
class CutOff:
    answer: httpx.Response
    forwarded: list[dict[str, str]]  # the read as the upstream received it (never, if the check was cut off)
    exited_after: float  # seconds from SIGTERM to the process exit
    returncode: int


@pytest.fixture(scope="module")
def cut_off(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CutOff]:
    """One read whose compartment look-up stalls far longer than the grace period, SIGTERM while it waits."""
    stalled = RecordingUpstream(delay=STALLED_LOOKUP_SECONDS, slow_marker="_summary=count")

    def with_long_lookup_timeout(**kwargs: Any) -> dict[str, Any]:
        config = smartgate_config(**kwargs)
        config["fhir"]["lookup"] = {"timeout_seconds": LOOKUP_TIMEOUT_SECONDS}
        return config

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(support_stack, "smartgate_config", with_long_lookup_timeout)
            stack = gated_fhir(
                tmp_path_factory.mktemp("shutdown-grace"),
                upstream_url=stalled.url,
                shutdown_grace_seconds=SHORT_GRACE_SECONDS,
                envoy={"authz_timeout_seconds": 30.0},
            )
            with stack as gated, ThreadPoolExecutor(1) as pool:
                process = gated.smartgate.process
                pending = pool.submit(gated.get, "/Observation/stalled-1", gated.token())
                assert wait_until(lambda: len(stalled.headers_for("_summary=count")) >= 1, seconds=5)
                time.sleep(0.2)  # the check is now waiting on the stalled look-up
                signalled = time.monotonic()
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=STALLED_LOOKUP_SECONDS)
                except subprocess.TimeoutExpired:
                    pytest.fail(f"smartgate still running {STALLED_LOOKUP_SECONDS}s after SIGTERM")
                exited_after = time.monotonic() - signalled
                answer = pending.result(timeout=30)
                print(
                    f"shutdown: exited {exited_after:.2f}s after SIGTERM (grace {SHORT_GRACE_SECONDS}s, "
                    f"look-up stalled {STALLED_LOOKUP_SECONDS}s); client got {answer.status_code}"
                )
                yield CutOff(
                    answer, stalled.headers_for("/fhir/Observation/stalled-1"), exited_after, process.returncode
                )
    finally:
        stalled.close()


def test_smartgate_exits_when_the_grace_period_ends_even_if_a_check_is_still_running(cut_off: CutOff) -> None:
    assert SHORT_GRACE_SECONDS * 0.9 <= cut_off.exited_after <= SHORT_GRACE_SECONDS + EXIT_MARGIN_SECONDS
    assert cut_off.returncode == 0


def test_a_check_cut_off_by_the_grace_period_is_denied_with_503_and_never_forwarded(cut_off: CutOff) -> None:
    assert cut_off.answer.status_code == 503  # Envoy's status_on_error: fail closed
    assert cut_off.forwarded == []  # the upstream never saw the read
    assert "x-demo-received-path" not in cut_off.answer.headers
    assert "Bundle" not in cut_off.answer.text  # none of the upstream's data
