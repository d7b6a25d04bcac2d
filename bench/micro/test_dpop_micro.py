"""The cost of one DPoP proof check (RFC 9449 section 4.3): parse the JWS, load its public jwk, verify
the ES256 signature, check htm/htu/iat/ath, the RFC 7638 thumbprint against cnf.jkt, and the replay cache.
Each round checks a proof never seen before, so the replay cache grows as in production."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from smartgate.config.model import DpopConfig
from smartgate.tokens.dpop import DpopVerifier, jwk_thumbprint

POOL = 600
URL = "https://fhir.example.org/fhir/Observation"
ACCESS_TOKEN = ".".join(("eyJhbGciOiJFUzI1NiJ9", "eyJjbmYiOnsiamt0IjoiYSJ9fQ", "c2lnbmF0dXJl"))  # a bound token


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _proof(key: ec.EllipticCurvePrivateKey, jwk: dict[str, str], now: float) -> str:
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk}
    claims = {
        "jti": uuid.uuid4().hex,
        "htm": "GET",
        "htu": URL,
        "iat": int(now),
        "ath": _b64(hashlib.sha256(ACCESS_TOKEN.encode()).digest()),
    }
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return f"{signing_input}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def test_one_dpop_proof_check(benchmark: Any) -> None:
    private_key = ec.generate_private_key(ec.SECP256R1())
    numbers = private_key.public_key().public_numbers()
    jwk = {
        "kty": "EC",
        "crv": "P-256",
        "x": _b64(numbers.x.to_bytes(32, "big")),
        "y": _b64(numbers.y.to_bytes(32, "big")),
    }
    jkt = jwk_thumbprint(jwk)
    assert jkt is not None
    now = time.time()
    pool = iter([_proof(private_key, jwk, now) for _ in range(POOL)])
    verifier = DpopVerifier(DpopConfig(), 60)
    results: list[object] = []

    def next_proof() -> tuple[tuple[str], dict[str, Any]]:
        return (next(pool),), {}

    def check(proof: str) -> None:
        results.append(verifier.check(proof, "GET", URL, ACCESS_TOKEN, jkt))

    benchmark.pedantic(check, setup=next_proof, rounds=POOL - 10, iterations=1, warmup_rounds=5)
    assert results and all(result is None for result in results)
