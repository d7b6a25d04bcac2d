"""Verify a JWT access token against its issuer's keys and turn it into a TokenContext.

RFC 8725 / RFC 9068 rules: an explicit algorithm allowlist per issuer (never ``none``,
never HMAC); ``iss`` must exactly match a configured issuer, and only that issuer's
keys are tried; ``jku``, ``x5u`` and embedded ``jwk`` headers are ignored; ``crit``
is refused; ``exp`` is required, ``nbf`` and ``iat`` are honoured with the configured skew.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from smartgate.config.model import IssuerConfig, TokenPolicy
from smartgate.core.expiring_cache import ExpiringCache
from smartgate.core.reasons import Reason, Refusal
from smartgate.telemetry import metrics
from smartgate.tokens.context import TokenContext, context_from_claims
from smartgate.tokens.introspection import Introspector
from smartgate.tokens.jwks import JwksCache
from smartgate.tokens.jws import JwsError, read_compact, verify_signature

_REQUIRED_CLAIMS = ("exp", "iss", "aud")
_MALFORMED = Refusal(Reason.TOKEN_MALFORMED, "the token is malformed")
_NOT_YET_VALID = Refusal(Reason.TOKEN_NOT_YET_VALID, "the token is not valid yet")
_AUDIENCE_MISMATCH = Refusal(Reason.TOKEN_AUDIENCE_MISMATCH, "the token is not meant for this FHIR server")


class TokenVerifier:
    """Verifies tokens of the configured issuers, with a bounded cache of verified tokens."""

    def __init__(
        self,
        issuers: Mapping[str, tuple[IssuerConfig, JwksCache]],
        policy: TokenPolicy,
        fhir_base_url: str,
        clock: Callable[[], float] = time.time,
        introspector: Introspector | None = None,
    ) -> None:
        self._introspector = introspector
        self._issuers = issuers
        self._policy = policy
        self._fhir_base_url = fhir_base_url
        self._clock = clock
        self._cache: ExpiringCache[TokenContext] = ExpiringCache(policy.cache_size)
        self.cache_hits = 0
        self.cache_misses = 0

    async def verify(self, token: str) -> TokenContext | Refusal:
        now = self._clock()
        cached = self._cache.get(token, now)
        if cached is not None:
            self.cache_hits += 1
            metrics.TOKEN_CACHE_BY_RESULT["hit"].inc()
            return cached
        self.cache_misses += 1
        metrics.TOKEN_CACHE_BY_RESULT["miss"].inc()
        if token.count(".") != 2:
            if self._introspector is not None and self._introspector.enabled:
                return await self._introspector.introspect(token)
            return Refusal(Reason.TOKEN_MALFORMED, "the token is not a signed JWT (JWS compact form)")
        try:
            result = await self._verify_uncached(token, now)
        except Exception:  # any surprise in parsing is a malformed token, never an allow
            return _MALFORMED
        if isinstance(result, TokenContext):
            deadline = min(
                result.expires_at + self._policy.clock_skew_seconds, now + self._policy.cache_max_ttl_seconds
            )
            self._cache.put(token, result, deadline)
        return result

    async def _verify_uncached(self, token: str, now: float) -> TokenContext | Refusal:
        try:
            jws = read_compact(token)
        except JwsError:
            return Refusal(Reason.TOKEN_MALFORMED, "the token is not a well-formed JWT")
        header = jws.header
        issuer_name = jws.claims.get("iss")
        entry = self._issuers.get(issuer_name) if isinstance(issuer_name, str) else None
        if entry is None:
            return Refusal(Reason.TOKEN_UNKNOWN_ISSUER, "the token issuer is not trusted")
        issuer, jwks = entry
        header_refusal = self._check_header(header, issuer)
        if header_refusal is not None:
            return header_refusal
        alg: str = header["alg"]
        kid = header.get("kid")
        keys = await jwks.candidates(kid, alg)
        if keys is None:
            return Refusal(Reason.JWKS_UNAVAILABLE, "the issuer's signing keys are unavailable")
        if not keys:
            return Refusal(Reason.TOKEN_UNKNOWN_KEY, "no key of the issuer matches the token")
        if not any(verify_signature(jws, alg, key.key) for key in keys):
            return Refusal(Reason.TOKEN_BAD_SIGNATURE, "the token signature does not verify")
        claims_refusal = self._check_claims(jws.claims, issuer, now)
        if claims_refusal is not None:
            return claims_refusal
        return context_from_claims(jws.claims, issuer.claims, self._fhir_base_url, issuer.dotted_scopes)

    def _check_header(self, header: Mapping[str, Any], issuer: IssuerConfig) -> Refusal | None:
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in issuer.algorithms:
            return Refusal(Reason.TOKEN_ALGORITHM_NOT_ALLOWED, "the token algorithm is not allowed")
        if "crit" in header:
            return Refusal(Reason.TOKEN_MALFORMED, "critical header parameters are not supported")
        if "kid" in header and not isinstance(header["kid"], str):
            return Refusal(Reason.TOKEN_MALFORMED, "the kid header must be a string")
        typ = header.get("typ")
        if typ is None:
            if not issuer.allow_missing_token_type:
                return Refusal(Reason.TOKEN_TYPE_NOT_ALLOWED, "the token has no typ header")
        elif not isinstance(typ, str) or typ.lower() not in issuer.token_types:
            return Refusal(Reason.TOKEN_TYPE_NOT_ALLOWED, "the token typ is not an access token type")
        return None

    def _check_claims(self, claims: Mapping[str, Any], issuer: IssuerConfig, now: float) -> Refusal | None:
        """After the signature: the required claims, ``iss`` exactly, ``aud`` containing one of the
        issuer's audiences, and the times."""
        if any(claims.get(name) in (None, "", []) for name in _REQUIRED_CLAIMS):
            return Refusal(Reason.TOKEN_MALFORMED, "the token lacks a required claim")
        if claims["iss"] != issuer.issuer:
            return Refusal(Reason.TOKEN_UNKNOWN_ISSUER, "the token issuer is not trusted")
        audience = claims["aud"]
        audiences = [audience] if isinstance(audience, str) else audience
        if not isinstance(audiences, list) or not all(isinstance(value, str) for value in audiences):
            return _AUDIENCE_MISMATCH
        if not any(value in issuer.audiences for value in audiences):
            return _AUDIENCE_MISMATCH
        return self._check_times(claims, now)

    def _check_times(self, claims: Mapping[str, Any], now: float) -> Refusal | None:
        """exp, nbf and iat against our own clock, with the configured skew."""
        skew = self._policy.clock_skew_seconds
        for name in ("exp", "nbf", "iat"):
            value = claims.get(name)
            if value is None and name != "exp":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                return _MALFORMED  # NaN/Infinity never get here: jws.py refuses them
        if claims["exp"] <= now - skew:
            return Refusal(Reason.TOKEN_EXPIRED, "the token has expired")
        if "nbf" in claims and claims["nbf"] > now + skew:
            return _NOT_YET_VALID
        if "iat" in claims and claims["iat"] > now + skew:
            return _NOT_YET_VALID
        return None
