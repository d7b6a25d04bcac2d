"""smartgate is killed (SIGKILL) under load and started again: while it is down Envoy answers
503 (status_on_error) and nothing reaches the FHIR server unchecked; once it is back it decides
again. The load is only requests smartgate denies (another patient's data, no token), so any of
them reaching the upstream would be a request that passed unchecked."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.fhir_upstream import RecordingUpstream
from tests.support.idp import IdentityProvider, RotatingKeys
from tests.support.stack import FaultStack, fault_stack
from tests.support.waits import seconds_until

from .fault_report import report_faults

pytestmark = pytest.mark.faults

LOAD_THREADS = 3


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[FaultStack]:
    keys = RotatingKeys.generate()
    idp = IdentityProvider(keys)
    upstream = RecordingUpstream()
    try:
        with fault_stack(tmp_path, keys=keys, issuers=[{"issuer": idp.issuer}], upstream=upstream) as started:
            yield started
    finally:
        upstream.close()
        idp.close()


def test_killed_smartgate_lets_nothing_through_and_serves_again_after_restart(
    stack: FaultStack, tmp_path: Path
) -> None:
    other_patient = stack.token(patient="456")  # a valid token that may not read patient 123's data
    phase = ["before"]  # before → down (killed until the new process is ready) → after
    statuses: dict[str, Counter[int]] = {"before": Counter(), "down": Counter(), "after": Counter()}
    stop = threading.Event()

    def load(worker: int) -> None:
        with httpx.Client(timeout=5) as client:
            sent = 0
            while not stop.is_set():
                sent += 1
                token = other_patient if sent % 2 else None
                headers = {"x-request-id": f"load-{worker}-{sent}"}
                if token is not None:
                    headers["authorization"] = f"Bearer {token}"
                current = phase[0]
                status = client.get(stack.base_url + "/Observation?patient=123", headers=headers).status_code
                statuses[current if current == phase[0] else "down"][status] += 1  # a boundary counts as down

    threads = [threading.Thread(target=load, args=(worker,)) for worker in range(LOAD_THREADS)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.7)
        stack.smartgate.signal(signal.SIGKILL)
        phase[0] = "down"
        stack.smartgate.process.wait(timeout=5)
        time.sleep(1.0)
        restarted_at = time.monotonic()
        stack.restart_smartgate(tmp_path / "restarted")
        phase[0] = "after"
        serving = seconds_until(
            lambda: stack.get("/Observation?patient=123", stack.token(), request_id="after-restart").status_code == 200,
            seconds=10,
        )
        time.sleep(0.5)  # the load keeps going against the restarted process
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    restart_seconds = time.monotonic() - restarted_at
    reached = stack.upstream.forwarded("load-")
    every = statuses["before"] + statuses["down"] + statuses["after"]
    wrong = len(reached) + sum(count for status, count in every.items() if status < 400)
    report_faults(
        "smartgate_sigkill_restart",
        injected=1,
        requests=every.total(),
        wrong=wrong,
        **{phase: dict(counts) for phase, counts in statuses.items()},
        restart_s=f"{restart_seconds:.2f}",
    )
    assert reached == []  # nothing passed unchecked, before, during or after the outage
    assert set(every) <= {401, 403, 503}, statuses
    assert set(statuses["before"]) == {401, 403}  # smartgate decided ...
    assert statuses["down"][503] > 0  # ... the outage was answered with status_on_error ...
    assert {401, 403} <= set(statuses["after"])  # ... and the new process decided again
    assert serving is not None, "smartgate did not serve again after the restart"
    assert len(stack.upstream.forwarded("after-restart")) >= 1
    assert restart_seconds < 15
