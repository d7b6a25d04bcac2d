"""Keys, JWKS documents and hand-signed JWTs for the token verification tests.

Tokens are signed here with ``cryptography`` directly rather than with ``jwt.encode``, so a
test can build any header (``alg: none``, ``crit``, embedded ``jwk``...) and sign it with any
key, including combinations PyJWT refuses to produce (HS256 keyed with a PEM, ES384 on P-256).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, cast

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

ALL_ALGORITHMS: tuple[str, ...] = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "256": hashes.SHA256,
    "384": hashes.SHA384,
    "512": hashes.SHA512,
}
_CURVES: dict[str, ec.EllipticCurve] = {
    "P-256": ec.SECP256R1(),
    "P-384": ec.SECP384R1(),
    "P-521": ec.SECP521R1(),
}
_CURVE_FOR_ALG = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}

# A claim value that ``make_claims`` removes from the defaults.
DROP: Any = object()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_json(value: Any) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode("utf-8"))


@functools.cache
def rsa_private_key(name: str = "default") -> rsa.RSAPrivateKey:
    """A 2048-bit RSA key, generated once per name and process."""
    del name  # only distinguishes cache entries
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def ec_private_key(curve: str, name: str = "default") -> ec.EllipticCurvePrivateKey:
    del name
    return ec.generate_private_key(_CURVES[curve])


@functools.cache
def ed25519_private_key(name: str = "default") -> ed25519.Ed25519PrivateKey:
    del name
    return ed25519.Ed25519PrivateKey.generate()


@functools.cache
def ed448_private_key(name: str = "default") -> ed448.Ed448PrivateKey:
    del name
    return ed448.Ed448PrivateKey.generate()


@dataclass(frozen=True)
class KeyPair:
    """A private signing key, the JWT ``alg`` it is meant for, and its ``kid``."""

    alg: str
    kid: str
    private_key: Any

    @property
    def public_key(self) -> Any:
        return self.private_key.public_key()

    def public_jwk(self, *, with_alg: bool = True, **extra: Any) -> dict[str, Any]:
        """The public JWK, with kid, use=sig and (by default) alg; ``extra`` overrides any member."""
        jwk = public_jwk_of(self.public_key)
        jwk.update({"kid": self.kid, "use": "sig"})
        if with_alg:
            jwk["alg"] = self.alg
        jwk.update(extra)
        return {name: value for name, value in jwk.items() if value is not DROP}

    def private_jwk(self, **extra: Any) -> dict[str, Any]:
        """The full private JWK (with ``d``): something a JWKS must never contain."""
        jwk = _to_jwk(self.private_key)
        jwk.update({"kid": self.kid, "use": "sig", "alg": self.alg})
        jwk.update(extra)
        return jwk

    def public_pem(self) -> bytes:
        pem: bytes = self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return pem


def _to_jwk(key: Any) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return dict(RSAAlgorithm.to_jwk(key, as_dict=True))
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return dict(ECAlgorithm.to_jwk(key, as_dict=True))
    return dict(OKPAlgorithm.to_jwk(key, as_dict=True))


def public_jwk_of(public_key: Any) -> dict[str, Any]:
    jwk = _to_jwk(public_key)
    assert "d" not in jwk
    return jwk


def key_for(alg: str, name: str = "default", kid: str | None = None) -> KeyPair:
    """A key pair for ``alg``; the same ``name`` always gives the same private key."""
    if alg.startswith(("RS", "PS")):
        private_key: Any = rsa_private_key(name)
    elif alg in _CURVE_FOR_ALG:
        private_key = ec_private_key(_CURVE_FOR_ALG[alg], name)
    elif alg == "EdDSA":
        private_key = ed25519_private_key(name)
    else:
        raise ValueError(f"no key type for {alg}")
    return KeyPair(alg, kid or f"{name}-{alg.lower()}", private_key)


def make_jwks(*keys: KeyPair | dict[str, Any]) -> dict[str, Any]:
    """A JWKS document of the public halves of ``keys`` (dicts are taken as JWKs verbatim)."""
    return {"keys": [key if isinstance(key, dict) else key.public_jwk() for key in keys]}


def signature(alg: str, key: Any, signing_input: bytes) -> bytes:
    """The JWS signature of ``signing_input`` with ``key`` for ``alg``, whatever the combination."""
    if alg.lower() == "none":
        return b""
    if alg.startswith("HS"):
        secret = key if isinstance(key, bytes) else str(key).encode("utf-8")
        return hmac.new(secret, signing_input, getattr(hashlib, f"sha{alg[2:]}")).digest()
    # ``key`` is whatever the test passes; the casts say which key type each family signs with.
    if alg.startswith("RS"):
        return cast(rsa.RSAPrivateKey, key).sign(signing_input, padding.PKCS1v15(), _HASHES[alg[2:]]())
    if alg.startswith("PS"):
        digest = _HASHES[alg[2:]]()
        pss = padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
        return cast(rsa.RSAPrivateKey, key).sign(signing_input, pss, digest)
    if alg.startswith("ES"):
        # The curve is the key's own: this deliberately allows "ES384 with a P-256 key".
        ec_key = cast(ec.EllipticCurvePrivateKey, key)
        r, s = decode_dss_signature(ec_key.sign(signing_input, ec.ECDSA(_HASHES[alg[2:]]())))
        size = (ec_key.curve.key_size + 7) // 8
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    if alg == "EdDSA":
        return cast(ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey, key).sign(signing_input)
    raise ValueError(f"cannot sign with {alg}")


def sign_raw(header: dict[str, Any], payload: bytes, key: Any, sign_alg: str | None = None) -> str:
    """A compact JWS over an arbitrary payload (bytes, not necessarily JSON)."""
    signing_input = f"{b64url_json(header)}.{b64url(payload)}".encode("ascii")
    alg = sign_alg or str(header.get("alg"))
    return f"{signing_input.decode('ascii')}.{b64url(signature(alg, key, signing_input))}"


def sign_token(header: dict[str, Any], claims: Any, key: Any, sign_alg: str | None = None) -> str:
    """A compact JWS of ``claims`` (JSON) under ``header``, signed with ``key``.

    ``sign_alg`` is the algorithm actually used to compute the signature; it defaults to
    ``header["alg"]``, and differs from it only when a test lies in the header.
    """
    return sign_raw(header, json.dumps(claims, separators=(",", ":")).encode("utf-8"), key, sign_alg)


def make_claims(issuer: str, audience: Any, now: float | None = None, **overrides: Any) -> dict[str, Any]:
    """RFC 9068 style access-token claims; pass ``name=DROP`` to leave a claim out."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": "user-1",
        "client_id": "test-app",
        "scope": "user/Observation.rs",
        "iat": issued,
        "exp": issued + 600,
        "jti": uuid.uuid4().hex,
    }
    claims.update(overrides)
    return {name: value for name, value in claims.items() if value is not DROP}


def make_token(
    key: KeyPair,
    claims: dict[str, Any],
    *,
    signing_key: Any = None,
    sign_alg: str | None = None,
    **header_overrides: Any,
) -> str:
    """Sign ``claims`` as an at+jwt with ``key``'s alg and kid; ``name=DROP`` removes a header."""
    header: dict[str, Any] = {"alg": key.alg, "typ": "at+jwt", "kid": key.kid}
    header.update(header_overrides)
    header = {name: value for name, value in header.items() if value is not DROP}
    return sign_token(header, claims, key.private_key if signing_key is None else signing_key, sign_alg or key.alg)


class ManualClock:
    """A clock that only moves when told to; usable wherever smartgate takes ``clock=``."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeIdp:
    """An identity provider behind ``httpx.MockTransport``: serves JSON documents by URL.

    ``documents`` maps a URL to a JSON value (served 200) or to an ``httpx.Response``;
    other URLs answer 404. ``down`` makes every request fail with a connection error,
    ``delay`` makes every answer wait (so concurrent fetches overlap). ``requests`` records
    every URL asked for, in order.
    """

    def __init__(self, documents: dict[str, Any] | None = None) -> None:
        self.documents: dict[str, Any] = dict(documents or {})
        self.requests: list[str] = []
        self.down = False
        self.delay = 0.0
        self.client = httpx.AsyncClient(transport=httpx.MockTransport(self.handler))

    async def handler(self, request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        self.requests.append(url)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        document = self.documents.get(url)
        if document is None:
            return httpx.Response(404, json={"error": "not found"})
        if isinstance(document, httpx.Response):
            return document
        return httpx.Response(200, json=document)

    def count(self, url: str) -> int:
        return self.requests.count(url)

    async def aclose(self) -> None:
        await self.client.aclose()
