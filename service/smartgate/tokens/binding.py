"""The ``cnf`` (confirmation) claim of a token: what key or certificate it is bound to (RFC 7800).

Read from a JWT's claims or an introspection answer alike (RFC 7662 section 2.2 with RFC 9449
section 6.2 and RFC 8705 section 3.2). Only the two members smartgate can check are accepted:
``jkt`` (RFC 9449, the JWK SHA-256 thumbprint of the DPoP key) and ``x5t#S256`` (RFC 8705, the
SHA-256 thumbprint of the client's TLS certificate). Any other member is a binding smartgate cannot
honour, so the token is refused: a bound token is never let through as a plain bearer token.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from smartgate.core.reasons import Reason, Refusal

CHECKED_MEMBERS = frozenset({"jkt", "x5t#S256"})
# base64url of a SHA-256 digest: 43 characters, no padding.
_SHA256_B64URL = re.compile(r"[A-Za-z0-9_-]{43}")


@dataclass(frozen=True, slots=True)
class Confirmation:
    """The key (``jkt``) and/or certificate (``x5t_s256``) the token is bound to."""

    jkt: str | None = None
    x5t_s256: str | None = None


def confirmation_from_claims(claims: Mapping[str, Any]) -> Confirmation | Refusal | None:
    """None for an unbound token; a Refusal for a ``cnf`` that is malformed or names a binding we cannot check."""
    cnf = claims.get("cnf")
    if cnf is None:
        return None
    if not isinstance(cnf, dict):
        return Refusal(Reason.TOKEN_CLAIMS_INVALID, "the cnf claim is not an object")
    if not cnf or not cnf.keys() <= CHECKED_MEMBERS:
        return Refusal(
            Reason.TOKEN_BINDING_UNSUPPORTED, "the token is bound by a confirmation method smartgate cannot check"
        )
    values = {name: cnf.get(name) for name in CHECKED_MEMBERS}
    for name, value in values.items():
        # A member that is present must hold a thumbprint: a null one would leave a "bound" token with no binding.
        if name in cnf and (not isinstance(value, str) or not _SHA256_B64URL.fullmatch(value)):
            return Refusal(Reason.TOKEN_CLAIMS_INVALID, "a cnf member is not a base64url SHA-256 thumbprint")
    return Confirmation(jkt=values["jkt"], x5t_s256=values["x5t#S256"])


def certificate_thumbprint(pem: str) -> str | None:
    """RFC 8705 section 3.1: base64url(SHA-256(DER of the certificate)); None when it is not a PEM certificate."""
    try:
        certificate = x509.load_pem_x509_certificate(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        return None
    digest = hashlib.sha256(certificate.public_bytes(Encoding.DER)).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
