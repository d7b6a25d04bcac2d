"""One issuer's signing keys: fetched asynchronously, cached, refreshed at a bounded rate.

- Keys come from ``jwks_uri``, from ``{issuer}/.well-known/openid-configuration`` when that
  is absent, or from a local ``jwks_file``. Both documents are fetched through
  ``tokens/discovery.py``, which streams them and stops reading at a size cap.
- An unknown ``kid`` triggers at most one refresh per ``min_refresh_interval_seconds``,
  so a stream of tokens with random kids cannot turn into a stream of requests to the IdP.
- Concurrent refreshes share one fetch. When the IdP is unreachable the last good key set
  stays in use.
- Symmetric (``oct``) keys and keys not meant for signatures are never loaded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt

from smartgate.config.model import IssuerConfig, JwksPolicy
from smartgate.telemetry import metrics
from smartgate.tokens.discovery import fetch_discovery, fetch_json_object

log = logging.getLogger("smartgate.jwks")

MAX_KEYS = 100
MAX_JWKS_BYTES = 512 * 1024
MIN_RSA_BITS = 2048
_EC_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_OKP_CURVES = frozenset({"Ed25519", "Ed448"})


class JwksError(Exception):
    """The key set could not be fetched or parsed."""


@dataclass(frozen=True)
class SigningKey:
    kid: str | None
    kty: str
    crv: str | None
    alg: str | None
    key: Any  # a cryptography public key object

    def can_verify(self, alg: str) -> bool:
        if self.alg is not None and self.alg != alg:
            return False
        if alg.startswith(("RS", "PS")):
            return self.kty == "RSA"
        if alg in _EC_CURVES:
            return self.kty == "EC" and self.crv == _EC_CURVES[alg]
        if alg == "EdDSA":
            return self.kty == "OKP" and self.crv in _OKP_CURVES
        return False


@dataclass(frozen=True)
class KeySet:
    keys: tuple[SigningKey, ...]
    by_kid: dict[str, tuple[SigningKey, ...]] = field(default_factory=dict)

    def candidates(self, kid: str | None, alg: str) -> tuple[SigningKey, ...]:
        pool = self.by_kid.get(kid, ()) if kid is not None else self.keys
        return tuple(key for key in pool if key.can_verify(alg))


def parse_jwks(document: Any) -> KeySet:
    """Build a KeySet from a JWKS document, skipping keys that are unusable or unsafe."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksError("not a JWKS document (no 'keys' list)")
    keys: list[SigningKey] = []
    for entry in document["keys"][:MAX_KEYS]:
        if not isinstance(entry, dict) or entry.get("kty") not in ("RSA", "EC", "OKP"):
            continue
        if entry.get("use", "sig") != "sig" or "d" in entry:  # never a private key
            continue
        key_ops = entry.get("key_ops")
        if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
            continue
        kid = entry.get("kid")
        alg = entry.get("alg")
        if (kid is not None and not isinstance(kid, str)) or (alg is not None and not isinstance(alg, str)):
            continue
        try:
            public_key = jwt.PyJWK(entry).key
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError) as exc:
            log.warning("skipping an unusable JWK (kid=%s): %s", kid, exc)
            continue
        if entry["kty"] == "RSA" and getattr(public_key, "key_size", 0) < MIN_RSA_BITS:
            log.warning("skipping an RSA JWK shorter than %d bits (kid=%s)", MIN_RSA_BITS, kid)
            continue
        keys.append(SigningKey(kid, entry["kty"], entry.get("crv"), alg, public_key))
    by_kid: dict[str, tuple[SigningKey, ...]] = {}
    for key in keys:
        if key.kid is not None:
            by_kid[key.kid] = (*by_kid.get(key.kid, ()), key)
    return KeySet(tuple(keys), by_kid)


class JwksCache:
    """The cached key set of one issuer."""

    def __init__(
        self,
        issuer: IssuerConfig,
        policy: JwksPolicy,
        client: httpx.AsyncClient,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.issuer = issuer
        self._policy = policy
        self._client = client
        self._clock = clock
        self._jwks_uri = issuer.jwks_uri
        self._key_set: KeySet | None = None
        self._last_attempt: float | None = None
        self._inflight: asyncio.Future[bool] | None = None
        self.last_success_wall_time: float | None = None

    @property
    def key_set(self) -> KeySet | None:
        return self._key_set

    @property
    def ready(self) -> bool:
        return self._key_set is not None

    async def candidates(self, kid: str | None, alg: str) -> tuple[SigningKey, ...] | None:
        """Keys that may verify a token with this kid and alg; None when no key set was ever loaded."""
        key_set = self._key_set
        found = key_set.candidates(kid, alg) if key_set is not None else ()
        if not found and self._may_refresh():
            await self.refresh()
            key_set = self._key_set
            found = key_set.candidates(kid, alg) if key_set is not None else ()
        if key_set is None:
            return None
        return found

    def _may_refresh(self) -> bool:
        if self._inflight is not None:
            return True
        if self._last_attempt is None:
            return True
        return self._clock() - self._last_attempt >= self._policy.min_refresh_interval_seconds

    async def refresh(self) -> bool:
        """Fetch the key set now (sharing any fetch already under way); True on success."""
        if self._inflight is not None:
            return await asyncio.shield(self._inflight)
        inflight: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._inflight = inflight
        self._last_attempt = self._clock()
        ok = False
        try:
            self._key_set = await self._load()
            self.last_success_wall_time = time.time()
            ok = True
            metrics.JWKS_FETCHES.labels(self.issuer.issuer, "success").inc()
        except Exception as exc:  # keep the last good set; the caller decides what a failure means
            log.warning("JWKS refresh failed for issuer %s: %s", self.issuer.issuer, exc)
            metrics.JWKS_FETCHES.labels(self.issuer.issuer, "failure").inc()
        finally:
            self._inflight = None
            inflight.set_result(ok)
        return ok

    async def _load(self) -> KeySet:
        if self.issuer.jwks_file:
            text = await asyncio.to_thread(Path(self.issuer.jwks_file).read_text, encoding="utf-8")
            document = json.loads(text)
            return parse_jwks(document)
        if self._jwks_uri is None:
            self._jwks_uri = await self._discover()
        return parse_jwks(
            await fetch_json_object(
                self._client, self._jwks_uri, timeout=self._policy.fetch_timeout_seconds, max_bytes=MAX_JWKS_BYTES
            )
        )

    async def _discover(self) -> str:
        document = await fetch_discovery(self._client, self.issuer.issuer, timeout=self._policy.fetch_timeout_seconds)
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
            raise JwksError("the discovery document has no usable jwks_uri")
        return jwks_uri
