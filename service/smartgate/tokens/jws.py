"""JWS compact serialization (RFC 7515, section 7.1), read strictly and once per token.

Why not PyJWT's own decoding: strictness, whatever PyJWT release is installed (pyproject admits
``pyjwt>=2.8``). Measured:

- PyJWT 2.12.1 decodes each segment with ``base64.urlsafe_b64decode``, which drops characters outside
  the base64url alphabet (``jwt/utils.py`` ``base64url_decode``). A token with ``!!!!`` inserted in its
  signed payload segment verified, so the bytes that were signed were not the bytes that were read.
  2.15.1 refuses it; this module refuses it on every release ("not three base64url segments").
- PyJWT 2.12.1 and 2.15.1 both accept ``"exp": "99999999999"``, a *string*, because they validate
  ``int(payload["exp"])``. The verifier here takes only JSON numbers.
- PyJWT 2.12.1 raised a bare ``OverflowError``, not an ``InvalidTokenError``, for ``"exp": Infinity``.
  Here the JSON parser refuses ``NaN`` and ``Infinity`` outright (RFC 8259 has neither).

The verifier also needs the claims (``iss`` chooses whose keys to try) before it has a key, so the
token is read here once: three base64url segments (alphabet checked by one compiled regular
expression, no padding, canonical encoding), a JSON object header and a JSON object payload. The
signature itself is checked with PyJWT's algorithm objects (``verify_signature``), for the
algorithm the issuer's allowlist admitted.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

from jwt.algorithms import Algorithm, get_default_algorithms

_SEGMENT = re.compile(rb"[A-Za-z0-9_-]*")
# Asymmetric algorithms only: "none" and the HMAC family are absent, whatever a config says.
_ALGORITHMS: dict[str, Algorithm] = {
    name: algorithm
    for name, algorithm in get_default_algorithms().items()
    if name[:2] in ("RS", "PS", "ES") or name == "EdDSA"
}


class JwsError(ValueError):
    """The token is not a well-formed JWS compact serialization of a JSON claims set."""


@dataclass(frozen=True, slots=True)
class CompactJws:
    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes  # ASCII(BASE64URL(header) || '.' || BASE64URL(payload))
    signature: bytes


def read_compact(token: str) -> CompactJws:
    try:
        raw = token.encode("ascii")
    except UnicodeEncodeError as exc:
        raise JwsError("the token is not ASCII") from exc
    parts = raw.split(b".")
    if len(parts) != 3 or not all(_SEGMENT.fullmatch(part) for part in parts):
        raise JwsError("the token is not three base64url segments")
    header = _json_object(_decode_segment(parts[0]))
    claims = _json_object(_decode_segment(parts[1]))
    return CompactJws(header, claims, parts[0] + b"." + parts[1], _decode_segment(parts[2]))


def verify_signature(jws: CompactJws, algorithm_name: str, key: Any) -> bool:
    """Does ``key`` verify the signature with ``algorithm_name``? False for an algorithm that is not
    asymmetric, and for a key of the wrong type."""
    algorithm = _ALGORITHMS.get(algorithm_name)
    if algorithm is None:
        return False
    try:
        return bool(algorithm.verify(jws.signing_input, key, jws.signature))
    except (TypeError, ValueError, AttributeError):
        return False


def _decode_segment(segment: bytes) -> bytes:
    if len(segment) % 4 == 1:
        raise JwsError("a segment has an impossible length")
    try:
        decoded = base64.urlsafe_b64decode(segment + b"=" * (-len(segment) % 4))
    except binascii.Error as exc:
        raise JwsError("a segment is not base64url") from exc
    if base64.urlsafe_b64encode(decoded).rstrip(b"=") != segment:
        raise JwsError("a segment is not canonically encoded")
    return decoded


def _refuse_non_finite(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")  # Python's parser accepts NaN/Infinity; RFC 8259 does not


def _json_object(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data, parse_constant=_refuse_non_finite)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise JwsError("a segment is not JSON") from exc
    if not isinstance(value, dict):
        raise JwsError("a segment is not a JSON object")
    return value
