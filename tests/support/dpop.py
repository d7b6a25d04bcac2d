"""DPoP proofs (RFC 9449) and client certificates for sender-constrained token tests, built here with
``cryptography`` directly, independently of smartgate's own code, so a test can build any defect."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

# A value that removes a member from the defaults.
DROP: Any = object()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_json(value: Any) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode("utf-8"))


def _int_b64(value: int, size: int) -> str:
    return b64url(value.to_bytes(size, "big"))


def access_token_hash(token: str) -> str:
    return b64url(hashlib.sha256(token.encode("ascii")).digest())


@dataclass
class DpopKey:
    """A client's P-256 DPoP key: its public JWK, RFC 7638 thumbprint, and proofs signed with it."""

    private_key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))

    @property
    def public_jwk(self) -> dict[str, Any]:
        numbers = self.private_key.public_key().public_numbers()
        return {"kty": "EC", "crv": "P-256", "x": _int_b64(numbers.x, 32), "y": _int_b64(numbers.y, 32)}

    @property
    def private_jwk(self) -> dict[str, Any]:
        private_value = self.private_key.private_numbers().private_value
        return {**self.public_jwk, "d": _int_b64(private_value, 32)}

    @property
    def thumbprint(self) -> str:
        """RFC 7638: SHA-256 over the required members, lexicographic order, no whitespace."""
        jwk = self.public_jwk
        canonical = f'{{"crv":"{jwk["crv"]}","kty":"EC","x":"{jwk["x"]}","y":"{jwk["y"]}"}}'
        return b64url(hashlib.sha256(canonical.encode("ascii")).digest())

    def sign(self, signing_input: bytes) -> bytes:
        r, s = decode_dss_signature(self.private_key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def proof(
        self,
        method: str,
        url: str,
        token: str | None,
        *,
        iat: float | None = None,
        header: dict[str, Any] | None = None,
        claims: dict[str, Any] | None = None,
        signature: bytes | None = None,
        hmac_key: bytes | None = None,
    ) -> str:
        """A proof for ``method`` ``url`` and ``token`` (``ath``); ``header``/``claims`` override members
        (``DROP`` removes one); ``signature`` replaces the signature, ``hmac_key`` signs with HMAC-SHA256."""
        head: dict[str, Any] = {"typ": "dpop+jwt", "alg": "ES256", "jwk": self.public_jwk}
        head.update(header or {})
        body: dict[str, Any] = {
            "jti": uuid.uuid4().hex,
            "htm": method,
            "htu": url,
            "iat": int(time.time() if iat is None else iat),
        }
        if token is not None:
            body["ath"] = access_token_hash(token)
        body.update(claims or {})
        head = {name: value for name, value in head.items() if value is not DROP}
        body = {name: value for name, value in body.items() if value is not DROP}
        signing_input = f"{_b64url_json(head)}.{_b64url_json(body)}".encode("ascii")
        if signature is None:
            signature = (
                hmac.new(hmac_key, signing_input, hashlib.sha256).digest()
                if hmac_key is not None
                else self.sign(signing_input)
            )
        return f"{signing_input.decode('ascii')}.{b64url(signature)}"


@dataclass
class ClientCertificate:
    """A self-signed client certificate (PEM) and its RFC 8705 ``x5t#S256`` thumbprint."""

    common_name: str = "client"
    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))

    def __post_init__(self) -> None:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.common_name)])
        now = datetime.datetime.now(datetime.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(self.key, hashes.SHA256())
        )

    @property
    def pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @property
    def thumbprint(self) -> str:
        return b64url(hashlib.sha256(self.certificate.public_bytes(serialization.Encoding.DER)).digest())
