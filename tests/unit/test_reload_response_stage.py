"""A reload never changes what the response stage was built from (found in review): the verifier and
Envoy's ext_proc filter are built at start, so a reload into ``response_verification.mode: enforce``
would let the policy skip look-ups in front of a verifier that only reports, or none at all."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from smartgate.config.parse import load_config
from smartgate.runtime.worker import Worker
from tests.unit.token_helpers import key_for, make_jwks


def _config(tmp_path: Path, **changes: Any) -> Path:
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps(make_jwks(key_for("ES256"))), encoding="utf-8")
    config: dict[str, Any] = {
        "fhir": {"base_url": "https://fhir.example.org/r4", "upstream_url": "http://fhir-upstream:8080/fhir"},
        "issuers": [{"issuer": "https://idp.example.org", "jwks_file": str(jwks_file)}],
        "decision_log": "off",
        "shutdown_grace_seconds": 0.01,
        "response_verification": {"mode": "report"},
    }
    config.update(changes)
    path = tmp_path / "smartgate.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "change",
    [
        {"response_verification": {"mode": "enforce"}},
        {"response_verification": {"mode": "off"}},
        {"compartment": {"follow_patient_links": True}},
        {"fhir": {"base_url": "https://fhir.example.org/r5", "upstream_url": "http://fhir-upstream:8080/fhir"}},
    ],
)
async def test_a_reload_changing_what_the_response_stage_was_built_from_is_rejected(
    tmp_path: Path, change: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    path = _config(tmp_path)
    worker = Worker(load_config(path), str(path), 0, serve_http=False)
    before = worker.components
    try:
        _config(tmp_path, **change)
        await worker.reload()
        assert worker.components is before and worker.config.response_verification.mode == "report"
        assert "change only on restart" in caplog.text
    finally:
        await worker.components.close()


async def test_a_reload_of_other_settings_still_applies(tmp_path: Path) -> None:
    path = _config(tmp_path)
    worker = Worker(load_config(path), str(path), 0, serve_http=False)
    try:
        _config(tmp_path, mode="dry_run")
        await worker.reload()
        assert worker.config.mode == "dry_run"
    finally:
        await worker.components.close()


async def test_overlapping_reloads_apply_one_after_the_other_and_close_each_replaced_set(tmp_path: Path) -> None:
    path = _config(tmp_path)
    worker = Worker(load_config(path), str(path), 0, serve_http=False)
    first = worker.components
    try:
        await asyncio.gather(worker.reload(), worker.reload())
        assert worker.components is not first
        assert first.http_client.is_closed
    finally:
        await worker.components.close()
