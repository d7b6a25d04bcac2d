"""tokens/discovery.py: the one size-capped fetcher of the IdP's discovery document (and JWKS).

The IdP is a FakeIdp behind httpx.MockTransport.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from smartgate.tokens.discovery import (
    MAX_DISCOVERY_BYTES,
    DocumentFetchError,
    discovery_url,
    fetch_discovery,
    fetch_json_object,
)

from .token_helpers import FakeIdp

ISSUER = "https://idp.example.org/realms/smart"
DISCOVERY_URL = f"{ISSUER}/.well-known/openid-configuration"
DOCUMENT = {"issuer": ISSUER, "jwks_uri": f"{ISSUER}/certs", "token_endpoint": f"{ISSUER}/token"}


@pytest.fixture
async def idp() -> AsyncIterator[FakeIdp]:
    fake = FakeIdp({DISCOVERY_URL: DOCUMENT})
    yield fake
    await fake.aclose()


def padded_discovery(total_bytes: int) -> bytes:
    """A discovery document for ISSUER that is exactly ``total_bytes`` long."""
    base = len(json.dumps({**DOCUMENT, "padding": ""}).encode())
    body = json.dumps({**DOCUMENT, "padding": "x" * (total_bytes - base)}).encode()
    assert len(body) == total_bytes
    return body


async def fetch(idp: FakeIdp, url: str | None = None) -> dict[str, Any]:
    return await fetch_discovery(idp.client, ISSUER, timeout=1.0, url=url)


def test_the_well_known_address_is_under_the_issuer_with_or_without_a_trailing_slash() -> None:
    assert discovery_url(ISSUER) == DISCOVERY_URL
    assert discovery_url(ISSUER + "/") == DISCOVERY_URL


async def test_the_discovery_document_is_fetched_from_the_well_known_address(idp: FakeIdp) -> None:
    assert await fetch(idp) == DOCUMENT
    assert idp.requests == [DISCOVERY_URL]


async def test_a_given_url_is_used_instead_of_the_well_known_address(idp: FakeIdp) -> None:
    elsewhere = "https://config.example.org/openid"
    idp.documents[elsewhere] = DOCUMENT
    assert await fetch(idp, elsewhere) == DOCUMENT
    assert idp.requests == [elsewhere]


async def test_a_document_at_the_cap_is_accepted(idp: FakeIdp) -> None:
    idp.documents[DISCOVERY_URL] = httpx.Response(200, content=padded_discovery(MAX_DISCOVERY_BYTES))
    assert (await fetch(idp))["issuer"] == ISSUER


async def test_a_document_over_the_cap_is_refused(idp: FakeIdp) -> None:
    idp.documents[DISCOVERY_URL] = httpx.Response(200, content=padded_discovery(MAX_DISCOVERY_BYTES + 1))
    with pytest.raises(DocumentFetchError, match=f"more than {MAX_DISCOVERY_BYTES} bytes"):
        await fetch(idp)


async def test_an_endless_document_is_not_read_past_the_cap() -> None:
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
        with pytest.raises(DocumentFetchError):
            await fetch_discovery(client, ISSUER, timeout=1.0)
    assert sent <= MAX_DISCOVERY_BYTES + 2 * len(chunk)


@pytest.mark.parametrize(
    "body",
    [b"[]", b'"issuer"', b"null", b"{", b'{"issuer": NaN}', b'{"exp": Infinity}', b"\xff\xfe{}", b""],
    ids=["list", "string", "null", "truncated", "nan", "infinity", "not-utf8", "empty"],
)
async def test_a_body_that_is_not_a_strict_json_object_is_refused(idp: FakeIdp, body: bytes) -> None:
    idp.documents[DISCOVERY_URL] = httpx.Response(200, content=body)
    with pytest.raises(DocumentFetchError):
        await fetch(idp)


@pytest.mark.parametrize("status", [201, 204, 301, 404, 500])
async def test_only_a_200_answer_counts(idp: FakeIdp, status: int) -> None:
    idp.documents[DISCOVERY_URL] = httpx.Response(status, json=DOCUMENT)
    with pytest.raises(DocumentFetchError, match=str(status)):
        await fetch(idp)


async def test_an_unreachable_idp_is_a_fetch_error(idp: FakeIdp) -> None:
    idp.down = True
    with pytest.raises(DocumentFetchError, match="ConnectError"):
        await fetch(idp)


@pytest.mark.parametrize("issuer", [None, "", ISSUER + "/", "https://evil.example.org/realms/smart", 42])
async def test_a_discovery_document_naming_another_issuer_is_refused(idp: FakeIdp, issuer: Any) -> None:
    idp.documents[DISCOVERY_URL] = {**DOCUMENT, "issuer": issuer}
    with pytest.raises(DocumentFetchError, match="names another issuer"):
        await fetch(idp)


async def test_fetch_json_object_does_not_ask_for_an_issuer(idp: FakeIdp) -> None:
    jwks_uri = f"{ISSUER}/certs"
    idp.documents[jwks_uri] = {"keys": []}
    assert await fetch_json_object(idp.client, jwks_uri, timeout=1.0, max_bytes=100) == {"keys": []}
    with pytest.raises(DocumentFetchError, match="more than 5 bytes"):
        await fetch_json_object(idp.client, jwks_uri, timeout=1.0, max_bytes=5)
