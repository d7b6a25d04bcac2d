"""Signing keys, their JWKS, and pools of distinct signed SMART access tokens for the benchmark."""

from __future__ import annotations

import json
import os
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

ISSUER = "https://bench-issuer.smartgate.invalid"
PATIENT = "123"
SCOPE = "launch/patient patient/*.rs"
KIDS = {"RS256": "bench-rsa", "ES256": "bench-ec"}


@dataclass(frozen=True)
class BenchKeys:
    rsa_pem: bytes
    ec_pem: bytes

    def pem(self, alg: str) -> bytes:
        return self.rsa_pem if alg == "RS256" else self.ec_pem

    def jwks(self) -> dict[str, Any]:
        keys = []
        for alg in ("RS256", "ES256"):
            private = serialization.load_pem_private_key(self.pem(alg), password=None)
            algorithm = jwt.algorithms.RSAAlgorithm if alg == "RS256" else jwt.algorithms.ECAlgorithm
            jwk = json.loads(algorithm.to_jwk(private.public_key()))  # type: ignore[arg-type]
            jwk.update({"kid": KIDS[alg], "use": "sig", "alg": alg})
            keys.append(jwk)
        return {"keys": keys}


def new_keys() -> BenchKeys:
    pkcs8 = serialization.PrivateFormat.PKCS8
    rsa_key = rsa.generate_private_key(65537, 2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    return BenchKeys(
        rsa_key.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption()),
        ec_key.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption()),
    )


def claims(audience: str, lifetime_seconds: int = 3600, patient: str = PATIENT) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": ISSUER,
        "aud": audience,
        "sub": "bench-user",
        "client_id": "bench-client",
        "scope": SCOPE,
        "patient": patient,
        "iat": now,
        "exp": now + lifetime_seconds,
        "jti": uuid.uuid4().hex,  # every token distinct
    }


def sign(keys: BenchKeys, alg: str, audience: str, **overrides: Any) -> str:
    payload = {**claims(audience), **overrides}
    headers = {"kid": KIDS[alg], "typ": "at+jwt"}
    return jwt.encode(payload, keys.pem(alg), algorithm=alg, headers=headers)


def _sign_chunk(pem: bytes, alg: str, audience: str, count: int) -> list[str]:
    key = serialization.load_pem_private_key(pem, password=None)
    headers = {"kid": KIDS[alg], "typ": "at+jwt"}
    return [jwt.encode(claims(audience), key, algorithm=alg, headers=headers) for _ in range(count)]  # type: ignore[arg-type]


def token_pool(keys: BenchKeys, alg: str, audience: str, count: int) -> list[str]:
    """``count`` distinct tokens, signed in a pool of worker processes (one per core)."""
    workers = max(1, min(os.cpu_count() or 1, 8))
    chunk = -(-count // workers)
    sizes = [min(chunk, count - i * chunk) for i in range(workers) if count - i * chunk > 0]
    if len(sizes) == 1 or count < 2000:
        return _sign_chunk(keys.pem(alg), alg, audience, count)
    with ProcessPoolExecutor(max_workers=len(sizes)) as pool:
        parts = pool.map(_sign_chunk, [keys.pem(alg)] * len(sizes), [alg] * len(sizes), [audience] * len(sizes), sizes)
        return [token for part in parts for token in part]


def write_pool(tokens: list[str], path: Path) -> Path:
    path.write_text("\n".join(tokens) + "\n", encoding="ascii")
    return path
