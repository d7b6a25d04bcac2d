"""Config reload on SIGHUP, through Envoy: a changed valid config takes effect in the running
process; an invalid one (bad value, bad YAML, or an issuer whose keys cannot be fetched) is
rejected with an error line and the config in force stays in force."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from smartgate.config.model import DEFAULT_PATIENT_CLOSED_TYPES
from tests.support.idp import IdentityProvider, new_keys
from tests.support.ports import free_port
from tests.support.processes import stop
from tests.support.stack import GatedFhir, gated_fhir, launch_smartgate, smartgate_config
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration


@dataclass
class Reloading:
    gated: GatedFhir
    original: dict[str, Any]
    pid: int

    def statuses(self) -> tuple[int, int]:
        """(anonymous GET of an Organization, patient-token read of a Practitioner)."""
        organization = self.gated.get("/Organization/payer-1").status_code
        practitioner = self.gated.get("/Practitioner/prac-1", self.gated.token()).status_code
        return organization, practitioner

    def hang_up(self, marker: str) -> None:
        before = self.gated.smartgate.output().count(marker)
        self.gated.smartgate.signal(signal.SIGHUP)
        assert wait_until(lambda: self.gated.smartgate.output().count(marker) > before, seconds=5), marker


NEW_SETTINGS = {
    "public_routes": [{"path": "/Organization", "methods": ["GET"], "prefix": True}],
    "patient_closed_types": sorted(DEFAULT_PATIENT_CLOSED_TYPES | {"Practitioner"}),
}


@pytest.fixture(scope="module")
def reloading(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reloading]:
    with gated_fhir(tmp_path_factory.mktemp("reload"), shutdown_grace_seconds=1) as gated:
        yield Reloading(gated, gated.smartgate.read_config(), gated.smartgate.process.pid)


def test_a_valid_new_config_takes_effect_without_a_restart(reloading: Reloading) -> None:
    assert reloading.statuses() == (401, 200)  # Organization needs a token; Practitioner is open to patient/*
    reloading.gated.smartgate.write_config({**reloading.original, **NEW_SETTINGS})
    reloading.hang_up("config reloaded")
    assert reloading.statuses() == (200, 403)
    assert reloading.gated.smartgate.process.poll() is None
    assert reloading.gated.smartgate.process.pid == reloading.pid


@pytest.mark.parametrize("name", ["bad value", "bad yaml", "keys unavailable"])
def test_an_invalid_config_is_rejected_and_the_current_one_stays(reloading: Reloading, name: str) -> None:
    assert reloading.statuses() == (200, 403), "runs after the valid reload"
    current = {**reloading.original, **NEW_SETTINGS}
    smartgate = reloading.gated.smartgate
    if name == "bad value":
        smartgate.write_config({**current, "issuers": [{**current["issuers"][0], "algorithms": ["HS256"]}]})
        expected = (
            "ERROR smartgate.server: config reload rejected, keeping the current config: "
            "issuers[0].algorithms[0]: 'HS256' is not an allowed algorithm"
        )
    elif name == "bad yaml":
        smartgate.config_path.write_text("fhir: [unclosed\n", encoding="utf-8")
        expected = "ERROR smartgate.server: config reload rejected, keeping the current config: (file): not valid YAML"
    else:
        down = f"http://127.0.0.1:{free_port()}/idp"  # nothing listens there
        smartgate.write_config({**current, "public_routes": [], "issuers": [*current["issuers"], {"issuer": down}]})
        expected = "ERROR smartgate.server: config reload rejected: the new issuers' keys are unavailable"
    reloading.hang_up(expected)
    assert reloading.statuses() == (200, 403)
    assert smartgate.process.poll() is None and smartgate.process.pid == reloading.pid
    smartgate.write_config(current)


def test_a_hangup_during_start_up_does_not_kill_smartgate(tmp_path: Path) -> None:
    idp = IdentityProvider(new_keys())
    config = smartgate_config(
        grpc_port=free_port(),
        http_port=free_port(),
        base_url="http://127.0.0.1:1/fhir",
        upstream_url="http://127.0.0.1:1/fhir",
        issuers=[{"issuer": idp.issuer}],
        workdir=tmp_path,
    )
    smartgate = launch_smartgate(config, tmp_path, wait="none")
    try:
        time.sleep(0.25)  # past interpreter start-up, still importing (imports alone take about 0.6 s)
        smartgate.signal(signal.SIGHUP)

        def settled() -> bool:
            if smartgate.process.poll() is not None:
                return True
            try:
                return httpx.get(smartgate.url("/readyz"), timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(settled, seconds=10)
        assert smartgate.process.poll() is None, f"smartgate exited with {smartgate.process.returncode}"
    finally:
        stop(smartgate.process)
        idp.close()


# --- several workers: the supervisor passes SIGHUP on, and every worker reloads -----------------------

ROUNDS = 10  # requests of each kind per look: round robin over two endpoints hits each worker several times


@dataclass
class ReloadingWorkers:
    gated: GatedFhir
    original: dict[str, Any]

    def statuses(self) -> tuple[set[int], set[int], dict[str, int]]:
        """Every status seen for anonymous Organization reads and patient-token Practitioner reads, and
        how many of these checks Envoy sent to each worker's endpoint."""
        before = self.gated.envoy.cluster_requests("smartgate")
        token = self.gated.token()
        organization = {self.gated.get("/Organization/payer-1").status_code for _ in range(ROUNDS)}
        practitioner = {self.gated.get("/Practitioner/prac-1", token).status_code for _ in range(ROUNDS)}
        after = self.gated.envoy.cluster_requests("smartgate")
        return organization, practitioner, {endpoint: after[endpoint] - before.get(endpoint, 0) for endpoint in after}

    def hang_up(self, marker: str, workers: int = 2) -> None:
        """SIGHUP to the supervisor; wait until each worker has logged ``marker`` once more."""
        before = self.gated.smartgate.output().count(marker)
        self.gated.smartgate.signal(signal.SIGHUP)
        assert wait_until(lambda: self.gated.smartgate.output().count(marker) >= before + workers, seconds=10), marker
        time.sleep(0.3)  # no further line comes
        assert self.gated.smartgate.output().count(marker) == before + workers, marker


@pytest.fixture(scope="module")
def reloading_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReloadingWorkers]:
    with gated_fhir(
        tmp_path_factory.mktemp("reload-workers"),
        workers=2,
        smartgate_args=("--workers", "2"),
        shutdown_grace_seconds=1,
    ) as gated:
        yield ReloadingWorkers(gated, gated.smartgate.read_config())


def _both_workers_checked(sent: dict[str, int]) -> bool:
    return len(sent) == 2 and all(count >= ROUNDS // 2 for count in sent.values())


def test_sighup_to_the_supervisor_reloads_a_valid_config_in_every_worker(reloading_workers: ReloadingWorkers) -> None:
    smartgate = reloading_workers.gated.smartgate
    smartgate.write_config(reloading_workers.original)
    reloading_workers.hang_up("config reloaded")  # start from the original config in every worker
    organization, practitioner, sent = reloading_workers.statuses()
    assert (organization, practitioner) == ({401}, {200})
    smartgate.write_config({**reloading_workers.original, **NEW_SETTINGS})
    reloading_workers.hang_up("config reloaded")
    organization, practitioner, sent = reloading_workers.statuses()
    assert _both_workers_checked(sent), sent
    assert (organization, practitioner) == ({200}, {403})  # a worker on the old config would answer 401 / 200
    assert smartgate.process.poll() is None


def test_the_supervisor_serves_the_reloaded_smart_configuration(reloading_workers: ReloadingWorkers) -> None:
    smartgate = reloading_workers.gated.smartgate
    current = {**reloading_workers.original, **NEW_SETTINGS}
    capabilities = ["launch-standalone", "client-public", "context-standalone-patient", "permission-v2"]
    smart = {**current.get("smart_configuration", {}), "capabilities": capabilities}
    try:
        smartgate.write_config({**current, "smart_configuration": smart})
        reloading_workers.hang_up("config reloaded")
        document = reloading_workers.gated.get("/.well-known/smart-configuration").json()
        assert document["capabilities"] == capabilities
    finally:
        smartgate.write_config(current)


REJECTED = (
    "ERROR smartgate.supervisor: config reload rejected, keeping the current config: "
    "issuers[0].algorithms[0]: 'HS256' is not an allowed algorithm"
)


def _bad_config(current: dict[str, Any]) -> dict[str, Any]:
    """Invalid (an HMAC algorithm), and it would also change both observable settings if it were taken."""
    return {
        **current,
        "public_routes": [],
        "patient_closed_types": ["Practitioner"],
        "issuers": [{**current["issuers"][0], "algorithms": ["HS256"]}],
    }


def _worker_pids(supervisor_pid: int) -> list[int]:
    return [int(pid) for pid in Path(f"/proc/{supervisor_pid}/task/{supervisor_pid}/children").read_text().split()]


@contextlib.contextmanager
def _after_a_rejected_reload(reloading_workers: ReloadingWorkers) -> Iterator[None]:
    """Every worker on the new settings, then an invalid file put in place and SIGHUP'd (it stays on disk
    until the block ends)."""
    smartgate = reloading_workers.gated.smartgate
    current = {**reloading_workers.original, **NEW_SETTINGS}
    smartgate.write_config(current)
    reloading_workers.hang_up("config reloaded")
    assert reloading_workers.statuses()[:2] == ({200}, {403})
    try:
        smartgate.write_config(_bad_config(current))
        reloading_workers.hang_up(REJECTED, workers=1)  # the supervisor rejects it; no worker is asked to reload
        yield
    finally:
        smartgate.write_config(current)


def test_an_invalid_config_is_rejected_naming_the_key_and_every_worker_keeps_the_old_one(
    reloading_workers: ReloadingWorkers,
) -> None:
    with _after_a_rejected_reload(reloading_workers):
        organization, practitioner, sent = reloading_workers.statuses()
        assert _both_workers_checked(sent), sent
        assert (organization, practitioner) == ({200}, {403})
        assert reloading_workers.gated.smartgate.process.poll() is None


def test_a_worker_restarted_after_a_rejected_reload_runs_the_accepted_config(
    reloading_workers: ReloadingWorkers,
) -> None:
    smartgate = reloading_workers.gated.smartgate
    with _after_a_rejected_reload(reloading_workers):  # the bad file is still on disk when the worker comes back
        victim = _worker_pids(smartgate.process.pid)[0]
        os.kill(victim, signal.SIGKILL)
        readyz = smartgate.url("/readyz")
        assert wait_until(
            lambda: (
                victim not in (pids := _worker_pids(smartgate.process.pid))
                and len(pids) == 2
                and httpx.get(readyz).status_code == 200
            ),
            seconds=20,
        ), "the worker did not come back"
        rounds: list[tuple[set[int], set[int], dict[str, int]]] = []

        def both_workers_answered() -> bool:
            rounds.append(reloading_workers.statuses())
            return _both_workers_checked(rounds[-1][2])

        # Envoy takes the restarted endpoint back after its connect-failure back-off; until then one worker answers.
        assert wait_until(both_workers_answered, seconds=20), rounds[-1][2]
        for organization, practitioner, _ in rounds:
            assert (organization, practitioner) == ({200}, {403})  # the accepted config, not the file on disk
