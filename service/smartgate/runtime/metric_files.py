"""The workers' Prometheus multiprocess files, as the supervisor reads and tidies them.

prometheus-client writes one file per metric kind and worker pid (``counter_<pid>.db``,
``histogram_<pid>.db``, ``gauge_livemin_<pid>.db``, ...). Its ``mark_process_dead`` removes only
a dead pid's live-gauge files, so each restart used to leave two more files behind, and every
scrape read them all (client_python issue #275).

What happens to a dead worker's files here:
- counters, histograms and summaries are added into one ``<kind>_retired.db`` per kind, in
  the ``retired/`` subdirectory, and the pid's file is removed. Their values are sums (a
  histogram's buckets are stored per bucket, not cumulative), so adding them keeps every total
  exactly where it was: a restart never makes a counter go backwards, and the number of files
  stays bounded by the number of live workers plus one per kind;
- every gauge file of that pid is removed. A gauge is a current value, and a dead process has
  none; smartgate's only non-live gauge (``build_info``, mode ``max``) is the same in every
  worker.

The retired files sit in a subdirectory so that nothing that reads ``<kind>_<pid>.db`` names
from the top directory sees a name that is not a pid. A supervisor crash between adding and
removing would count that worker twice, but it also ends the pod, and with it this directory.

Must not import ``smartgate.telemetry.metrics`` (see ``runtime.supervisor``).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.registry import Collector

RETIRED_DIRECTORY = "retired"
_ADDITIVE_KINDS = ("counter", "histogram", "summary")


def metric_files(directory: str) -> list[str]:
    """Every file the aggregate is made of: the live workers' and the retired totals."""
    return glob.glob(os.path.join(directory, "*.db")) + glob.glob(os.path.join(directory, RETIRED_DIRECTORY, "*.db"))


class _FilesCollector(Collector):
    def __init__(self, directory: str) -> None:
        self._directory = directory

    def collect(self) -> Iterable[Metric]:
        return multiprocess.MultiProcessCollector.merge(  # type: ignore[no-untyped-call,no-any-return]
            metric_files(self._directory), accumulate=True
        )


def render(directory: str) -> tuple[bytes, str]:
    """The Prometheus text of the workers' metrics added up, and its content type."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_FilesCollector(directory))
    return generate_latest(registry), CONTENT_TYPE_LATEST


def retire_process(directory: str, pid: int) -> None:
    """Fold a dead worker's additive metrics into the retired totals and remove all its files."""
    multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
    for path in glob.glob(os.path.join(directory, f"*_{pid}.db")):
        kind = os.path.basename(path).split("_", 1)[0]
        if kind in _ADDITIVE_KINDS:
            _add_into(path, os.path.join(directory, RETIRED_DIRECTORY, f"{kind}_retired.db"))
        os.remove(path)


def _add_into(source: str, totals_path: str) -> None:
    os.makedirs(os.path.dirname(totals_path), exist_ok=True)
    totals = MmapedDict(totals_path)  # type: ignore[no-untyped-call]
    try:
        for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(source):  # type: ignore[no-untyped-call]
            current, _ = totals.read_value(key)  # type: ignore[no-untyped-call]
            totals.write_value(key, current + value, timestamp)  # type: ignore[no-untyped-call]
    finally:
        totals.close()  # type: ignore[no-untyped-call]
