"""``/.well-known/smart-configuration`` (SMART App Launch 2.x, section 2.0.x "SMART configuration").

Built from the issuer's OpenID discovery document plus the configured capabilities. The
discovery document is fetched through ``tokens/discovery.py`` (streamed up to a size cap, a JSON
object naming this issuer), cached, and kept while the IdP is unreachable; if it was never
fetched the endpoint answers 503 rather than an incomplete document.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import httpx

from smartgate.config.model import SmartConfigurationSettings
from smartgate.tokens.discovery import DocumentFetchError, fetch_discovery

log = logging.getLogger("smartgate.smart_configuration")

_FROM_DISCOVERY = (
    "issuer",
    "jwks_uri",
    "authorization_endpoint",
    "token_endpoint",
    "token_endpoint_auth_methods_supported",
    "registration_endpoint",
    "scopes_supported",
    "response_types_supported",
    "introspection_endpoint",
    "revocation_endpoint",
    "code_challenge_methods_supported",
    "grant_types_supported",
)
DISCOVERY_TIMEOUT_SECONDS = 5.0
CORS_HEADERS = {"access-control-allow-origin": "*", "cache-control": "max-age=300"}


class SmartConfiguration:
    def __init__(
        self,
        settings: SmartConfigurationSettings,
        client: httpx.AsyncClient,
        ttl_seconds: float = 300,
        dpop_algs: tuple[str, ...] = (),
    ):
        self._settings = settings
        self._dpop_algs = dpop_algs  # advertised when DPoP is on (RFC 9449 section 5.1's metadata name)
        self._client = client
        self._ttl = ttl_seconds
        self._discovery: dict[str, Any] | None = None
        self._fetched_at = 0.0

    async def document(self) -> dict[str, Any] | None:
        if self._discovery is None or time.monotonic() - self._fetched_at > self._ttl:
            await self._refresh()
        if self._discovery is None:
            return None
        return self.build(self._discovery)

    def build(self, discovery: dict[str, Any]) -> dict[str, Any]:
        settings = self._settings
        document: dict[str, Any] = {key: discovery[key] for key in _FROM_DISCOVERY if key in discovery}
        document.setdefault("code_challenge_methods_supported", ["S256"])
        document["code_challenge_methods_supported"] = [
            method for method in document["code_challenge_methods_supported"] if method != "plain"
        ] or ["S256"]
        document.setdefault("grant_types_supported", ["authorization_code"])
        document["capabilities"] = list(settings.capabilities)
        if settings.scopes_supported:
            document["scopes_supported"] = list(settings.scopes_supported)
        if self._dpop_algs:
            document["dpop_signing_alg_values_supported"] = list(self._dpop_algs)
        document.update(settings.overrides)
        return document

    async def _refresh(self) -> None:
        try:
            discovery = await fetch_discovery(self._client, self._settings.issuer, timeout=DISCOVERY_TIMEOUT_SECONDS)
        except DocumentFetchError as exc:
            log.warning("OpenID discovery for %s failed: %s", self._settings.issuer, exc)
            return
        self._discovery = discovery
        self._fetched_at = time.monotonic()

    @staticmethod
    def encode(document: dict[str, Any]) -> bytes:
        return json.dumps(document, indent=2).encode("utf-8")
