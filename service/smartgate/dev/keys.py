"""Development signing keys and tokens for ``make run`` and the tests.

NOT FOR PRODUCTION: the private key sits in a plain file next to the JWKS. Production
tokens come from your identity provider.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

DEV_ISSUER = "https://dev-issuer.smartgate.invalid"
_PRIVATE_KEY_FILE = "dev-signing-key.pem"
_JWKS_FILE = "dev-jwks.json"
_KID = "smartgate-dev-es256"


def ensure_dev_keys(directory: Path) -> Path:
    """Create an ES256 development key pair in ``directory`` unless one exists; return the JWKS path."""
    directory.mkdir(parents=True, exist_ok=True)
    key_path = directory / _PRIVATE_KEY_FILE
    jwks_path = directory / _JWKS_FILE
    if not key_path.exists():
        private_key = ec.generate_private_key(ec.SECP256R1())
        key_path.write_bytes(
            private_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        key_path.chmod(0o600)
    loaded = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path} is not an EC private key")
    public_jwk: dict[str, Any] = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(loaded.public_key()))
    public_jwk.update({"kid": _KID, "alg": "ES256", "use": "sig"})
    jwks_path.write_text(json.dumps({"keys": [public_jwk]}, indent=2), encoding="utf-8")
    return jwks_path


def dev_token(
    directory: Path,
    audience: str,
    scope: str,
    patient: str | None = None,
    fhir_user: str | None = None,
    client_id: str = "smartgate-dev-client",
    lifetime_seconds: int = 3600,
    issuer: str = DEV_ISSUER,
) -> str:
    """Sign an RFC 9068 style access token with the development key."""
    ensure_dev_keys(directory)
    private_key = serialization.load_pem_private_key((directory / _PRIVATE_KEY_FILE).read_bytes(), password=None)
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": fhir_user or "dev-user",
        "client_id": client_id,
        "scope": scope,
        "iat": now,
        "exp": now + lifetime_seconds,
        "jti": uuid.uuid4().hex,
    }
    if patient is not None:
        claims["patient"] = patient
    if fhir_user is not None:
        claims["fhirUser"] = fhir_user
    return jwt.encode(claims, private_key, algorithm="ES256", headers={"kid": _KID, "typ": "at+jwt"})  # type: ignore[arg-type]
