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
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from smartgate.dev.demo.http_server import DemoHTTPServer
from smartgate.dev.demo.runner import find_envoy
from smartgate.envoy_glue.bootstrap import EnvoySettings, render_yaml


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
    """Serves OpenID discovery and a JWKS over real HTTP on loopback.

    The discovery document carries the OAuth endpoints a SMART configuration is built from.
    ``port`` binds a chosen port (e.g. one smartgate was told about before the IdP came up),
    ``name`` is the issuer's path, ``fail_jwks`` makes the JWKS answer 500, and
    ``introspection`` maps opaque tokens to RFC 7662 answers at ``{issuer}/introspect``.
    """

    def __init__(self, keys: SigningKeys, port: int | None = None, name: str = "idp",
                 introspection: dict[str, dict[str, Any]] | None = None) -> None:
        self.port = port or free_port()
        self.issuer = f"http://127.0.0.1:{self.port}/{name}"
        self.jwks_requests = 0
        self.discovery_requests = 0
        self.discovery_times: list[float] = []  # time.time() of each discovery request
        self.introspection_requests: list[dict[str, str]] = []
        self.fail_jwks = False
        self.discovery: dict[str, Any] = {
            "issuer": self.issuer,
            "jwks_uri": f"{self.issuer}/jwks",
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "introspection_endpoint": f"{self.issuer}/introspect",
            "revocation_endpoint": f"{self.issuer}/revoke",
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code", "client_credentials", "refresh_token"],
            "code_challenge_methods_supported": ["plain", "S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "private_key_jwt"],
            "scopes_supported": ["openid", "fhirUser", "launch/patient", "offline_access"],
        }
        answers = introspection or {}
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def _json(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == f"/{name}/.well-known/openid-configuration":
                    provider.discovery_requests += 1
                    provider.discovery_times.append(time.time())
                    self._json(200, provider.discovery)
                elif self.path == f"/{name}/jwks":
                    provider.jwks_requests += 1
                    if provider.fail_jwks:
                        self._json(500, {"error": "server_error"})
                    else:
                        self._json(200, keys.jwks())
                else:
                    self.send_error(404)

            def do_POST(self) -> None:
                if self.path != f"/{name}/introspect":
                    self.send_error(404)
                    return
                length = int(self.headers.get("content-length") or 0)
                form = dict(parse_qsl(self.rfile.read(length).decode()))
                provider.introspection_requests.append(
                    {**form, "authorization": self.headers.get("authorization", "")})
                self._json(200, answers.get(form.get("token", ""), {"active": False}))

        self.server = DemoHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


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
