"""Drive a URL with wrk and the bench Lua script; return its figures as a dict."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from processes import BENCH_DIR

LUA_SCRIPT = BENCH_DIR / "wrk_bench.lua"


@dataclass(frozen=True)
class Load:
    name: str
    connections: int
    threads: int


LATENCY = Load("c1", 1, 1)
THROUGHPUT = Load("c16", 16, 2)


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise RuntimeError("wrk is not installed (make bench-deps installs the Debian package)")
    return found


def wrk_command(
    base_url: str,
    load: Load,
    seconds: float,
    requests_file: Path,
    token: str = "",
    tokens_file: Path | None = None,
    token_offset: int = 0,
    timeout_seconds: float = 5,
) -> tuple[list[str], dict[str, str]]:
    env = {
        **os.environ,
        "BENCH_REQUESTS": str(requests_file),
        "BENCH_TOKEN": token,
        "BENCH_TOKENS": str(tokens_file) if tokens_file else "",
        "BENCH_THREADS": str(load.threads),
        "BENCH_TOKEN_OFFSET": str(token_offset),
    }
    command = [
        wrk_binary(),
        f"-c{load.connections}",
        f"-t{load.threads}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={timeout_seconds}s",
        "--latency",
        "-s",
        str(LUA_SCRIPT),
        base_url,
    ]
    return command, env


def parse_output(stdout: str) -> dict[str, Any]:
    """The JSON line the Lua ``done`` prints, plus requests/s and the socket error total."""
    line = next((x for x in reversed(stdout.splitlines()) if x.startswith("{")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no figures: {stdout[-500:]}")
    figures: dict[str, Any] = json.loads(line)
    seconds_run = figures["duration_us"] / 1e6
    figures["rps"] = figures["requests"] / seconds_run if seconds_run > 0 else 0.0
    figures["socket_errors"] = (
        figures["connect_errors"] + figures["read_errors"] + figures["write_errors"] + figures["timeouts"]
    )
    return figures


def run_wrk(
    base_url: str,
    load: Load,
    seconds: float,
    requests_file: Path,
    token: str = "",
    tokens_file: Path | None = None,
    token_offset: int = 0,
) -> dict[str, Any]:
    command, env = wrk_command(base_url, load, seconds, requests_file, token, tokens_file, token_offset)
    finished = subprocess.run(  # noqa: S603 - wrk with arguments we built
        command,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=seconds + 120,
    )
    if finished.returncode != 0:
        raise RuntimeError(f"wrk failed ({finished.returncode}): {finished.stderr.strip()[-500:]}")
    return parse_output(finished.stdout)


def write_requests(path: Path, lines: list[tuple[str, str]]) -> Path:
    """Request plan for the Lua script: (path, auth) with auth in pool | fixed | none | bad."""
    path.write_text("".join(f"{p}\t{auth}\n" for p, auth in lines), encoding="utf-8")
    return path
