"""Start and stop the benchmark's processes (Envoy, smartgate, the floor server) on free loopback ports."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from smartgate.dev.demo.runner import find_envoy

BENCH_DIR = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port_pair() -> int:
    """A port p with p + 1 free too (smartgate workers listen on consecutive ports)."""
    for _ in range(200):
        port = free_port()
        if port >= 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports")


def _wait(condition: Callable[[], bool], process: subprocess.Popen[bytes], what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} before it was ready")
        if condition():
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready after {seconds}s")


def _http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - loopback only
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    return check


def _grpc_serving(address: str) -> Callable[[], bool]:
    def check() -> bool:
        with grpc.insecure_channel(address) as channel:
            try:
                answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            except grpc.RpcError:
                return False
            return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

    return check


@contextlib.contextmanager
def running(
    command: list[str], log_path: Path, ready: Callable[[], bool], what: str, stdout_to_null: bool = False
) -> Iterator[subprocess.Popen[bytes]]:
    with log_path.open("ab") as log:
        process = subprocess.Popen(  # noqa: S603 - our own commands
            command,
            stdout=subprocess.DEVNULL if stdout_to_null else log,
            stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
    try:
        _wait(ready, process, what)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def envoy(
    config: dict[str, Any], workdir: Path, name: str, concurrency: int = 1
) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    admin = config["admin"]["address"]["socket_address"]
    command = [
        find_envoy(),
        "-c",
        str(path),
        "--use-dynamic-base-id",
        "--log-level",
        "error",
        "--concurrency",
        str(concurrency),
    ]
    return running(
        command, workdir / f"{name}.log", _http_ok(f"http://127.0.0.1:{admin['port_value']}/ready"), f"envoy ({name})"
    )


def floor_server(kind: str, port: int, workdir: Path) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    """``kind``: aio, threaded, or busyN (the aio floor busy-waiting N µs per Check)."""
    busy = kind.removeprefix("busy") if kind.startswith("busy") else ""
    command = [
        sys.executable,
        str(BENCH_DIR / "floor_server.py"),
        "--kind",
        "aio" if busy else kind,
        "--port",
        str(port),
        *(["--busy-us", busy] if busy else []),
    ]
    return running(command, workdir / f"floor-{kind}.log", _grpc_serving(f"127.0.0.1:{port}"), f"floor ({kind})")


def smartgate_config(
    grpc_port: int,
    http_port: int,
    base_url: str,
    upstream_url: str,
    issuer: str,
    jwks_file: Path,
    grpc_socket: str | None = None,
) -> dict[str, Any]:
    """The shipped defaults with our addresses and the bench issuer; nothing tuned. With ``grpc_socket``
    the gRPC listener is that Unix domain socket instead of ``grpc_port``."""
    return {
        "listen": {
            "grpc": f"unix:{grpc_socket}" if grpc_socket else f"127.0.0.1:{grpc_port}",
            "http": f"127.0.0.1:{http_port}",
        },
        "fhir": {"base_url": base_url, "upstream_url": upstream_url},
        "issuers": [{"issuer": issuer, "jwks_file": str(jwks_file)}],
    }


def smartgate(
    config: dict[str, Any], workdir: Path, workers: int = 1, extra: list[str] | None = None
) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    """``smartgate serve`` (decision log on stdout, as shipped, sent to /dev/null)."""
    path = workdir / f"smartgate-{workers}w.yaml"
    path.write_text(json.dumps(config), encoding="utf-8")
    command = [sys.executable, "-m", "smartgate", "serve", "--config", str(path), *(extra or [])]
    if workers > 1:
        command += ["--workers", str(workers)]
    ready = _http_ok(f"http://{config['listen']['http']}/readyz")
    return running(
        command, workdir / f"smartgate-{workers}w.log", ready, f"smartgate ({workers} workers)", stdout_to_null=True
    )


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")
