"""Polling waits: one loop, read as seconds taken, as a yes/no, or as "this URL answers 200"."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable

import httpx


def seconds_until(condition: Callable[[], bool], seconds: float, interval: float = 0.05) -> float | None:
    """Seconds until ``condition()`` held, or None when it did not within ``seconds``.

    The condition is asked once more at the deadline, so a wait that just ran out still sees a
    condition that became true during the last sleep."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if condition():
            return time.monotonic() - start
        time.sleep(interval)
    return time.monotonic() - start if condition() else None


def wait_until(condition: Callable[[], bool], seconds: float, interval: float = 0.05) -> bool:
    """Whether ``condition()`` held within ``seconds`` (for ``assert wait_until(...)``)."""
    return seconds_until(condition, seconds, interval) is not None


def wait_for(url: str, seconds: float = 30.0, process: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until ``url`` answers 200; raise if ``process`` exits first or the time runs out."""

    def answers_200() -> bool:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before {url} was ready")
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(url, timeout=1).status_code == 200
        return False

    if seconds_until(answers_200, seconds, interval=0.1) is None:
        raise TimeoutError(f"{url} not ready after {seconds}s")
