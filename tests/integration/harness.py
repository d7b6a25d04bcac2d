"""Start the real parts for integration tests: an OpenID provider stand-in (discovery + JWKS
over HTTP), the demo FHIR server, `smartgate serve` as a subprocess, and the real Envoy binary."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from smartgate.demo.runner import find_envoy
from smartgate.envoy_config import EnvoySettings, render_yaml


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, seconds: float = 30.0, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before {url} was ready")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {seconds}s")


@dataclass
class SigningKeys:
    rsa_key: rsa.RSAPrivateKey
    ec_key: ec.EllipticCurvePrivateKey

    def jwks(self) -> dict[str, Any]:
        rsa_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.rsa_key.public_key()))
        ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.ec_key.public_key()))
        rsa_jwk.update({"kid": "rsa-1", "use": "sig", "alg": "RS256"})
        ec_jwk.update({"kid": "ec-1", "use": "sig", "alg": "ES256"})
        return {"keys": [rsa_jwk, ec_jwk]}


def new_keys() -> SigningKeys:
    return SigningKeys(rsa.generate_private_key(65537, 2048), ec.generate_private_key(ec.SECP256R1()))


class IdentityProvider:
    """Serves OpenID discovery and a JWKS over real HTTP on loopback."""

    def __init__(self, keys: SigningKeys) -> None:
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}/idp"
        self.jwks_requests = 0
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                if self.path == "/idp/.well-known/openid-configuration":
                    body = {"issuer": provider.issuer, "jwks_uri": f"{provider.issuer}/jwks"}
                elif self.path == "/idp/jwks":
                    provider.jwks_requests += 1
                    body = keys.jwks()
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def start_smartgate(config: dict[str, Any], workdir: Path) -> subprocess.Popen[bytes]:
    config_path = workdir / "smartgate.yaml"
    config_path.write_text(json.dumps(config), encoding="utf-8")  # JSON is YAML
    log = (workdir / "smartgate.stderr").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "smartgate", "serve", "--config", str(config_path)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    wait_for(f"http://{config['listen']['http']}/readyz", process=process)
    return process


def start_envoy(settings: EnvoySettings, workdir: Path, name: str = "envoy") -> subprocess.Popen[bytes]:
    config_path = workdir / f"{name}.yaml"
    config_path.write_text(render_yaml(settings), encoding="utf-8")
    log = (workdir / f"{name}.log").open("wb")
    process = subprocess.Popen(
        [find_envoy(), "-c", str(config_path), "--use-dynamic-base-id", "--log-level", "warn",
         "--concurrency", "1"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    wait_for(f"http://{settings.admin_host}:{settings.admin_port}/ready", process=process)
    return process


@contextlib.contextmanager
def running(process: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
