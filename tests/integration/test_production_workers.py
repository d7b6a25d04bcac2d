"""``smartgate serve --workers 2`` behind Envoy with one endpoint per worker: the supervisor's
``/metrics`` adds both workers' numbers up to exactly the traffic sent, and Envoy spreads the
checks over both workers (measured from Envoy's per-endpoint counters and from each worker's
own metric file in the multiprocess directory)."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector

from tests.support.metrics import Metrics, decision_counts
from tests.support.stack import GatedFhir, gated_fhir, grpc_health
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration

ALLOWED, DENIED, CONCURRENCY = 300, 100, 16


@dataclass
class WorkerRun:
    gated: GatedFhir
    metrics: Metrics
    statuses: dict[str, int]  # request id -> status
    metrics_dir: Path
    per_endpoint: dict[str, int]  # Envoy: checks sent to each worker's port
    seconds: float  # to send all requests


@pytest.fixture(scope="module")
def worker_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerRun]:
    workdir = tmp_path_factory.mktemp("workers")
    tmpdir = workdir / "tmp"  # the supervisor makes its PROMETHEUS_MULTIPROC_DIR here
    tmpdir.mkdir()
    with gated_fhir(
        workdir, workers=2, smartgate_args=("--workers", "2"), smartgate_env={"TMPDIR": str(tmpdir)}
    ) as gated:
        token = gated.token()
        plan = [(f"w-{i}-{uuid.uuid4().hex[:8]}", "123" if i % 4 else "456") for i in range(ALLOWED + DENIED)]

        def send(item: tuple[str, str]) -> tuple[str, int]:
            request_id, patient = item
            response = gated.get(f"/Observation?patient={patient}", token, headers={"x-request-id": request_id})
            return request_id, response.status_code

        started = time.monotonic()
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            statuses = dict(pool.map(send, plan))
        seconds = time.monotonic() - started
        directories = list(tmpdir.glob("smartgate-metrics-*"))
        assert len(directories) == 1, directories
        yield WorkerRun(
            gated,
            gated.smartgate.metrics(),
            statuses,
            directories[0],
            gated.envoy.cluster_requests("smartgate"),
            seconds,
        )


def _decisions_by_pid(metrics_dir: Path) -> dict[int, int]:
    """Each worker's own decision count, read from its counter file (counter_<pid>.db)."""
    counts = {}
    for path in metrics_dir.glob("counter_*.db"):
        pid = int(path.stem.split("_")[1])
        # prometheus-client's MultiProcessCollector.merge is unannotated.
        for family in MultiProcessCollector.merge([str(path)]):  # type: ignore[no-untyped-call]
            if family.name == "smartgate_decisions":
                counts[pid] = int(sum(s.value for s in family.samples if s.name == "smartgate_decisions_total"))
    return counts


def test_every_request_got_its_answer(worker_run: WorkerRun) -> None:
    from collections import Counter

    assert Counter(worker_run.statuses.values()) == {200: ALLOWED, 403: DENIED}


def test_supervisor_is_alive_and_ready(worker_run: WorkerRun) -> None:
    assert httpx.get(worker_run.gated.smartgate.url("/healthz")).status_code == 200
    assert httpx.get(worker_run.gated.smartgate.url("/readyz")).status_code == 200


def test_metrics_add_up_across_both_workers(worker_run: WorkerRun) -> None:
    metrics = worker_run.metrics
    assert decision_counts(metrics) == {
        ("allow", "200", "allowed_compartment_search"): ALLOWED,
        ("deny", "403", "compartment_other_patient"): DENIED,
    }
    assert metrics.value("smartgate_decision_duration_seconds_count") == ALLOWED + DENIED
    assert metrics.buckets("smartgate_decision_duration_seconds")[float("inf")] == ALLOWED + DENIED
    # One token: each worker verifies it once, then serves it from its own cache.
    assert metrics.value("smartgate_token_cache_requests_total", result="miss") == 2
    assert metrics.value("smartgate_token_cache_requests_total", result="hit") == ALLOWED + DENIED - 2
    issuer = worker_run.gated.idp.issuer
    assert metrics.series("smartgate_jwks_fetches_total") == {frozenset({("issuer", issuer), ("result", "success")}): 2}
    assert worker_run.gated.idp.jwks_requests == 2
    assert metrics.series("smartgate_ready") == {frozenset(): 1}
    assert list(metrics.series("smartgate_build_info").values()) == [1]


def test_envoy_spreads_checks_over_both_workers(worker_run: WorkerRun) -> None:
    per_endpoint = worker_run.per_endpoint
    grpc_port = int(worker_run.gated.smartgate.grpc.rpartition(":")[2])
    assert set(per_endpoint) == {f"127.0.0.1:{grpc_port}", f"127.0.0.1:{grpc_port + 1}"}
    assert sum(per_endpoint.values()) == ALLOWED + DENIED
    by_pid = _decisions_by_pid(worker_run.metrics_dir)
    assert len(by_pid) == 2 and worker_run.gated.smartgate.process.pid not in by_pid
    assert sorted(by_pid.values()) == sorted(per_endpoint.values())  # both views of the spread agree
    shares = sorted(count / (ALLOWED + DENIED) for count in by_pid.values())
    (worker_run.metrics_dir.parent.parent / "spread.json").write_text(
        json.dumps({"per_endpoint": per_endpoint, "per_pid": by_pid}), encoding="utf-8"
    )
    print(
        f"worker spread: Envoy per endpoint {per_endpoint}; per worker pid {by_pid}; shares {shares}; "
        f"{ALLOWED + DENIED} requests at concurrency {CONCURRENCY} in {worker_run.seconds:.2f}s"
    )
    assert shares[0] >= 0.4, f"uneven spread: {per_endpoint}"


def test_the_shared_decision_log_has_one_whole_line_per_request(worker_run: WorkerRun) -> None:
    entries = worker_run.gated.smartgate.decisions()  # json.loads fails on an interleaved line
    assert sorted(entry["request_id"] for entry in entries) == sorted(worker_run.statuses)
    assert all(entry["status"] == worker_run.statuses[entry["request_id"]] for entry in entries)


def test_each_worker_answers_grpc_health_on_its_own_port(worker_run: WorkerRun) -> None:
    host, _, port = worker_run.gated.smartgate.grpc.rpartition(":")
    for address in (f"{host}:{port}", f"{host}:{int(port) + 1}"):
        assert grpc_health(address, "envoy.service.auth.v3.Authorization") == "SERVING"


def test_the_supervisor_serves_the_smart_configuration_through_envoy(worker_run: WorkerRun) -> None:
    response = worker_run.gated.get("/.well-known/smart-configuration")
    assert response.status_code == 200
    assert response.json()["token_endpoint"] == worker_run.gated.idp.discovery["token_endpoint"]


def _worker_addresses(worker_run: WorkerRun) -> list[str]:
    host, _, port = worker_run.gated.smartgate.grpc.rpartition(":")
    return [f"{host}:{port}", f"{host}:{int(port) + 1}"]


def _pid_listening_on(address: str) -> int:
    """The pid of the process listening on this address (gRPC listens on an IPv4-mapped IPv6 socket)."""
    port = int(address.rpartition(":")[2])
    entries = [
        line.split() for table in ("tcp", "tcp6") for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]
    ]
    inodes = [fields[9] for fields in entries if int(fields[1].rpartition(":")[2], 16) == port and fields[3] == "0A"]
    if not inodes:
        raise LookupError(address)
    inode = inodes[0]
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if any(os.readlink(fd) == f"socket:[{inode}]" for fd in (proc / "fd").iterdir()):
                    return int(proc.name)
            except OSError:
                continue
    raise LookupError(address)


def _kill_worker_zero(worker_run: WorkerRun) -> str:
    address = _worker_addresses(worker_run)[0]
    os.kill(_pid_listening_on(address), signal.SIGKILL)
    return address


def _recovered(worker_run: WorkerRun) -> bool:
    return wait_until(
        lambda: (
            all(grpc_health(a) == "SERVING" for a in _worker_addresses(worker_run))
            and httpx.get(worker_run.gated.smartgate.url("/readyz")).status_code == 200
        ),
        seconds=10,
    )


def test_a_killed_worker_is_restarted_and_its_counts_are_kept(worker_run: WorkerRun) -> None:
    before = worker_run.gated.smartgate.metrics().total("smartgate_decisions_total")
    _kill_worker_zero(worker_run)
    assert _recovered(worker_run), "the supervisor did not bring the worker back"
    token = worker_run.gated.token()
    assert [worker_run.gated.get("/Observation?patient=123", token).status_code for _ in range(4)] == [200] * 4
    after = worker_run.gated.smartgate.metrics()
    assert after.total("smartgate_decisions_total") == before + 4  # the dead worker's counts still add up
    assert "worker 0 exited with -9; restarting" in worker_run.gated.smartgate.output()


def test_readyz_is_not_200_while_a_restarted_worker_cannot_serve(worker_run: WorkerRun) -> None:
    readyz = worker_run.gated.smartgate.url("/readyz")
    address = _kill_worker_zero(worker_run)
    try:
        deadline = time.monotonic() + 10
        premature = []
        while time.monotonic() < deadline:
            ready = httpx.get(readyz).status_code == 200
            serving = grpc_health(address) == "SERVING"
            if ready and not serving:
                premature.append(time.monotonic())
            if serving:
                break
            time.sleep(0.01)
        assert not premature, f"/readyz said 200 {len(premature)} times while {address} could not serve"
    finally:
        assert _recovered(worker_run)


def test_sigterm_to_the_supervisor_stops_every_worker(worker_run: WorkerRun) -> None:
    """Runs last in this module: it stops the stack."""
    pids = list(_decisions_by_pid(worker_run.metrics_dir))
    supervisor = worker_run.gated.smartgate.process
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=15) == 0
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        pytest.fail(f"worker {pid} outlived its supervisor")
    assert not worker_run.metrics_dir.exists()
