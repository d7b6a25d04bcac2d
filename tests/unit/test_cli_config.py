"""Where the commands take their config from, and that a bad one stops them at start, naming the key.

``check-config`` runs in-process through ``smartgate.cli.main(argv)``; ``serve`` runs as the real
``smartgate`` console script in its own process group, so a server that wrongly starts is caught
by the timeout and killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from smartgate.cli import main

pytestmark = pytest.mark.usefixtures("cli_isolation")

SMARTGATE = str(Path(sys.executable).parent / "smartgate")
SERVE_TIMEOUT_SECONDS = 60


@pytest.fixture
def good_settings(tmp_path: Path) -> dict[str, Any]:
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps({"keys": []}), encoding="utf-8")
    return {
        "listen": {"grpc": "127.0.0.1:19191", "http": "127.0.0.1:19190"},
        "fhir": {"base_url": "https://fhir.example.test/r4", "upstream_url": "http://127.0.0.1:18081/fhir"},
        "issuers": [{"issuer": "https://idp.example.test", "jwks_file": str(jwks_file)}],
    }


def write(tmp_path: Path, settings: dict[str, Any], name: str = "smartgate.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    return path


def break_listen_grpc(settings: dict[str, Any]) -> None:
    settings["listen"]["grpc"] = "localhost"


def drop_fhir_base_url(settings: dict[str, Any]) -> None:
    del settings["fhir"]["base_url"]


def allow_hmac(settings: dict[str, Any]) -> None:
    settings["issuers"][0]["algorithms"] = ["ES256", "HS256"]


def add_unknown_key(settings: dict[str, Any]) -> None:
    settings["fhir"]["upstream"] = "http://typo.example.test"


# (how to break a good config, the message check-config must print)
BAD_CONFIGS = [
    pytest.param(break_listen_grpc, "listen.grpc: must be HOST:PORT, got 'localhost'", id="listen.grpc"),
    pytest.param(drop_fhir_base_url, "fhir.base_url: is required", id="fhir.base_url"),
    pytest.param(allow_hmac, "issuers[0].algorithms[1]: 'HS256' is not an allowed algorithm", id="hmac"),
    pytest.param(add_unknown_key, "fhir.upstream", id="unknown-key"),
]


def run_serve(args: list[str], env_config: Path | None) -> subprocess.CompletedProcess[str]:
    """``smartgate serve ARGS``; a process still running after the timeout is a server that started: fail."""
    env = {k: v for k, v in os.environ.items() if k != "SMARTGATE_CONFIG"}
    if env_config is not None:
        env["SMARTGATE_CONFIG"] = str(env_config)
    process = subprocess.Popen(
        [SMARTGATE, "serve", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=SERVE_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"smartgate serve {args} was still running after {SERVE_TIMEOUT_SECONDS} s: it started")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def test_check_config_accepts_a_good_config(
    tmp_path: Path, good_settings: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", str(write(tmp_path, good_settings))]) == 0
    assert capsys.readouterr().out.startswith("ok: 1 issuer(s), FHIR base https://fhir.example.test/r4")


@pytest.mark.parametrize(("break_it", "message"), BAD_CONFIGS)
def test_check_config_exits_2_naming_the_key_and_the_reason(
    tmp_path: Path, good_settings: dict[str, Any], capsys: pytest.CaptureFixture[str], break_it: Any, message: str
) -> None:
    break_it(good_settings)
    assert main(["check-config", str(write(tmp_path, good_settings))]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("invalid: ")
    assert message in captured.err
    assert captured.out == ""


def test_check_config_of_a_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(tmp_path / "absent.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_serve_without_config_reads_smartgate_config(tmp_path: Path, good_settings: dict[str, Any]) -> None:
    break_listen_grpc(good_settings)
    bad = write(tmp_path, good_settings, "from-env.yaml")
    result = run_serve([], env_config=bad)
    assert result.returncode != 0
    assert f"invalid config {bad}: listen.grpc: must be HOST:PORT" in result.stderr


def test_serve_with_a_bad_config_option_fails_at_start_naming_the_key(
    tmp_path: Path, good_settings: dict[str, Any]
) -> None:
    drop_fhir_base_url(good_settings)
    bad = write(tmp_path, good_settings, "bad.yaml")
    result = run_serve(["--config", str(bad)], env_config=None)
    assert result.returncode != 0
    assert f"invalid config {bad}: fhir.base_url: is required" in result.stderr


def test_serve_config_option_wins_over_smartgate_config(tmp_path: Path, good_settings: dict[str, Any]) -> None:
    from_env = write(tmp_path, {**good_settings, "listen": {"grpc": "nowhere"}}, "env.yaml")
    allow_hmac(good_settings)
    from_option = write(tmp_path, good_settings, "option.yaml")
    result = run_serve(["--config", str(from_option)], env_config=from_env)
    assert result.returncode != 0
    assert f"invalid config {from_option}: issuers[0].algorithms[1]: 'HS256'" in result.stderr
    assert "env.yaml" not in result.stderr


def test_serve_with_no_config_at_all_says_how_to_give_one() -> None:
    result = run_serve([], env_config=None)
    assert result.returncode != 0
    assert "no config: pass --config FILE or set SMARTGATE_CONFIG" in result.stderr
