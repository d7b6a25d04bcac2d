"""RFC 7662 token introspection for opaque access tokens.

The authorization server answers ``{"active": true, "scope": ..., "patient": ..., "exp": ...}``.
``active: false`` is a 401; a failure to get an answer is a 503, never an allow. Answers
are cached no longer than the token's ``exp`` and the configured maximum; inactive answers
briefly, so a flood of bad tokens does not become a flood of introspection calls.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx

from smartgate.config.model import IssuerConfig
from smartgate.core.expiring_cache import ExpiringCache
from smartgate.core.reasons import Reason, Refusal
from smartgate.telemetry import metrics
from smartgate.tokens.context import TokenContext, context_from_claims
from smartgate.tokens.discovery import BodyTooLargeError, read_capped_body

log = logging.getLogger("smartgate.introspection")
INACTIVE_CACHE_SECONDS = 10.0
MAX_ANSWER_BYTES = 64 * 1024  # an RFC 7662 answer is a few hundred bytes; reading stops past this


class Introspector:
    """Introspects opaque tokens against the issuers that have an introspection endpoint."""

    def __init__(
        self,
        issuers: list[IssuerConfig],
        client: httpx.AsyncClient,
        fhir_base_url: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._issuers = [issuer for issuer in issuers if issuer.introspection is not None]
        self._client = client
        self._fhir_base_url = fhir_base_url
        self._clock = clock
        self._cache: ExpiringCache[TokenContext | Refusal] = ExpiringCache(10_000)

    @property
    def enabled(self) -> bool:
        return bool(self._issuers)

    async def introspect(self, token: str) -> TokenContext | Refusal:
        key = hashlib.sha256(token.encode()).hexdigest()  # the cache never holds the token itself
        now = self._clock()
        cached = self._cache.get(key, now)
        if cached is not None:
            metrics.INTROSPECTIONS.labels("cache_hit").inc()
            return cached
        result: TokenContext | Refusal = Refusal(Reason.TOKEN_INACTIVE, "the token is not active")
        for issuer in self._issuers:
            result = await self._ask(issuer, token, now)
            if not (isinstance(result, Refusal) and result.reason is Reason.TOKEN_INACTIVE):
                break
        if isinstance(result, TokenContext):
            assert self._issuers
            max_ttl = min(i.introspection.cache_max_ttl_seconds for i in self._issuers if i.introspection)
            self._cache.put(key, result, min(result.expires_at, now + max_ttl))
        elif result.reason is Reason.TOKEN_INACTIVE:
            self._cache.put(key, result, now + INACTIVE_CACHE_SECONDS)
        return result

    async def _ask(self, issuer: IssuerConfig, token: str, now: float) -> TokenContext | Refusal:
        settings = issuer.introspection
        assert settings is not None
        form = {"token": token, "token_type_hint": "access_token"}
        auth: httpx.Auth | httpx._client.UseClientDefault = httpx.USE_CLIENT_DEFAULT
        if settings.auth_method == "client_secret_post":
            form.update(client_id=settings.client_id, client_secret=settings.client_secret)
        else:  # RFC 6749 section 2.3.1: form-encode both before Basic
            auth = httpx.BasicAuth(quote(settings.client_id, safe=""), quote(settings.client_secret, safe=""))
        try:
            answer: Any = None
            async with self._client.stream(
                "POST",
                settings.endpoint,
                data=form,
                auth=auth,
                timeout=settings.timeout_seconds,
                headers={"accept": "application/json"},
            ) as response:
                if response.status_code == 200:
                    answer = json.loads(await read_capped_body(response, MAX_ANSWER_BYTES))
        except (httpx.HTTPError, ValueError, RecursionError, BodyTooLargeError) as exc:
            log.warning("introspection at %s failed: %s", settings.endpoint, type(exc).__name__)
            answer = None
        if not isinstance(answer, dict) or not isinstance(answer.get("active"), bool):
            metrics.INTROSPECTIONS.labels("error").inc()
            return Refusal(Reason.INTROSPECTION_FAILED, "token introspection failed")
        if not answer["active"]:
            metrics.INTROSPECTIONS.labels("inactive").inc()
            return Refusal(Reason.TOKEN_INACTIVE, "the token is not active")
        metrics.INTROSPECTIONS.labels("active").inc()
        return self._context(issuer, answer, now)

    def _context(self, issuer: IssuerConfig, answer: dict[str, Any], now: float) -> TokenContext | Refusal:
        if answer.get("iss", issuer.issuer) != issuer.issuer:
            return Refusal(Reason.TOKEN_UNKNOWN_ISSUER, "the token was issued by another issuer")
        audience = answer.get("aud")
        if audience is not None:
            audiences = [audience] if isinstance(audience, str) else audience
            if (
                not isinstance(audiences, list)
                or not all(isinstance(value, str) for value in audiences)
                or not set(audiences) & set(issuer.audiences)
            ):
                return Refusal(Reason.TOKEN_AUDIENCE_MISMATCH, "the token is not meant for this server")
        exp = answer.get("exp")
        if exp is None:
            exp = now + (issuer.introspection.cache_max_ttl_seconds if issuer.introspection else 60)
        if isinstance(exp, bool) or not isinstance(exp, int | float) or not math.isfinite(exp):
            return Refusal(Reason.TOKEN_CLAIMS_INVALID, "exp is not a finite number")
        if exp <= now:
            return Refusal(Reason.TOKEN_EXPIRED, "the token has expired")
        claims = {**answer, "exp": exp, "iss": issuer.issuer}
        return context_from_claims(claims, issuer.claims, self._fhir_base_url, issuer.dotted_scopes)
