"""Start and stop the subprocesses a test runs: ``smartgate serve`` and the real Envoy binary."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from smartgate.dev.demo.runner import find_envoy


def start_process(argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Run ``argv`` with stdout and stderr both written to ``log_path``.

    The child holds its own copy of the log's descriptor, so ours is closed at once (left open,
    it would be a ResourceWarning whenever the garbage collector finds it)."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            list(argv), stdout=log, stderr=subprocess.STDOUT, env=dict(env) if env is not None else None
        )


def start_smartgate_process(
    config_path: Path, log_path: Path, *, args: Sequence[str] = (), env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``python -m smartgate serve --config ...`` with unbuffered output (logs are read while it runs)."""
    return start_process(
        [sys.executable, "-m", "smartgate", "serve", "--config", str(config_path), *args],
        log_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )


def start_envoy_process(config_path: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """The Envoy binary ``find_envoy`` locates, one worker thread, its own base id (runs side by side)."""
    return start_process(
        [find_envoy(), "-c", str(config_path), "--use-dynamic-base-id", "--log-level", "warn", "--concurrency", "1"],
        log_path,
    )


def stop(process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL when it has not exited within ``timeout``; returns once it has exited."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def running(process: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    """Yield ``process`` and stop it however the block ends."""
    try:
        yield process
    finally:
        stop(process)
