"""A config reload closes the decision-log and audit files of the components it replaced
(each reload used to leave two more open handles), and closing never touches stdout/stderr."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from smartgate.config.parse import load_config
from smartgate.pipeline.audit_event import AuditEventLog
from smartgate.pipeline.decision_log import DecisionLog
from smartgate.runtime.worker import Worker

from .token_helpers import key_for, make_jwks


def open_handles(path: Path) -> int:
    """How many of this process's file descriptors point at ``path``."""
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        try:
            count += os.readlink(fd) == str(path)
        except OSError:
            continue
    return count


def test_close_closes_a_file_the_decision_log_opened(tmp_path: Path) -> None:
    path = tmp_path / "decisions.log"
    log = DecisionLog(str(path))
    log.write({"a": 1})
    assert open_handles(path) == 1
    log.close()
    assert open_handles(path) == 0
    assert json.loads(path.read_text(encoding="utf-8")) == {"a": 1}


def test_close_closes_a_file_the_audit_log_opened(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditEventLog(str(path), "https://fhir.example.org/r4", "smartgate")
    assert open_handles(path) == 1
    log.close()
    assert open_handles(path) == 0


@pytest.mark.parametrize("destination", ["stdout", "stderr", "off"])
def test_close_leaves_the_process_streams_open(destination: str) -> None:
    stdout, stderr = sys.stdout, sys.stderr
    DecisionLog(destination).close()
    AuditEventLog(destination, "https://fhir.example.org/r4", "smartgate").close()
    assert not stdout.closed and not stderr.closed


def test_a_closed_decision_log_refuses_to_write_rather_than_losing_a_line(tmp_path: Path) -> None:
    """A Check still running on a replaced pipeline after the grace period fails (Envoy then
    denies) instead of being allowed with no decision-log line."""
    log = DecisionLog(str(tmp_path / "decisions.log"))
    log.close()
    with pytest.raises(ValueError):
        log.write({"a": 1})


def _write_config(tmp_path: Path, jwks_file: Path) -> Path:
    config = {
        "fhir": {"base_url": "https://fhir.example.org/r4", "upstream_url": "http://fhir-upstream:8080/fhir"},
        "issuers": [{"issuer": "https://idp.example.org", "jwks_file": str(jwks_file)}],
        "decision_log": str(tmp_path / "decisions.log"),
        "audit": {"destination": str(tmp_path / "audit.log")},
        "shutdown_grace_seconds": 0.01,
    }
    path = tmp_path / "smartgate.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


async def test_a_reload_closes_the_replaced_decision_and_audit_files(tmp_path: Path) -> None:
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps(make_jwks(key_for("ES256"))), encoding="utf-8")
    config_path = _write_config(tmp_path, jwks_file)
    worker = Worker(load_config(config_path), str(config_path), 0, serve_http=False)
    files = [tmp_path / "decisions.log", tmp_path / "audit.log"]
    try:
        assert [open_handles(path) for path in files] == [1, 1]
        for _ in range(3):
            await worker.reload()
        assert [open_handles(path) for path in files] == [1, 1]
    finally:
        await worker.components.close()
    assert [open_handles(path) for path in files] == [0, 0]


async def test_a_rejected_reload_closes_the_files_it_opened(tmp_path: Path) -> None:
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps(make_jwks(key_for("ES256"))), encoding="utf-8")
    config_path = _write_config(tmp_path, jwks_file)
    worker = Worker(load_config(config_path), str(config_path), 0, serve_http=False)
    files = [tmp_path / "decisions.log", tmp_path / "audit.log"]
    try:
        jwks_file.write_text("not json", encoding="utf-8")  # the new components' keys cannot load
        await worker.reload()
        assert [open_handles(path) for path in files] == [1, 1]
    finally:
        await worker.components.close()


async def test_the_smart_configuration_route_survives_a_reload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's SMART document is fetched with the current components' HTTP client; a reload
    closes the old client, so the route must follow the new one (it used to keep the closed one)."""
    discovery = {"issuer": "https://idp.example.org", "token_endpoint": "https://idp.example.org/token"}

    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url == "https://idp.example.org/.well-known/openid-configuration"
        return httpx.Response(200, json=discovery)

    real_client = httpx.AsyncClient
    monkeypatch.setattr(
        httpx, "AsyncClient", lambda **kwargs: real_client(transport=httpx.MockTransport(answer), **kwargs)
    )
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps(make_jwks(key_for("ES256"))), encoding="utf-8")
    config_path = _write_config(tmp_path, jwks_file)
    worker = Worker(load_config(config_path), str(config_path), 0, serve_http=False)
    try:
        await worker.reload()
        route = worker._http_routes()["/.well-known/smart-configuration"]
        status, _, body, _ = await route()
        assert status == "200 OK"
        assert json.loads(body)["token_endpoint"] == discovery["token_endpoint"]
    finally:
        await worker.components.close()
