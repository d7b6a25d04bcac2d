"""RFC 9449 DPoP proofs (section 4.3 checks, section 7 at a resource server), and the replay cache.

A DPoP-bound access token (``cnf.jkt``) is useless without the private key it is bound to: each request
carries a fresh proof, a JWS signed with that key over the method, the URL, the time and the token's hash.
Every check of section 4.3 is here, in the order that keeps the replay cache clean: a proof that fails
any other check never takes a place in it.

What is deliberately not done: server-provided nonces (``DPoP-Nonce``, section 9). Freshness rests on
``iat`` within ``dpop.iat_window_seconds`` (plus the clock skew) and on the ``jti`` replay cache.

The replay cache is per process: with ``workers: N`` a captured proof can be replayed on each of the
other workers within its window (README "Sender-constrained tokens", SECURITY.md threat 2).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import jwt

from smartgate.config.model import DpopConfig
from smartgate.core.reasons import Reason, Refusal
from smartgate.telemetry import metrics
from smartgate.tokens.jwks import MIN_RSA_BITS, SigningKey
from smartgate.tokens.jws import CompactJws, JwsError, read_compact, verify_signature

PROOF_TYPE = "dpop+jwt"
MAX_PROOF_BYTES = 8192
MAX_JTI_CHARS = 256
# RFC 7517 / RFC 7518 private key members (and "oth" for multi-prime RSA): a proof carries a public key.
PRIVATE_JWK_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
# RFC 7638 section 3.2: the required members of each key type, in lexicographic order.
_THUMBPRINT_MEMBERS: dict[str, tuple[str, ...]] = {
    "RSA": ("e", "kty", "n"),
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
}
_DEFAULT_PORTS = {"http": 80, "https": 443}
_PERCENT = re.compile(r"%(.{0,2})")
_HEX2 = re.compile(r"[0-9A-Fa-f]{2}")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _invalid(message: str) -> Refusal:
    return Refusal(Reason.DPOP_PROOF_INVALID, message)


def b64url_sha256(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode("ascii")


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str | None:
    """RFC 7638 SHA-256 thumbprint (base64url), or None when the key lacks a required member."""
    members = _THUMBPRINT_MEMBERS.get(jwk.get("kty"))  # type: ignore[arg-type]
    if members is None or not all(isinstance(jwk.get(name), str) for name in members):
        return None
    canonical = json.dumps(
        {name: jwk[name] for name in members}, separators=(",", ":"), sort_keys=True, ensure_ascii=False
    )
    return b64url_sha256(canonical.encode("utf-8"))


def access_token_hash(token: str) -> str:
    """``ath``: base64url(SHA-256(ASCII(access token))), RFC 9449 section 4.2."""
    return b64url_sha256(token.encode("ascii"))


def _normalise_percent(text: str) -> str | None:
    """RFC 3986 section 6.2.2: upper-case percent-encodings, decode those of unreserved characters."""
    out: list[str] = []
    position = 0
    for match in _PERCENT.finditer(text):
        if not _HEX2.fullmatch(match.group(1)):
            return None
        out.append(text[position : match.start()])
        char = chr(int(match.group(1), 16))
        out.append(char if char in _UNRESERVED else "%" + match.group(1).upper())
        position = match.end()
    out.append(text[position:])
    return "".join(out)


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4 for an absolute path, segment by segment (linear time)."""
    segments = path.split("/")[1:]
    out: list[str] = []
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == ".":
            if last:
                out.append("")
        elif segment == "..":
            if out:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(segment)
    return "/" + "/".join(out)


def normalise_http_uri(uri: str) -> str | None:
    """The http(s) URI without query and fragment after RFC 3986 syntax- and scheme-based normalisation
    (RFC 9449 section 4.3): lower-case scheme and host, no default port, percent-encodings normalised, dot
    segments removed, an empty path as ``/``. None for anything else (a query, a fragment, user info)."""
    if "?" in uri or "#" in uri or not uri.isascii():
        return None
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme not in _DEFAULT_PORTS or not host or "@" in parts.netloc:
        return None
    if ":" in host:
        host = f"[{host}]"
    authority = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    path = _normalise_percent(parts.path or "/")
    if path is None or not path.startswith("/"):
        return None
    return f"{scheme}://{authority}{_remove_dot_segments(path)}"


class ReplayCache:
    """The ``jti`` of every accepted proof, each kept until no proof carrying it could be accepted again.

    Bounded: when it is full of entries still inside their window, a new proof is refused (503) rather
    than an old entry forgotten, which would let that proof be replayed. Entries expire in insertion order
    (each lives the same time), so forgetting the expired ones is a pop from the front.
    """

    __slots__ = ("_entries", "_lifetime", "_max_entries")

    def __init__(self, max_entries: int, lifetime_seconds: float) -> None:
        self._max_entries = max_entries
        self._lifetime = lifetime_seconds
        self._entries: OrderedDict[bytes, float] = OrderedDict()

    def resize(self, max_entries: int, lifetime_seconds: float) -> None:
        """New bounds for what comes next (a reload keeps the cache, and with it every jti it holds)."""
        self._max_entries = max_entries
        self._lifetime = lifetime_seconds

    def remember(self, key: bytes, now: float) -> bool | None:
        """True for a key not seen within its lifetime (now remembered), False for a replay, None when full."""
        entries = self._entries
        while entries:
            oldest, expires = next(iter(entries.items()))
            if expires > now:
                break
            del entries[oldest]
        if key in entries:
            return False
        if len(entries) >= self._max_entries:
            return None
        entries[key] = now + self._lifetime
        metrics.DPOP_REPLAY_CACHE_ENTRIES.set(len(entries))
        return True

    def __len__(self) -> int:
        return len(self._entries)


class DpopVerifier:
    """Checks one request's DPoP proof against the access token and the key it is bound to."""

    def __init__(
        self,
        config: DpopConfig,
        clock_skew_seconds: float,
        clock: Callable[[], float] = time.time,
        replay_cache: ReplayCache | None = None,
    ) -> None:
        """``replay_cache``: the one the previous configuration used, kept across a reload so that a proof
        accepted just before it cannot be replayed just after it."""
        self.algorithms = config.algorithms
        self._window = config.iat_window_seconds
        self._skew = clock_skew_seconds
        self._clock = clock
        # A proof is accepted until iat + window + skew, and its iat may be up to skew ahead of the clock.
        lifetime = config.iat_window_seconds + 2 * clock_skew_seconds
        if replay_cache is None:
            replay_cache = ReplayCache(config.replay_cache_size, lifetime)
        else:
            replay_cache.resize(config.replay_cache_size, lifetime)
        self.replay_cache = replay_cache

    def check(self, proof: str | None, method: str, url: str, access_token: str, jkt: str) -> Refusal | None:
        """None when ``proof`` is a valid, fresh, unreplayed proof for this request by the key ``jkt``."""
        if proof is None:
            return Refusal(Reason.DPOP_PROOF_MISSING, "the token is DPoP-bound: a DPoP proof header is required")
        if "," in proof:
            return _invalid("more than one DPoP header")  # Envoy joins repeated headers with a comma
        if len(proof) > MAX_PROOF_BYTES:
            return _invalid("the DPoP proof is larger than the limit")
        try:
            jws = read_compact(proof.strip(" "))
        except JwsError:
            return _invalid("the DPoP proof is not a compact JWS")
        key_or_refusal = self._proof_key(jws)
        if isinstance(key_or_refusal, Refusal):
            return key_or_refusal
        jwk, key = key_or_refusal
        if not verify_signature(jws, jws.header["alg"], key):
            return _invalid("the DPoP proof signature does not verify with its jwk")
        now = self._clock()
        refusal = self._check_claims(jws.claims, method, url, access_token, now)
        if refusal is not None:
            return refusal
        thumbprint = jwk_thumbprint(jwk)
        if thumbprint is None or not hmac.compare_digest(thumbprint.encode(), jkt.encode()):
            return Refusal(Reason.DPOP_BINDING_MISMATCH, "the DPoP proof key is not the key the token is bound to")
        return self._remember(thumbprint, jws.claims["jti"], now)

    def _proof_key(self, jws: CompactJws) -> tuple[Mapping[str, Any], Any] | Refusal:
        """typ, alg and a public jwk usable with that alg (section 4.3 checks 4 to 7)."""
        header = jws.header
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() != PROOF_TYPE:
            return _invalid("the DPoP proof typ is not dpop+jwt")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            return _invalid("the DPoP proof algorithm is not allowed")
        if "crit" in header:
            return _invalid("critical header parameters are not supported")
        jwk = header.get("jwk")
        if not isinstance(jwk, dict):
            return _invalid("the DPoP proof has no jwk header")
        if PRIVATE_JWK_MEMBERS & jwk.keys():
            return _invalid("the DPoP proof jwk holds private key material")
        try:
            key = jwt.PyJWK({name: value for name, value in jwk.items() if name != "alg"}).key
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError):
            return _invalid("the DPoP proof jwk is not a usable public key")
        kty, crv = jwk.get("kty"), jwk.get("crv")
        if not SigningKey(None, str(kty), crv if isinstance(crv, str) else None, None, key).can_verify(alg):
            return _invalid("the DPoP proof jwk does not fit its algorithm")
        if kty == "RSA" and getattr(key, "key_size", 0) < MIN_RSA_BITS:
            return _invalid("the DPoP proof RSA key is too short")
        return jwk, key

    def _check_claims(
        self, claims: Mapping[str, Any], method: str, url: str, access_token: str, now: float
    ) -> Refusal | None:
        """jti, htm, htu, iat and ath (section 4.3 checks 8 to 11, and section 7.1's ath)."""
        jti = claims.get("jti")
        if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI_CHARS:
            return _invalid("the DPoP proof jti is missing or too long")
        if claims.get("htm") != method:
            return _invalid("the DPoP proof htm is not the request method")
        htu = claims.get("htu")
        expected = normalise_http_uri(url)
        if not isinstance(htu, str) or expected is None or normalise_http_uri(htu) != expected:
            return _invalid("the DPoP proof htu is not the request URL")
        iat = claims.get("iat")
        if isinstance(iat, bool) or not isinstance(iat, int | float) or not math.isfinite(iat):
            return _invalid("the DPoP proof iat is not a number")
        if iat > now + self._skew or iat < now - self._window - self._skew:
            return _invalid("the DPoP proof iat is outside the accepted window")
        ath = claims.get("ath")
        if not isinstance(ath, str) or not hmac.compare_digest(ath.encode(), access_token_hash(access_token).encode()):
            return _invalid("the DPoP proof ath is not the hash of this access token")
        return None

    def _remember(self, thumbprint: str, jti: str, now: float) -> Refusal | None:
        key = hashlib.sha256(f"{thumbprint}\x00{jti}".encode()).digest()
        seen = self.replay_cache.remember(key, now)
        if seen is None:
            return Refusal(Reason.DPOP_REPLAY_CACHE_FULL, "the DPoP replay cache is full")
        if not seen:
            return Refusal(Reason.DPOP_PROOF_REPLAYED, "the DPoP proof was already used")
        return None
