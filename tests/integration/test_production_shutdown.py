"""Graceful shutdown: SIGTERM while checks wait on a slow compartment look-up. The checks in flight
finish and are allowed, a check that arrives after the signal is refused (Envoy fails closed), and
the process exits within the grace period."""

from __future__ import annotations

import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from .production_helpers import RecordingUpstream, gated_fhir, wait_until

pytestmark = pytest.mark.integration

GRACE_SECONDS = 4.0
LOOKUP_SECONDS = 1.0
IN_FLIGHT = 4


def test_sigterm_finishes_in_flight_checks_and_exits_within_the_grace_period(tmp_path: Path) -> None:
    slow = RecordingUpstream(delay=LOOKUP_SECONDS, slow_marker="_summary=count")
    try:
        with gated_fhir(tmp_path, upstream_url=slow.url, shutdown_grace_seconds=GRACE_SECONDS,
                        envoy={"authz_timeout_seconds": 5.0}) as gated, ThreadPoolExecutor(IN_FLIGHT) as pool:
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
