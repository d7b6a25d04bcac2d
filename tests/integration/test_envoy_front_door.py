"""The front door through the real Envoy (issue 17): the limits Envoy's edge-proxy guidance asks of a
listener that faces clients. A client that trickles its headers is cut at ``request_headers_timeout``
while other clients are served; connections past the global cap are closed as soon as they are accepted,
never queued; the mTLS listener serves clients with a certificate and refuses the handshake without one;
the shipped config passes ``envoy --mode validate`` and Envoy no longer warns that connections are
unlimited. The stack runs with small limits so that the tests are quick."""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from smartgate.dev.demo.runner import find_envoy
from smartgate.envoy_glue.bootstrap import DownstreamTls, FrontDoorLimits
from tests.support.ports import free_port
from tests.support.stack import Stack, start_stack
from tests.support.tls import TlsFiles, make_tls_files

pytestmark = pytest.mark.integration

SHIPPED = Path(__file__).resolve().parents[2] / "envoy" / "envoy.yaml"
HEADER_TIMEOUT_SECONDS = 1.0
MAX_CONNECTIONS = 6
NO_LIMIT_WARNING = "no configured limit to the number of allowed active downstream connections"


@dataclass
class FrontDoor:
    stack: Stack
    envoy_port: int
    tls_port: int
    tls: TlsFiles

    def envoy_log(self) -> str:
        return (self.stack.workdir / "envoy.log").read_text(encoding="utf-8", errors="replace")

    def admin(self) -> str:
        config = yaml.safe_load((self.stack.workdir / "envoy.yaml").read_text(encoding="utf-8"))
        address = config["admin"]["address"]["socket_address"]
        return f"http://{address['address']}:{address['port_value']}"

    def overflows(self) -> int:
        """Envoy's own count of connections it closed for the global cap (listener counters)."""
        text = httpx.get(
            self.admin() + "/stats", params={"filter": r"\.downstream_global_cx_overflow$"}, timeout=5
        ).text
        return sum(int(line.rpartition(": ")[2]) for line in text.splitlines() if line.strip())


@pytest.fixture(scope="module")
def front_door(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrontDoor]:
    workdir = tmp_path_factory.mktemp("front-door")
    tls = make_tls_files(workdir)
    tls_port = free_port()
    limits = FrontDoorLimits(
        request_headers_timeout_seconds=HEADER_TIMEOUT_SECONDS, max_downstream_connections=MAX_CONNECTIONS
    )
    listener = DownstreamTls(
        port=tls_port, cert_path=str(tls.server_cert), key_path=str(tls.server_key), client_ca_path=str(tls.ca)
    )
    with start_stack(workdir, envoy_overrides={"front_door": limits, "tls": listener}) as stack:
        envoy_port = int(stack.base_url.split(":")[2].split("/")[0])
        yield FrontDoor(stack, envoy_port, tls_port, tls)


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def _seconds_until_closed(sock: socket.socket, limit: float) -> tuple[float, bytes]:
    """How long until the server closes ``sock`` (reading what it sent); ``limit`` when it has not."""
    sock.settimeout(limit)
    started, received = time.monotonic(), b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except TimeoutError:
        return limit, received
    except ConnectionResetError:
        pass
    return time.monotonic() - started, received


# --- a client trickling its headers ------------------------------------------------------------------


def test_a_client_that_stalls_in_its_headers_is_cut_at_the_request_headers_timeout(front_door: FrontDoor) -> None:
    with _connect(front_door.envoy_port) as slow:
        slow.sendall(b"GET /fhir/metadata HTTP/1.1\r\nHost: localhost\r\nX-Trickle: ")  # and nothing more
        waited, received = _seconds_until_closed(slow, limit=10 * HEADER_TIMEOUT_SECONDS)
    assert HEADER_TIMEOUT_SECONDS * 0.8 <= waited < 5 * HEADER_TIMEOUT_SECONDS, waited
    assert received.startswith(b"HTTP/1.1 408"), received


def test_normal_requests_go_on_while_a_client_stalls_in_its_headers(front_door: FrontDoor) -> None:
    stack = front_door.stack
    outcome: dict[str, float] = {}

    def stall() -> None:
        with _connect(front_door.envoy_port) as slow:
            slow.sendall(b"GET /fhir/metadata HTTP/1.1\r\nHost: localhost\r\n")
            outcome["stalled_for"], _ = _seconds_until_closed(slow, limit=10 * HEADER_TIMEOUT_SECONDS)

    staller = threading.Thread(target=stall)
    staller.start()
    try:
        statuses = [stack.get("/Observation?patient=123", stack.token()).status_code for _ in range(5)]
    finally:
        staller.join()
    assert statuses == [200] * 5
    assert outcome["stalled_for"] < 5 * HEADER_TIMEOUT_SECONDS


# --- the connection cap ------------------------------------------------------------------------------


def test_connections_past_the_cap_are_closed_at_once_not_queued(front_door: FrontDoor) -> None:
    overflows_before = front_door.overflows()
    with contextlib.ExitStack() as held:
        kept: list[socket.socket] = []
        refused: list[float] = []
        for _ in range(MAX_CONNECTIONS + 3):
            sock = held.enter_context(_connect(front_door.envoy_port))
            waited, _ = _seconds_until_closed(sock, limit=1.0)
            if waited < 1.0:
                refused.append(waited)
            else:
                kept.append(sock)
        assert len(kept) <= MAX_CONNECTIONS
        assert len(refused) >= 3 and max(refused) < 0.5, refused
    assert front_door.overflows() - overflows_before >= 3


def test_a_freed_connection_slot_is_served_again(front_door: FrontDoor) -> None:
    with contextlib.ExitStack() as held:
        for _ in range(MAX_CONNECTIONS + 1):
            held.enter_context(_connect(front_door.envoy_port))
        time.sleep(0.3)
    time.sleep(0.3)  # Envoy notices the closed connections
    stack = front_door.stack
    assert stack.get("/Observation?patient=123", stack.token()).status_code == 200


# --- the mTLS listener -------------------------------------------------------------------------------


def _tls_client(front_door: FrontDoor, with_certificate: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(front_door.tls.ca))
    if with_certificate:
        context.load_cert_chain(str(front_door.tls.client_cert), str(front_door.tls.client_key))
    return context


def test_the_mtls_listener_serves_a_client_with_a_certificate(front_door: FrontDoor) -> None:
    stack = front_door.stack
    with httpx.Client(verify=_tls_client(front_door, with_certificate=True), timeout=10) as client:
        response = client.get(
            f"https://127.0.0.1:{front_door.tls_port}/fhir/Observation?patient=123",
            headers={"authorization": f"Bearer {stack.token()}"},
        )
    assert response.status_code == 200
    assert {entry["resource"]["id"] for entry in response.json()["entry"]} == {"obs-123-a", "obs-123-b"}


def test_the_mtls_listener_refuses_a_client_without_a_certificate(front_door: FrontDoor) -> None:
    stack = front_door.stack
    with (
        httpx.Client(verify=_tls_client(front_door, with_certificate=False), timeout=10) as client,
        pytest.raises(httpx.HTTPError),
    ):
        client.get(
            f"https://127.0.0.1:{front_door.tls_port}/fhir/Observation?patient=123",
            headers={"authorization": f"Bearer {stack.token()}"},
        )


# --- the shipped config ------------------------------------------------------------------------------


def test_envoy_no_longer_warns_that_client_connections_are_unlimited(front_door: FrontDoor) -> None:
    log = front_door.envoy_log()
    assert NO_LIMIT_WARNING not in log.lower(), log


def test_the_shipped_envoy_config_passes_envoy_mode_validate() -> None:
    result = subprocess.run(
        [find_envoy(), "--mode", "validate", "-c", str(SHIPPED), "--use-dynamic-base-id"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "OK" in output, output
    assert NO_LIMIT_WARNING not in output.lower()
