"""runtime/smart_configuration.py: the SMART configuration is built only from a discovery document that
the shared size-capped fetcher accepted, and the last good one is kept.

The IdP is a FakeIdp behind httpx.MockTransport.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest

from smartgate.config.model import SmartConfigurationSettings
from smartgate.runtime.smart_configuration import SmartConfiguration
from smartgate.tokens.discovery import MAX_DISCOVERY_BYTES

from .token_helpers import FakeIdp

ISSUER = "https://idp.example.org/realms/smart"
DISCOVERY_URL = f"{ISSUER}/.well-known/openid-configuration"
DISCOVERY = {
    "issuer": ISSUER,
    "jwks_uri": f"{ISSUER}/certs",
    "authorization_endpoint": f"{ISSUER}/auth",
    "token_endpoint": f"{ISSUER}/token",
}
SETTINGS = SmartConfigurationSettings(issuer=ISSUER, capabilities=("launch-standalone",))


@pytest.fixture
async def idp() -> AsyncIterator[FakeIdp]:
    fake = FakeIdp({DISCOVERY_URL: DISCOVERY})
    yield fake
    await fake.aclose()


def oversized_discovery() -> httpx.Response:
    body = json.dumps({**DISCOVERY, "padding": "x" * MAX_DISCOVERY_BYTES}).encode()
    return httpx.Response(200, content=body)


async def test_the_document_is_built_from_the_discovery_document(idp: FakeIdp) -> None:
    document = await SmartConfiguration(SETTINGS, idp.client).document()
    assert document is not None
    assert document["token_endpoint"] == DISCOVERY["token_endpoint"]
    assert document["capabilities"] == ["launch-standalone"]
    assert idp.requests == [DISCOVERY_URL]


async def test_a_discovery_document_over_the_cap_is_refused(idp: FakeIdp) -> None:
    idp.documents[DISCOVERY_URL] = oversized_discovery()
    assert await SmartConfiguration(SETTINGS, idp.client).document() is None


async def test_an_endless_discovery_document_is_not_read_past_the_cap() -> None:
    chunk = b" " * 65536
    sent = 0

    async def endless_body() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(128):  # 8 MiB in all
            sent += len(chunk)
            yield chunk

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=endless_body())

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        assert await SmartConfiguration(SETTINGS, client).document() is None
    assert sent <= MAX_DISCOVERY_BYTES + 2 * len(chunk)


async def test_a_discovery_document_naming_another_issuer_is_refused(idp: FakeIdp) -> None:
    idp.documents[DISCOVERY_URL] = {**DISCOVERY, "issuer": "https://evil.example.org"}
    assert await SmartConfiguration(SETTINGS, idp.client).document() is None


async def test_the_last_good_document_is_kept_when_a_refresh_is_oversized(idp: FakeIdp) -> None:
    smart = SmartConfiguration(SETTINGS, idp.client, ttl_seconds=-1)  # every call refreshes
    first = await smart.document()
    assert first is not None
    idp.documents[DISCOVERY_URL] = oversized_discovery()
    assert await smart.document() == first
    assert idp.count(DISCOVERY_URL) == 2
