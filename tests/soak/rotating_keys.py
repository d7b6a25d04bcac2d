"""An identity provider's signing keys that rotate during a run.

The IdP stand-in serves ``keys.jwks()`` on every JWKS request, so a key set whose published
keys change over time is all a rotation needs: publish a new key next to the old one, sign new
tokens with it, then withdraw the old one.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.idp import SigningKeys, new_keys


@dataclass
class RotatingKeys(SigningKeys):
    """ES256 keys by kid; ``published`` is what the JWKS answers, ``signing_kid`` signs new tokens."""

    private: dict[str, ec.EllipticCurvePrivateKey] = field(default_factory=dict)
    published: tuple[str, ...] = ()
    signing_kid: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def start(cls, kid: str) -> RotatingKeys:
        base = new_keys()
        keys = cls(base.rsa_key, base.ec_key)
        keys.add(kid)
        keys.publish(kid)
        keys.sign_with(kid)
        return keys

    def add(self, kid: str) -> None:
        with self.lock:
            self.private[kid] = ec.generate_private_key(ec.SECP256R1())

    def publish(self, *kids: str) -> None:
        with self.lock:
            self.published = kids

    def sign_with(self, kid: str) -> None:
        with self.lock:
            self.signing_kid = kid

    def jwks(self) -> dict[str, Any]:
        with self.lock:
            kids = self.published
        entries = []
        for kid in kids:
            entry = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.private[kid].public_key()))
            entry.update({"kid": kid, "use": "sig", "alg": "ES256"})
            entries.append(entry)
        return {"keys": entries}

    def sign(self, claims: dict[str, Any], kid: str | None = None) -> tuple[str, str]:
        """A token signed with ``kid`` (default: the current signing key); returns (token, kid)."""
        with self.lock:
            kid = kid or self.signing_kid
            key = self.private[kid]
        return jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid, "typ": "at+jwt"}), kid
