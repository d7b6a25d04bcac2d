"""The identity provider's JSON documents, fetched with a size cap: OpenID discovery and the JWKS.

The JWKS cache (``tokens/jwks.py``) and ``/.well-known/smart-configuration``
(``runtime/smart_configuration.py``) both read ``{issuer}/.well-known/openid-configuration``.
They read it here, through one fetcher, so both get the same limits:

- the body is streamed and reading stops past ``max_bytes``, so a huge or endless answer costs at
  most the cap in memory and time (``response.json()`` would read it all first);
- only a 200 answer counts;
- the body must be UTF-8 JSON whose top level is an object, without ``NaN`` or ``Infinity``
  (RFC 8259 has neither);
- a discovery document must name the issuer it was fetched for (OpenID Connect Discovery 1.0,
  section 4.3).

Every failure is one exception type, ``DocumentFetchError``, whose message names the URL and what
was wrong, never the body.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

MAX_DISCOVERY_BYTES = 512 * 1024
DISCOVERY_PATH = "/.well-known/openid-configuration"


class DocumentFetchError(Exception):
    """An identity provider document could not be fetched or is not a usable JSON object."""


def discovery_url(issuer: str) -> str:
    """Where an issuer publishes its OpenID discovery document."""
    return issuer.rstrip("/") + DISCOVERY_PATH


async def fetch_json_object(client: httpx.AsyncClient, url: str, *, timeout: float, max_bytes: int) -> dict[str, Any]:
    """GET ``url`` and return its JSON object body, reading no more than ``max_bytes`` of it."""
    body = await _read_capped(client, url, timeout, max_bytes)
    try:
        document = json.loads(body.decode("utf-8"), parse_constant=_refuse_non_finite)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise DocumentFetchError(f"GET {url} did not answer JSON") from exc
    if not isinstance(document, dict):
        raise DocumentFetchError(f"GET {url} did not answer a JSON object")
    return document


async def fetch_discovery(
    client: httpx.AsyncClient,
    issuer: str,
    *,
    timeout: float,
    url: str | None = None,
    max_bytes: int = MAX_DISCOVERY_BYTES,
) -> dict[str, Any]:
    """The issuer's OpenID discovery document, from ``url`` or else the well-known address."""
    location = url if url is not None else discovery_url(issuer)
    document = await fetch_json_object(client, location, timeout=timeout, max_bytes=max_bytes)
    if document.get("issuer") != issuer:
        raise DocumentFetchError(f"the discovery document at {location} names another issuer")
    return document


class BodyTooLargeError(Exception):
    """A streamed answer ran past its size cap; reading stopped there."""


async def read_capped_body(response: httpx.Response, max_bytes: int) -> bytes:
    """The body of a streamed response (``client.stream(...)``), reading no more than ``max_bytes`` of
    it: past the cap, BodyTooLargeError, so a huge or endless answer costs at most the cap in memory and time.
    Used for every body smartgate reads from the identity provider or the FHIR server."""
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body.extend(chunk)
        if len(body) > max_bytes:  # stop reading: the cap bounds memory and time
            raise BodyTooLargeError(f"more than {max_bytes} bytes")
    return bytes(body)


async def _read_capped(client: httpx.AsyncClient, url: str, timeout: float, max_bytes: int) -> bytes:
    try:
        async with client.stream("GET", url, timeout=timeout, headers={"accept": "application/json"}) as response:
            if response.status_code != 200:
                raise DocumentFetchError(f"GET {url} answered {response.status_code}")
            return await read_capped_body(response, max_bytes)
    except BodyTooLargeError as exc:
        raise DocumentFetchError(f"GET {url} answered more than {max_bytes} bytes") from exc
    except httpx.HTTPError as exc:
        raise DocumentFetchError(f"GET {url} failed: {type(exc).__name__}") from exc


def _refuse_non_finite(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")
