"""Envoy ↔ smartgate over a Unix domain socket (``listen.grpc: unix:/path``, the chart's default): the real
Envoy sends Check (ext_authz) and response verification (ext_proc) over the socket, each worker has its own
socket (worker i > 0 on ``path.i``), only the socket's owner and group may connect, and no TCP Check port
is opened."""

from __future__ import annotations

import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from smartgate.dev.demo.upstream import MISBEHAVE_TAG
from tests.support.stack import GatedFhir, gated_fhir

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def socket_dir() -> Iterator[Path]:
    """A short directory: a socket path holds at most 107 bytes, pytest's tmp paths can be longer."""
    with tempfile.TemporaryDirectory(prefix="sg-uds-") as directory:
        yield Path(directory)


@pytest.fixture(scope="module")
def over_socket(tmp_path_factory: pytest.TempPathFactory, socket_dir: Path) -> Iterator[GatedFhir]:
    with gated_fhir(
        tmp_path_factory.mktemp("uds"),
        grpc_socket=socket_dir / "grpc.sock",
        workers=2,
        smartgate_args=("--workers", "2"),
        response_verification={"mode": "enforce"},
        envoy={"response_verification": "enforce"},
    ) as gated:
        yield gated


def test_envoy_asks_smartgate_over_the_unix_socket_and_a_good_token_is_allowed(over_socket: GatedFhir) -> None:
    response = over_socket.get("/Observation?patient=123", over_socket.token())
    assert response.status_code == 200
    assert {e["resource"]["id"] for e in response.json()["entry"]} == {"obs-123-a", "obs-123-b"}


def test_a_denial_over_the_unix_socket_is_smartgates_403(over_socket: GatedFhir) -> None:
    response = over_socket.get("/Observation?patient=456", over_socket.token())
    assert response.status_code == 403
    assert response.json()["resourceType"] == "OperationOutcome"


def test_response_verification_runs_over_the_same_socket(over_socket: GatedFhir) -> None:
    response = over_socket.get(f"/Observation?patient=123&_tag={MISBEHAVE_TAG}", over_socket.token())
    assert response.status_code == 403
    assert "obs-456-a" not in response.text


def test_each_worker_listens_on_its_own_socket_and_envoy_uses_both(over_socket: GatedFhir, socket_dir: Path) -> None:
    for _ in range(8):
        assert over_socket.get("/Observation?patient=123", over_socket.token()).status_code == 200
    per_endpoint = over_socket.envoy.cluster_requests("smartgate")
    paths = {str(socket_dir / "grpc.sock"), str(socket_dir / "grpc.sock.1")}
    assert set(per_endpoint) == paths
    assert all(count > 0 for count in per_endpoint.values()), per_endpoint


def test_only_the_sockets_owner_and_group_may_connect(socket_dir: Path, over_socket: GatedFhir) -> None:
    for name in ("grpc.sock", "grpc.sock.1"):
        mode = (socket_dir / name).stat().st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o660


def test_no_tcp_check_port_is_opened(over_socket: GatedFhir) -> None:
    """smartgate's gRPC listener is the socket alone: its config names no TCP address for it."""
    assert over_socket.smartgate.read_config()["listen"]["grpc"].startswith("unix:/")
    assert "listening: grpc unix:" in over_socket.smartgate.output()
