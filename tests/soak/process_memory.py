"""Resident memory of a process tree, read from /proc (smartgate's supervisor and its workers)."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_mb(pid: int) -> float:
    """The summed RSS of ``pid`` and all its descendants, in MB."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        total += _rss_kb(current)
        pending.extend(_children(current))
    return total / 1024


@dataclass
class RssSampler:
    """Samples the tree's RSS every ``interval`` seconds in a background thread."""

    pid: int
    interval: float
    samples: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, MB)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        began = time.monotonic()

        def run() -> None:
            while True:
                self.samples.append((time.monotonic() - began, tree_rss_mb(self.pid)))
                if self._stop.wait(self.interval):
                    return

        self._thread = threading.Thread(target=run, name="rss-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
