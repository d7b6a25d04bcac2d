"""Fixtures for the decision micro-benchmarks: the real verifier wired from a parsed config,
with a warm JWKS (a local jwks_file), and pools of distinct tokens."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tokens

from smartgate.config.model import Config
from smartgate.config.parse import parse_config
from smartgate.tokens.jwks import JwksCache
from smartgate.tokens.verifier import TokenVerifier

AUDIENCE = "https://bench.smartgate.invalid/fhir"
T = TypeVar("T")


def run_now(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (warm caches), without an event loop's overhead."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coroutine.close()
    raise AssertionError("the coroutine suspended: a cache was not warm")


@pytest.fixture(scope="session")
def keys() -> tokens.BenchKeys:
    return tokens.new_keys()


@pytest.fixture(scope="session")
def config(keys: tokens.BenchKeys, tmp_path_factory: pytest.TempPathFactory) -> Config:
    jwks_file = tmp_path_factory.mktemp("micro") / "jwks.json"
    jwks_file.write_text(json.dumps(keys.jwks()), encoding="utf-8")
    return parse_config(
        {
            "fhir": {"base_url": AUDIENCE, "upstream_url": "http://127.0.0.1:9/fhir"},
            "issuers": [{"issuer": tokens.ISSUER, "jwks_file": str(jwks_file)}],
        }
    )


@pytest.fixture()
def verifier(config: Config) -> Iterator[TokenVerifier]:
    """The verifier as the server builds it, keys loaded (the JWKS is warm)."""
    loop = asyncio.new_event_loop()
    client = httpx.AsyncClient()
    issuer = config.issuers[0]
    cache = JwksCache(issuer, config.jwks, client)
    loop.run_until_complete(cache.refresh())
    assert cache.ready
    yield TokenVerifier({issuer.issuer: (issuer, cache)}, config.tokens, config.fhir.base_url)
    loop.run_until_complete(client.aclose())
    loop.close()
