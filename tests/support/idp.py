"""Signing keys and the identity provider stand-in: OpenID discovery, a JWKS and RFC 7662
introspection over real HTTP on loopback, and tokens signed as an IdP would sign them."""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from smartgate.dev.demo.http_server import DemoHTTPServer

from .ports import free_port


@dataclass
class SigningKeys:
    """An IdP's RSA and EC key pairs, published in its JWKS as kid rsa-1 (RS256) and ec-1 (ES256)."""

    rsa_key: rsa.RSAPrivateKey
    ec_key: ec.EllipticCurvePrivateKey

    def jwks(self) -> dict[str, Any]:
        rsa_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.rsa_key.public_key()))
        ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.ec_key.public_key()))
        rsa_jwk.update({"kid": "rsa-1", "use": "sig", "alg": "RS256"})
        ec_jwk.update({"kid": "ec-1", "use": "sig", "alg": "ES256"})
        return {"keys": [rsa_jwk, ec_jwk]}


def new_keys() -> SigningKeys:
    """Fresh keys (RSA 2048, EC P-256) for one test's IdP."""
    return SigningKeys(rsa.generate_private_key(65537, 2048), ec.generate_private_key(ec.SECP256R1()))


class IdentityProvider:
    """Serves OpenID discovery and a JWKS over real HTTP on loopback.

    The discovery document carries the OAuth endpoints a SMART configuration is built from.
    ``port`` binds a chosen port (e.g. one smartgate was told about before the IdP came up),
    ``name`` is the issuer's path, ``fail_jwks`` makes the JWKS answer 500, and
    ``introspection`` maps opaque tokens to RFC 7662 answers at ``{issuer}/introspect``.
    """

    def __init__(
        self,
        keys: SigningKeys,
        port: int | None = None,
        name: str = "idp",
        introspection: dict[str, dict[str, Any]] | None = None,
    ) -> None:
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
                provider.introspection_requests.append({**form, "authorization": self.headers.get("authorization", "")})
                self._json(200, answers.get(form.get("token", ""), {"active": False}))

        self.server = DemoHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class RotatingKeys(SigningKeys):
    """The key pair above plus keys added later, each under its own kid (all ES256): an IdP rotating."""

    added: dict[str, ec.EllipticCurvePrivateKey] = field(default_factory=dict)

    @classmethod
    def generate(cls) -> RotatingKeys:
        base = new_keys()
        return cls(base.rsa_key, base.ec_key)

    def add(self, kid: str) -> ec.EllipticCurvePrivateKey:
        key = ec.generate_private_key(ec.SECP256R1())
        self.added[kid] = key
        return key

    def jwks(self) -> dict[str, Any]:
        document = super().jwks()
        for kid, key in list(self.added.items()):
            entry = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
            entry.update({"kid": kid, "use": "sig", "alg": "ES256"})
            document["keys"].append(entry)
        return document


def sign(
    keys: SigningKeys, claims: dict[str, Any], alg: str = "ES256", typ: str | None = "at+jwt", kid: str | None = None
) -> str:
    """A JWT over ``claims`` with the EC key (ES*) or the RSA key (otherwise), kid ec-1 / rsa-1 by default."""
    key, default_kid = (keys.ec_key, "ec-1") if alg.startswith("ES") else (keys.rsa_key, "rsa-1")
    headers: dict[str, Any] = {"kid": kid or default_kid}
    if typ is not None:
        headers["typ"] = typ
    return jwt.encode(claims, key, algorithm=alg, headers=headers)


def base_claims(issuer: str, audience: str, lifetime: int = 600) -> dict[str, Any]:
    """iss, aud, iat, exp (``lifetime`` seconds from now) and a fresh jti."""
    now = int(time.time())
    return {"iss": issuer, "aud": audience, "iat": now, "exp": now + lifetime, "jti": uuid.uuid4().hex}
