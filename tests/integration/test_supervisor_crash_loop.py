"""A worker that can never start (its gRPC port is taken) makes the real supervisor stop every
worker and exit non-zero, so that Kubernetes restarts the pod, instead of restarting it forever.

No Envoy needed: the supervisor and its worker processes are real, started as ``smartgate serve``
starts them, with a faster restart policy than the default so that the test stays short.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from smartgate.dev.keys import ensure_dev_keys
from smartgate.runtime.supervisor import EXIT_CRASH_LOOP

pytestmark = pytest.mark.integration

RUNNER = (
    "import sys; from smartgate.runtime.restart_policy import RestartPolicy; "
    "from smartgate.runtime.supervisor import run_supervisor; "
    "run_supervisor(sys.argv[1], 2, RestartPolicy(first_delay_seconds=0.2, max_quick_crashes=3))"
)
BOUND_SECONDS = 20


def _is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _held_port_after_a_free_one() -> tuple[socket.socket, int]:
    """A listening socket on port p + 1, with p free: worker 0 can listen on p, worker 1 never can."""
    for _ in range(100):
        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1] - 1
        if _is_free(port):
            return holder, port
        holder.close()
    raise RuntimeError("no free port below a held one")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as client:
        return client.connect_ex(("127.0.0.1", port)) == 0


def test_a_crash_looping_worker_makes_the_supervisor_exit_non_zero(tmp_path: Path) -> None:
    jwks_file = ensure_dev_keys(tmp_path / "keys")
    holder, grpc_port = _held_port_after_a_free_one()
    config = {
        "fhir": {"base_url": "https://fhir.example.org/r4", "upstream_url": "http://127.0.0.1:9/fhir"},
        "issuers": [{"issuer": "https://idp.example.org", "jwks_file": str(jwks_file)}],
        "listen": {"grpc": f"127.0.0.1:{grpc_port}", "http": f"127.0.0.1:{_free_port()}"},
        "decision_log": "off",
        "shutdown_grace_seconds": 1,
    }
    config_path = tmp_path / "smartgate.yaml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    temp = tmp_path / "tmp"
    temp.mkdir()
    log_path = tmp_path / "supervisor.log"
    started = time.monotonic()
    with holder, log_path.open("wb") as log:
        supervisor = subprocess.Popen(
            [sys.executable, "-c", RUNNER, str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TMPDIR": str(temp), "PYTHONUNBUFFERED": "1"},
        )
        try:
            status = supervisor.wait(timeout=BOUND_SECONDS)
        finally:
            if supervisor.poll() is None:
                supervisor.kill()
                supervisor.wait()
    output = log_path.read_text(encoding="utf-8", errors="replace")
    assert status == EXIT_CRASH_LOOP, output
    assert time.monotonic() - started < BOUND_SECONDS
    assert output.count("worker 1 exited with") == 3, output
    assert "restarting in 0.2s" in output and "restarting in 0.4s" in output, output
    assert "3 quick crashes in a row; stopping all workers" in output, output
    assert "worker 0 exited" not in output, "the healthy worker was never restarted"
    assert not _listening(grpc_port), "the healthy worker outlived its supervisor"
    assert list(temp.iterdir()) == [], "the supervisor left its metric or config directory behind"
