"""The supervisor's restart schedule (pure, no sleeping) and its tidying of a dead worker's
metric files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.mmap_dict import MmapedDict, mmap_key

from smartgate.runtime import metric_files
from smartgate.runtime.restart_policy import MAX_QUICK_CRASHES, RestartPolicy, WorkerRestarts

# --- the restart schedule ------------------------------------------------------------------------


def _crash_quickly(restarts: WorkerRestarts, times: int, start: float = 0.0) -> list[float | None]:
    """Crash ``times`` times, each one second after the (re)start."""
    delays: list[float | None] = []
    now = start
    for _ in range(times):
        restarts.started(now)
        now += 1.0
        delay = restarts.crashed(now)
        delays.append(delay)
        now += delay or 0.0
    return delays


def test_the_delay_doubles_from_one_second_up_to_the_cap() -> None:
    restarts = WorkerRestarts(RestartPolicy(max_quick_crashes=100))
    assert _crash_quickly(restarts, 8) == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_the_supervisor_gives_up_at_the_nth_quick_crash_in_a_row() -> None:
    delays = _crash_quickly(WorkerRestarts(), MAX_QUICK_CRASHES)
    assert delays[:-1] == [1.0, 2.0, 4.0, 8.0][: MAX_QUICK_CRASHES - 1]
    assert delays[-1] is None


def test_a_worker_that_stayed_up_starts_the_count_again() -> None:
    policy = RestartPolicy(stable_after_seconds=60.0)
    restarts = WorkerRestarts(policy)
    assert _crash_quickly(restarts, 3) == [1.0, 2.0, 4.0]
    restarts.started(1_000.0)
    assert restarts.crashed(1_000.0 + 60.0) == 1.0  # up a whole minute: not part of the loop
    assert restarts.quick_crashes == 1


def test_crashes_spread_over_stable_runs_never_give_up() -> None:
    restarts = WorkerRestarts(RestartPolicy(stable_after_seconds=10.0, max_quick_crashes=2))
    now = 0.0
    for _ in range(20):
        restarts.started(now)
        now += 11.0
        assert restarts.crashed(now) == 1.0


# --- a dead worker's metric files ----------------------------------------------------------------

# (metric name, sample name, label names, label values, help): what prometheus-client keys a value by.
MetricKey = tuple[str, str, list[str], list[str], str]
DECISIONS: MetricKey = ("smartgate_decisions", "smartgate_decisions_total", ["outcome"], ["allow"], "Decisions.")
SECONDS_SUM: MetricKey = (
    "smartgate_decision_duration_seconds",
    "smartgate_decision_duration_seconds_sum",
    [],
    [],
    "Decision latency.",
)
READY: MetricKey = ("smartgate_ready", "smartgate_ready", [], [], "Ready.")
BUILD_INFO: MetricKey = ("smartgate_build_info", "smartgate_build_info", [], [], "Build.")


def _write(directory: Path, file_name: str, metric: MetricKey, value: float) -> None:
    """What a worker's prometheus-client writes: one value under the metric's key in ``file_name``."""
    # prometheus-client's MmapedDict is unannotated, hence the no-untyped-call ignores.
    values = MmapedDict(str(directory / file_name))  # type: ignore[no-untyped-call]
    values.write_value(mmap_key(*metric), value, 0.0)  # type: ignore[no-untyped-call]
    values.close()  # type: ignore[no-untyped-call]


def _worker(directory: Path, pid: int, decisions: float, seconds: float) -> None:
    _write(directory, f"counter_{pid}.db", DECISIONS, decisions)
    _write(directory, f"histogram_{pid}.db", SECONDS_SUM, seconds)
    _write(directory, f"gauge_livemin_{pid}.db", READY, 1.0)
    _write(directory, f"gauge_max_{pid}.db", BUILD_INFO, 1.0)


def _sample(directory: Path, name: str) -> float:
    text = metric_files.render(str(directory))[0].decode()
    (line,) = [line for line in text.splitlines() if line.startswith(name + " ") or line.startswith(name + "{")]
    return float(line.rpartition(" ")[2])


def test_a_dead_workers_counts_are_kept_and_its_files_removed(tmp_path: Path) -> None:
    _worker(tmp_path, 101, decisions=3, seconds=0.5)
    _worker(tmp_path, 202, decisions=4, seconds=0.25)
    metric_files.retire_process(str(tmp_path), 101)
    assert sorted(path.name for path in tmp_path.glob("*.db")) == [
        "counter_202.db",
        "gauge_livemin_202.db",
        "gauge_max_202.db",
        "histogram_202.db",
    ]
    assert _sample(tmp_path, "smartgate_decisions_total") == 7
    assert _sample(tmp_path, "smartgate_decision_duration_seconds_sum") == 0.75
    # Worker 101's slot restarted as 303, then died as well: its counts join the retired totals.
    _worker(tmp_path, 303, decisions=5, seconds=1.0)
    metric_files.retire_process(str(tmp_path), 303)
    assert _sample(tmp_path, "smartgate_decisions_total") == 12
    assert _sample(tmp_path, "smartgate_decision_duration_seconds_sum") == 1.75
    assert sorted(path.name for path in (tmp_path / metric_files.RETIRED_DIRECTORY).iterdir()) == [
        "counter_retired.db",
        "histogram_retired.db",
    ]
    assert _sample(tmp_path, "smartgate_ready") == 1  # only the live worker's gauge is left


def test_retiring_a_pid_leaves_pids_that_only_end_in_the_same_digits(tmp_path: Path) -> None:
    _worker(tmp_path, 12, decisions=1, seconds=0.1)
    _worker(tmp_path, 112, decisions=2, seconds=0.1)
    metric_files.retire_process(str(tmp_path), 12)
    assert (tmp_path / "counter_112.db").exists() and (tmp_path / "gauge_max_112.db").exists()
    assert _sample(tmp_path, "smartgate_decisions_total") == 3


@pytest.mark.parametrize("module", ["smartgate.runtime.supervisor"])
def test_the_supervisor_does_not_import_the_metrics_module(module: str) -> None:
    """A metric created in the supervisor would join the aggregate (an unset readiness gauge
    would read as not ready); the shared routes and metric-file helpers must not pull it in."""
    probe = f"import sys, {module}; sys.exit('smartgate.telemetry.metrics' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], check=False).returncode == 0
