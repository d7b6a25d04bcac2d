"""``make run``: the demo stack answers the curl line it prints, and Ctrl-C leaves nothing behind.

This starts exactly what the Makefile's ``run`` target starts (``smartgate demo``, with a state
directory of its own) in a process group of its own. The demo has no port options: it binds the
fixed loopback ports of its embedded config (Envoy 10000 and admin 9901, smartgate 9191/9190, the
demo FHIR server 18080), so the module is skipped when any of them is taken.

The tests share one running demo and run in file order; the Ctrl-C test stops it, and the last
test starts a demo of its own.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import httpx
import pytest
import yaml

from smartgate.dev.demo.runner import ENVOY_PORT, UPSTREAM_PORT, find_envoy
from smartgate.envoy_glue.bootstrap import EnvoySettings

pytestmark = pytest.mark.integration

SMARTGATE = str(Path(sys.executable).parent / "smartgate")
START_SECONDS = 90.0
STOP_SECONDS = 30.0
PATIENT_123_OBSERVATIONS = f"http://127.0.0.1:{ENVOY_PORT}/fhir/Observation?patient=123"


def demo_ports() -> dict[str, int]:
    config = yaml.safe_load(resources.files("smartgate.dev.demo").joinpath("config.yaml").read_text(encoding="utf-8"))
    return {
        "Envoy listener": ENVOY_PORT,
        "Envoy admin": EnvoySettings().admin_port,
        "smartgate gRPC": int(config["listen"]["grpc"].rpartition(":")[2]),
        "smartgate HTTP": int(config["listen"]["http"].rpartition(":")[2]),
        "demo FHIR server": UPSTREAM_PORT,
    }


def port_taken(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind: TIME_WAIT is no obstacle
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def process_group_members(pgid: int) -> dict[int, str]:
    """Every live process (zombies included) in process group ``pgid``: pid -> command line."""
    members: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # state ppid pgrp ...
        if int(fields[2]) == pgid:
            members[int(entry.name)] = cmdline
    return members


@dataclass
class Demo:
    process: subprocess.Popen[str]
    state_dir: Path
    stderr_path: Path
    lines: list[str] = field(default_factory=list)
    _queue: queue.Queue[str | None] = field(default_factory=queue.Queue)

    def start_reading(self) -> None:
        def pump() -> None:
            assert self.process.stdout is not None
            with self.process.stdout:  # closed at end of output, not left to the garbage collector
                for line in self.process.stdout:
                    self.lines.append(line)
                    self._queue.put(line)
            self._queue.put(None)

        threading.Thread(target=pump, name="demo-stdout", daemon=True).start()

    def diagnostics(self) -> str:
        stderr = self.stderr_path.read_text(errors="replace")[-4000:]
        return "stdout:\n" + "".join(self.lines[-40:]) + "\nstderr:\n" + stderr

    def printed_curl_line(self) -> str:
        """The first curl line the demo prints: the one with the working token for patient 123."""
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                pytest.fail(
                    f"smartgate demo exited ({self.process.wait()}) before printing a curl line\n" + self.diagnostics()
                )
            if line.strip().startswith("curl "):
                return line.strip()
        pytest.fail(f"smartgate demo printed no curl line within {START_SECONDS} s\n" + self.diagnostics())

    def dev_token(self, patient: str, scope: str = "launch/patient patient/Observation.rs") -> str:
        result = subprocess.run(
            [SMARTGATE, "dev-token", "--key-dir", str(self.state_dir), "--patient", patient, "--scope", scope],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        assert "NOT FOR PRODUCTION" in result.stderr
        return result.stdout.strip()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)


@dataclass(frozen=True)
class CurlLine:
    text: str
    argv: list[str]
    url: str
    headers: dict[str, str]


def parse_curl(line: str) -> CurlLine:
    argv = shlex.split(line)
    headers: dict[str, str] = {}
    for flag, value in itertools.pairwise(argv):
        if flag == "-H":
            name, _, header_value = value.partition(":")
            headers[name.strip()] = header_value.strip()
    return CurlLine(line, argv, argv[-1], headers)


def start_demo(workdir: Path) -> Demo:
    """``smartgate demo`` as the Makefile's run target starts it, in a process group of its own."""
    try:
        find_envoy()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    taken = {name: port for name, port in demo_ports().items() if port_taken(port)}
    if taken:
        pytest.skip(f"make run uses fixed ports and these are taken: {taken}")
    stderr_path = workdir / "demo.stderr"
    with stderr_path.open("w") as stderr:
        process = subprocess.Popen(
            [SMARTGATE, "demo", "--state-dir", str(workdir / "state")],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=workdir,
            start_new_session=True,
        )
    running = Demo(process, workdir / "state", stderr_path)
    running.start_reading()
    return running


def envoys_in(pgid: int) -> list[int]:
    return [pid for pid, cmdline in process_group_members(pgid).items() if Path(cmdline.split(" ")[0]).name == "envoy"]


def assert_all_gone(demo: Demo, envoy_pids: list[int]) -> None:
    try:
        code = demo.process.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        pytest.fail(f"smartgate demo still running {STOP_SECONDS} s after the signal\n" + demo.diagnostics())
    assert code == 0, demo.diagnostics()
    deadline = time.monotonic() + 10
    while process_group_members(demo.process.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert process_group_members(demo.process.pid) == {}
    for pid in envoy_pids:
        assert not Path(f"/proc/{pid}").exists(), f"Envoy {pid} outlived the demo"
    assert {name: port for name, port in demo_ports().items() if port_taken(port)} == {}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    running = start_demo(tmp_path_factory.mktemp("make-run"))
    try:
        yield running
    finally:
        running.kill()


@pytest.fixture(scope="module")
def curl_line(demo: Demo) -> CurlLine:
    return parse_curl(demo.printed_curl_line())


@pytest.fixture(scope="module")
def client(curl_line: CurlLine) -> Iterator[httpx.Client]:
    """An HTTP client, once the demo has printed its curl line (it is serving then)."""
    with httpx.Client(timeout=10) as http:
        yield http


def assert_patient_123_observations(body: object) -> None:
    assert isinstance(body, dict)
    assert body["resourceType"] == "Bundle"
    assert {entry["resource"]["id"] for entry in body["entry"]} == {"obs-123-a", "obs-123-b"}
    assert {entry["resource"]["subject"]["reference"] for entry in body["entry"]} == {"Patient/123"}


def test_the_printed_curl_line_targets_envoy_with_a_bearer_token(curl_line: CurlLine) -> None:
    assert curl_line.argv[0] == "curl"
    assert curl_line.url == PATIENT_123_OBSERVATIONS
    assert curl_line.headers["Authorization"].startswith("Bearer ey")


def test_the_request_in_the_curl_line_gets_patient_123s_fhir_json(curl_line: CurlLine, client: httpx.Client) -> None:
    response = client.get(curl_line.url, headers=curl_line.headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/fhir+json")
    assert_patient_123_observations(response.json())


def test_the_printed_curl_line_works_as_printed(curl_line: CurlLine) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    result = subprocess.run(["bash", "-c", curl_line.text], capture_output=True, text=True, timeout=30, check=True)
    assert_patient_123_observations(json.loads(result.stdout))


def test_the_same_url_without_the_token_is_401(curl_line: CurlLine, client: httpx.Client) -> None:
    response = client.get(curl_line.url)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_a_dev_token_for_patient_123_works_through_the_stack(demo: Demo, client: httpx.Client) -> None:
    token = demo.dev_token("123")
    response = client.get(PATIENT_123_OBSERVATIONS, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert_patient_123_observations(response.json())


def test_a_dev_token_for_patient_456_is_denied_patient_123s_data(demo: Demo, client: httpx.Client) -> None:
    token = demo.dev_token("456")
    own = client.get(
        PATIENT_123_OBSERVATIONS.replace("patient=123", "patient=456"), headers={"Authorization": f"Bearer {token}"}
    )
    assert own.status_code == 200  # the token itself is good
    response = client.get(PATIENT_123_OBSERVATIONS, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 403
    assert response.json()["resourceType"] == "OperationOutcome"
    assert "obs-123" not in response.text


def test_ctrl_c_stops_envoy_and_everything_the_demo_started(demo: Demo, curl_line: CurlLine) -> None:
    """Stops the shared demo, so it comes after every test that uses it: SIGINT to the process
    group, as Ctrl-C on ``make run`` does."""
    envoy_pids = envoys_in(demo.process.pid)
    assert envoy_pids, f"no Envoy in the demo's process group: {process_group_members(demo.process.pid)}"
    os.killpg(demo.process.pid, signal.SIGINT)
    assert_all_gone(demo, envoy_pids)


def test_sigterm_to_the_demo_alone_stops_the_envoy_it_started(tmp_path: Path) -> None:
    """``kill <pid>`` reaches only the demo process: it must stop its Envoy itself."""
    demo = start_demo(tmp_path)
    try:
        demo.printed_curl_line()  # up and serving
        envoy_pids = envoys_in(demo.process.pid)
        assert envoy_pids, f"no Envoy in the demo's process group: {process_group_members(demo.process.pid)}"
        demo.process.send_signal(signal.SIGTERM)
        assert_all_gone(demo, envoy_pids)
    finally:
        demo.kill()
