"""JwksCache and parse_jwks: where keys come from, how often they are fetched, what is never loaded.

The IdP is a FakeIdp behind httpx.MockTransport; the cache's rate limit runs on a ManualClock.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from smartgate.config.model import IssuerConfig, JwksPolicy, TokenPolicy
from smartgate.core.reasons import Reason, Refusal
from smartgate.tokens.jwks import MAX_JWKS_BYTES, MAX_KEYS, JwksCache, JwksError, SigningKey, parse_jwks
from smartgate.tokens.verifier import TokenVerifier

from .token_helpers import (
    ALL_ALGORITHMS,
    FakeIdp,
    KeyPair,
    ManualClock,
    ed448_private_key,
    key_for,
    make_claims,
    make_jwks,
    make_token,
)

ISSUER = "https://idp.example.org/realms/smart"
DISCOVERY_URL = f"{ISSUER}/.well-known/openid-configuration"
JWKS_URI = f"{ISSUER}/protocol/openid-connect/certs"
AUDIENCE = "https://fhir.example.org/r4"
MIN_REFRESH = 30.0

ES256 = key_for("ES256")
RS256 = key_for("RS256")
ROTATED = key_for("ES256", "rotated")


def config(**overrides: Any) -> IssuerConfig:
    values: dict[str, Any] = {"issuer": ISSUER, "audiences": (AUDIENCE,), "jwks_uri": JWKS_URI}
    values.update(overrides)
    return IssuerConfig(**values)


@pytest.fixture
async def idp() -> AsyncIterator[FakeIdp]:
    fake = FakeIdp({JWKS_URI: make_jwks(ES256, RS256)})
    yield fake
    await fake.aclose()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(10_000.0)


def make_cache(idp: FakeIdp, clock: ManualClock, issuer: IssuerConfig | None = None) -> JwksCache:
    policy = JwksPolicy(min_refresh_interval_seconds=MIN_REFRESH, fetch_timeout_seconds=1.0)
    return JwksCache(issuer or config(), policy, idp.client, clock=clock)


@pytest.fixture
def cache(idp: FakeIdp, clock: ManualClock) -> JwksCache:
    return make_cache(idp, clock)


def kids(keys: tuple[SigningKey, ...] | None) -> list[str | None]:
    assert keys is not None, "expected a key set, got None (never loaded)"
    return [key.kid for key in keys]


# --- sources -----------------------------------------------------------------------------


async def test_keys_are_fetched_from_jwks_uri_on_first_use(cache: JwksCache, idp: FakeIdp) -> None:
    assert not cache.ready
    assert cache.last_success_wall_time is None
    assert kids(await cache.candidates(ES256.kid, "ES256")) == [ES256.kid]
    assert idp.requests == [JWKS_URI]
    assert cache.ready
    assert cache.last_success_wall_time is not None


async def test_known_kid_is_served_from_cache_without_refetching(
    cache: JwksCache, idp: FakeIdp, clock: ManualClock
) -> None:
    await cache.candidates(ES256.kid, "ES256")
    for _ in range(5):
        clock.advance(3600)
        assert kids(await cache.candidates(RS256.kid, "RS256")) == [RS256.kid]
    assert idp.requests == [JWKS_URI]


async def test_discovery_is_used_when_jwks_uri_is_absent(idp: FakeIdp, clock: ManualClock) -> None:
    keys_url = "https://keys.idp.example.org/smart/jwks"
    idp.documents[DISCOVERY_URL] = {"issuer": ISSUER, "jwks_uri": keys_url, "token_endpoint": f"{ISSUER}/token"}
    idp.documents[keys_url] = make_jwks(ES256)
    cache = make_cache(idp, clock, config(jwks_uri=None))
    assert kids(await cache.candidates(ES256.kid, "ES256")) == [ES256.kid]
    assert idp.requests == [DISCOVERY_URL, keys_url]
    assert idp.count(JWKS_URI) == 0
    # Later refreshes reuse the discovered jwks_uri.
    assert await cache.refresh()
    assert idp.requests == [DISCOVERY_URL, keys_url, keys_url]


async def test_discovery_for_issuer_with_trailing_slash(idp: FakeIdp, clock: ManualClock) -> None:
    issuer = "https://login.example.com/tenant/"
    keys_url = "https://login.example.com/tenant/keys"
    idp.documents["https://login.example.com/tenant/.well-known/openid-configuration"] = {
        "issuer": issuer,
        "jwks_uri": keys_url,
    }
    idp.documents[keys_url] = make_jwks(ES256)
    cache = make_cache(idp, clock, config(issuer=issuer, jwks_uri=None))
    assert kids(await cache.candidates(ES256.kid, "ES256")) == [ES256.kid]


@pytest.mark.parametrize(
    "named_issuer",
    ["https://evil.example.net", ISSUER + "/", ISSUER.upper(), None, ""],
    ids=["other-host", "trailing-slash", "upper-case", "missing", "empty"],
)
async def test_discovery_document_naming_another_issuer_is_refused(
    idp: FakeIdp, clock: ManualClock, named_issuer: str | None
) -> None:
    keys_url = "https://evil.example.net/jwks"
    document: dict[str, Any] = {"jwks_uri": keys_url}
    if named_issuer is not None:
        document["issuer"] = named_issuer
    idp.documents[DISCOVERY_URL] = document
    idp.documents[keys_url] = make_jwks(ES256)
    cache = make_cache(idp, clock, config(jwks_uri=None))
    assert await cache.candidates(ES256.kid, "ES256") is None
    assert not cache.ready
    assert idp.count(keys_url) == 0


@pytest.mark.parametrize(
    "jwks_uri",
    [None, "", "file:///etc/smartgate/jwks.json", "/protocol/openid-connect/certs", 42, ["https://x/jwks"]],
    ids=["missing", "empty", "file-scheme", "relative", "number", "list"],
)
async def test_discovery_document_without_usable_jwks_uri_is_refused(
    idp: FakeIdp, clock: ManualClock, jwks_uri: Any
) -> None:
    document: dict[str, Any] = {"issuer": ISSUER}
    if jwks_uri is not None:
        document["jwks_uri"] = jwks_uri
    idp.documents[DISCOVERY_URL] = document
    cache = make_cache(idp, clock, config(jwks_uri=None))
    assert await cache.candidates(ES256.kid, "ES256") is None
    assert idp.requests == [DISCOVERY_URL]


@pytest.mark.parametrize(
    "response",
    [httpx.Response(404), httpx.Response(200, json=["not", "an", "object"]), httpx.Response(200, content=b"<html>")],
    ids=["404", "array", "html"],
)
async def test_failed_discovery_is_retried_after_the_refresh_interval(
    idp: FakeIdp, clock: ManualClock, response: httpx.Response
) -> None:
    idp.documents[DISCOVERY_URL] = response
    idp.documents[JWKS_URI] = make_jwks(ES256)
    cache = make_cache(idp, clock, config(jwks_uri=None))
    assert await cache.candidates(ES256.kid, "ES256") is None
    idp.documents[DISCOVERY_URL] = {"issuer": ISSUER, "jwks_uri": JWKS_URI}
    clock.advance(MIN_REFRESH)
    assert kids(await cache.candidates(ES256.kid, "ES256")) == [ES256.kid]
    assert idp.requests == [DISCOVERY_URL, DISCOVERY_URL, JWKS_URI]


async def test_jwks_file_is_the_key_source(idp: FakeIdp, clock: ManualClock, tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(make_jwks(ES256)), encoding="utf-8")
    cache = make_cache(idp, clock, config(jwks_uri=None, jwks_file=str(path)))
    assert kids(await cache.candidates(ES256.kid, "ES256")) == [ES256.kid]
    assert idp.requests == []


async def test_jwks_file_is_reread_on_refresh(idp: FakeIdp, clock: ManualClock, tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(make_jwks(ES256)), encoding="utf-8")
    cache = make_cache(idp, clock, config(jwks_uri=None, jwks_file=str(path)))
    await cache.candidates(ES256.kid, "ES256")
    path.write_text(json.dumps(make_jwks(ES256, ROTATED)), encoding="utf-8")
    clock.advance(MIN_REFRESH)
    assert kids(await cache.candidates(ROTATED.kid, "ES256")) == [ROTATED.kid]
    assert idp.requests == []


@pytest.mark.parametrize(
    "content", [None, "not json", '{"keys": {}}', "[]"], ids=["missing-file", "not-json", "keys-not-list", "array"]
)
async def test_unusable_jwks_file_leaves_the_cache_unloaded(
    idp: FakeIdp, clock: ManualClock, tmp_path: Path, content: str | None
) -> None:
    path = tmp_path / "jwks.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    cache = make_cache(idp, clock, config(jwks_uri=None, jwks_file=str(path)))
    assert await cache.candidates(ES256.kid, "ES256") is None
    assert not await cache.refresh()


# --- refresh rate --------------------------------------------------------------------------


async def test_unknown_kid_triggers_a_refresh_at_most_once_per_min_refresh_interval(
    cache: JwksCache, idp: FakeIdp, clock: ManualClock
) -> None:
    assert kids(await cache.candidates(ES256.kid, "ES256")) == [ES256.kid]
    assert idp.count(JWKS_URI) == 1
    # A stream of random kids inside the interval: no request reaches the IdP.
    for i in range(20):
        clock.advance(1)
        assert await cache.candidates(f"random-{i}", "ES256") == ()
    assert idp.count(JWKS_URI) == 1
    clock.advance(MIN_REFRESH - 20 - 0.001)
    assert await cache.candidates("still-too-early", "ES256") == ()
    assert idp.count(JWKS_URI) == 1
    clock.advance(0.001)  # exactly min_refresh_interval after the last fetch
    assert await cache.candidates("now-allowed", "ES256") == ()
    assert idp.count(JWKS_URI) == 2
    for i in range(20):
        assert await cache.candidates(f"again-{i}", "ES256") == ()
    assert idp.count(JWKS_URI) == 2


async def test_unknown_kid_after_the_interval_picks_up_a_rotated_key(
    cache: JwksCache, idp: FakeIdp, clock: ManualClock
) -> None:
    await cache.candidates(ES256.kid, "ES256")
    idp.documents[JWKS_URI] = make_jwks(ROTATED)
    assert await cache.candidates(ROTATED.kid, "ES256") == ()  # too soon after the first fetch
    clock.advance(MIN_REFRESH)
    assert kids(await cache.candidates(ROTATED.kid, "ES256")) == [ROTATED.kid]
    assert idp.count(JWKS_URI) == 2
    # The rotated-out key is gone with the set it came in.
    assert await cache.candidates(ES256.kid, "ES256") == ()


async def test_failed_fetches_are_rate_limited_too(cache: JwksCache, idp: FakeIdp, clock: ManualClock) -> None:
    idp.down = True
    for _ in range(10):
        assert await cache.candidates(ES256.kid, "ES256") is None
        clock.advance(1)
    assert len(idp.requests) == 1
    clock.advance(MIN_REFRESH)
    assert await cache.candidates(ES256.kid, "ES256") is None
    assert len(idp.requests) == 2


async def test_explicit_refresh_is_not_rate_limited(cache: JwksCache, idp: FakeIdp) -> None:
    assert await cache.refresh()
    assert await cache.refresh()
    assert idp.count(JWKS_URI) == 2


async def test_concurrent_refreshes_share_one_fetch(cache: JwksCache, idp: FakeIdp) -> None:
    idp.delay = 0.05
    results = await asyncio.gather(*(cache.candidates(ES256.kid, "ES256") for _ in range(50)))
    assert idp.requests == [JWKS_URI]
    assert all(kids(result) == [ES256.kid] for result in results)


async def test_concurrent_unknown_kids_after_the_interval_share_one_fetch(
    cache: JwksCache, idp: FakeIdp, clock: ManualClock
) -> None:
    await cache.candidates(ES256.kid, "ES256")
    idp.documents[JWKS_URI] = make_jwks(ES256, ROTATED)
    idp.delay = 0.05
    clock.advance(MIN_REFRESH)
    results = await asyncio.gather(*(cache.candidates(ROTATED.kid, "ES256") for _ in range(30)))
    assert idp.count(JWKS_URI) == 2
    assert all(kids(result) == [ROTATED.kid] for result in results)


async def test_concurrent_explicit_refreshes_share_one_fetch(cache: JwksCache, idp: FakeIdp) -> None:
    idp.delay = 0.05
    assert await asyncio.gather(*(cache.refresh() for _ in range(10))) == [True] * 10
    assert idp.count(JWKS_URI) == 1


async def test_concurrent_refreshes_against_a_down_idp_share_one_failed_fetch(cache: JwksCache, idp: FakeIdp) -> None:
    idp.down = True
    idp.delay = 0.05
    results = await asyncio.gather(*(cache.candidates(ES256.kid, "ES256") for _ in range(20)))
    assert results == [None] * 20
    assert len(idp.requests) == 1


# --- failures ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "failure",
    ["down", "500", "404", "not-json", "not-jwks"],
)
async def test_idp_failure_after_a_good_fetch_keeps_serving_the_last_good_key_set(
    cache: JwksCache, idp: FakeIdp, clock: ManualClock, failure: str
) -> None:
    assert kids(await cache.candidates(ES256.kid, "ES256")) == [ES256.kid]
    good = cache.key_set
    if failure == "down":
        idp.down = True
    else:
        idp.documents[JWKS_URI] = {
            "500": httpx.Response(500, text="oops"),
            "404": httpx.Response(404),
            "not-json": httpx.Response(200, content=b"{keys: nope"),
            "not-jwks": {"issuer": ISSUER},
        }[failure]
    clock.advance(MIN_REFRESH)
    assert await cache.candidates("unknown-kid", "ES256") == ()  # triggered a failed refresh
    assert len(idp.requests) == 2
    assert not await cache.refresh()
    assert cache.key_set is good
    assert cache.ready
    assert kids(await cache.candidates(ES256.kid, "ES256")) == [ES256.kid]
    assert kids(await cache.candidates(RS256.kid, "RS256")) == [RS256.kid]


async def test_idp_down_from_the_start_gives_no_key_set(cache: JwksCache, idp: FakeIdp) -> None:
    idp.down = True
    assert await cache.candidates(ES256.kid, "ES256") is None
    assert await cache.candidates(None, "ES256") is None
    assert not cache.ready
    assert cache.key_set is None


async def test_idp_down_from_the_start_makes_the_verifier_answer_jwks_unavailable(
    cache: JwksCache, idp: FakeIdp
) -> None:
    idp.down = True
    verifier = TokenVerifier({ISSUER: (cache.issuer, cache)}, TokenPolicy(), AUDIENCE)
    result = await verifier.verify(make_token(ES256, make_claims(ISSUER, AUDIENCE)))
    assert isinstance(result, Refusal)
    assert result.reason is Reason.JWKS_UNAVAILABLE


@pytest.mark.parametrize("error", [httpx.ReadTimeout, httpx.ConnectTimeout, httpx.RemoteProtocolError])
async def test_idp_timeout_or_transport_error_is_a_failure(
    clock: ManualClock, error: type[httpx.TransportError]
) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        raise error("failed", request=request)

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    try:
        cache = JwksCache(config(), JwksPolicy(), client, clock=clock)
        assert await cache.candidates(ES256.kid, "ES256") is None
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(201, json=make_jwks(ES256)),
        httpx.Response(204),
        httpx.Response(302, headers={"location": "https://evil.example.net/jwks"}, json=make_jwks(ES256)),
        httpx.Response(304),
        httpx.Response(401, json=make_jwks(ES256)),
        httpx.Response(404, json=make_jwks(ES256)),
        httpx.Response(500, json=make_jwks(ES256)),
        httpx.Response(503),
    ],
    ids=["201", "204", "302", "304", "401", "404", "500", "503"],
)
async def test_non_200_response_is_a_failure(cache: JwksCache, idp: FakeIdp, response: httpx.Response) -> None:
    idp.documents[JWKS_URI] = response
    assert await cache.candidates(ES256.kid, "ES256") is None
    assert idp.count("https://evil.example.net/jwks") == 0


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"<html><body>login</body></html>", b'{"keys": [', b"\xff\xfe\x00"],
    ids=["empty", "text", "html", "truncated", "binary"],
)
async def test_non_json_response_is_a_failure(cache: JwksCache, idp: FakeIdp, body: bytes) -> None:
    idp.documents[JWKS_URI] = httpx.Response(200, content=body, headers={"content-type": "application/json"})
    assert await cache.candidates(ES256.kid, "ES256") is None


@pytest.mark.parametrize(
    "document",
    [[], "keys", 42, {}, {"keys": None}, {"keys": "x"}, {"keys": {"kid": "a"}}, {"jwks": [ES256.public_jwk()]}],
    ids=["array", "string", "number", "empty", "null-keys", "string-keys", "object-keys", "wrong-member"],
)
async def test_json_that_is_not_a_jwks_is_a_failure(cache: JwksCache, idp: FakeIdp, document: Any) -> None:
    idp.documents[JWKS_URI] = httpx.Response(200, json=document)
    assert await cache.candidates(ES256.kid, "ES256") is None


def _padded_jwks(total_bytes: int) -> bytes:
    document = make_jwks(ES256)
    base = len(json.dumps({**document, "padding": ""}).encode())
    body = json.dumps({**document, "padding": "x" * (total_bytes - base)}).encode()
    assert len(body) == total_bytes
    return body


async def test_oversized_response_is_a_failure(cache: JwksCache, idp: FakeIdp) -> None:
    idp.documents[JWKS_URI] = httpx.Response(200, content=_padded_jwks(MAX_JWKS_BYTES + 1))
    assert await cache.candidates(ES256.kid, "ES256") is None


async def test_response_at_the_size_limit_is_accepted(cache: JwksCache, idp: FakeIdp) -> None:
    idp.documents[JWKS_URI] = httpx.Response(200, content=_padded_jwks(MAX_JWKS_BYTES))
    assert kids(await cache.candidates(ES256.kid, "ES256")) == [ES256.kid]


async def test_oversized_discovery_document_is_a_failure(idp: FakeIdp, clock: ManualClock) -> None:
    document = {"issuer": ISSUER, "jwks_uri": JWKS_URI, "padding": "x" * MAX_JWKS_BYTES}
    idp.documents[DISCOVERY_URL] = httpx.Response(200, content=json.dumps(document).encode())
    cache = make_cache(idp, clock, config(jwks_uri=None))
    assert await cache.candidates(ES256.kid, "ES256") is None
    assert idp.count(JWKS_URI) == 0


async def test_oversized_response_is_not_read_past_the_limit(clock: ManualClock) -> None:
    chunk = b" " * 65536
    sent = 0

    async def endless_body() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(128):  # 8 MiB in all
            sent += len(chunk)
            yield chunk

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=endless_body())

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    try:
        cache = JwksCache(config(), JwksPolicy(), client, clock=clock)
        assert await cache.candidates(ES256.kid, "ES256") is None
        assert sent <= MAX_JWKS_BYTES + 2 * len(chunk)
    finally:
        await client.aclose()


# --- what is never loaded ------------------------------------------------------------------


async def test_oct_symmetric_keys_are_never_loaded(cache: JwksCache, idp: FakeIdp) -> None:
    oct_key = {"kty": "oct", "kid": "hmac", "alg": "HS256", "use": "sig", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQ"}
    idp.documents[JWKS_URI] = make_jwks(oct_key, ES256)
    await cache.candidates(ES256.kid, "ES256")
    assert cache.key_set is not None
    assert [key.kid for key in cache.key_set.keys] == [ES256.kid]
    for alg in ("HS256", "RS256", "ES256", "EdDSA"):
        assert await cache.candidates("hmac", alg) == ()


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
async def test_keys_containing_private_d_are_never_loaded(cache: JwksCache, idp: FakeIdp, alg: str) -> None:
    private = key_for(alg, "leaked", kid=f"leaked-{alg}")
    jwk = private.private_jwk()
    assert "d" in jwk
    idp.documents[JWKS_URI] = make_jwks(jwk, ES256)
    await cache.candidates(ES256.kid, "ES256")
    assert await cache.candidates(private.kid, alg) == ()
    assert cache.key_set is not None
    assert private.kid not in {key.kid for key in cache.key_set.keys}


async def test_private_d_is_refused_even_when_the_public_members_are_valid(cache: JwksCache, idp: FakeIdp) -> None:
    # Public members of a real key plus a bogus "d": still not loaded.
    idp.documents[JWKS_URI] = make_jwks(RS256.public_jwk(d="AQAB"), ES256)
    await cache.candidates(ES256.kid, "ES256")
    assert await cache.candidates(RS256.kid, "RS256") == ()


@pytest.mark.parametrize("use", ["enc", "", "SIG", None])
async def test_keys_not_for_signatures_are_never_loaded(cache: JwksCache, idp: FakeIdp, use: Any) -> None:
    idp.documents[JWKS_URI] = make_jwks(RS256.public_jwk(use=use), ES256)
    await cache.candidates(ES256.kid, "ES256")
    assert await cache.candidates(RS256.kid, "RS256") == ()


async def test_key_without_use_is_loaded(cache: JwksCache, idp: FakeIdp) -> None:
    jwk = RS256.public_jwk()
    del jwk["use"]
    idp.documents[JWKS_URI] = make_jwks(jwk)
    assert kids(await cache.candidates(RS256.kid, "RS256")) == [RS256.kid]


async def test_keys_whose_key_ops_exclude_verify_are_never_loaded(cache: JwksCache, idp: FakeIdp) -> None:
    jwk = RS256.public_jwk(key_ops=["encrypt", "wrapKey"])
    del jwk["use"]
    idp.documents[JWKS_URI] = make_jwks(jwk, ES256)
    await cache.candidates(ES256.kid, "ES256")
    assert await cache.candidates(RS256.kid, "RS256") == ()


def test_parse_jwks_skips_unusable_entries_and_keeps_the_rest() -> None:
    good = ES256.public_jwk()
    document = {
        "keys": [
            "not-an-object",
            None,
            {"kty": "RSA", "kid": "no-modulus", "e": "AQAB"},
            {"kty": "EC", "kid": "bad-curve", "crv": "P-999", "x": "AA", "y": "AA"},
            {"kty": "OKP", "kid": "x25519", "crv": "X25519", "x": good["x"]},
            {"kty": "unknown", "kid": "weird"},
            {"kid": "no-kty"},
            {**RS256.public_jwk(), "kid": 5},
            {**RS256.public_jwk(), "alg": ["RS256"]},
            good,
        ]
    }
    key_set = parse_jwks(document)
    assert [key.kid for key in key_set.keys] == [ES256.kid]
    assert set(key_set.by_kid) == {ES256.kid}


@pytest.mark.parametrize(
    "document", [[], {}, {"keys": "x"}, None, "keys"], ids=["list", "empty", "str", "null", "string"]
)
def test_parse_jwks_rejects_non_jwks_documents(document: Any) -> None:
    with pytest.raises(JwksError):
        parse_jwks(document)


def test_parse_jwks_loads_at_most_max_keys() -> None:
    document = {"keys": [ES256.public_jwk(kid=f"k{i}") for i in range(MAX_KEYS + 5)]}
    key_set = parse_jwks(document)
    assert len(key_set.keys) == MAX_KEYS
    assert "k0" in key_set.by_kid
    assert f"k{MAX_KEYS}" not in key_set.by_kid


def test_parse_jwks_keeps_only_public_keys() -> None:
    key_set = parse_jwks(make_jwks(*(key_for(alg) for alg in ALL_ALGORITHMS)))
    assert len(key_set.keys) == len(ALL_ALGORITHMS)
    for key in key_set.keys:
        assert not hasattr(key.key, "private_bytes"), key.kid


# --- which key may verify what -------------------------------------------------------------


def _only(jwk: dict[str, Any]) -> SigningKey:
    (key,) = parse_jwks({"keys": [jwk]}).keys
    return key


@pytest.mark.parametrize("alg", ALL_ALGORITHMS)
def test_signing_key_verifies_only_its_own_family(alg: str) -> None:
    key = _only(key_for(alg).public_jwk(with_alg=False))
    families = {
        "RS256": {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"},
        "ES256": {"ES256"},
        "ES384": {"ES384"},
        "ES512": {"ES512"},
        "EdDSA": {"EdDSA"},
    }
    family = families.get(alg, families["RS256"])
    for other in (*ALL_ALGORITHMS, "HS256", "none", "ES256K"):
        assert key.can_verify(other) is (other in family), (alg, other)


def test_signing_key_with_alg_verifies_only_that_alg() -> None:
    key = _only(RS256.public_jwk())
    assert [alg for alg in ALL_ALGORITHMS if key.can_verify(alg)] == ["RS256"]


def test_ed448_key_verifies_eddsa() -> None:
    key = _only(KeyPair("EdDSA", "ed448", ed448_private_key()).public_jwk())
    assert key.crv == "Ed448"
    assert key.can_verify("EdDSA")


async def test_token_without_kid_gets_every_key_usable_for_its_alg(cache: JwksCache, idp: FakeIdp) -> None:
    second = key_for("ES256", "second")
    idp.documents[JWKS_URI] = make_jwks(ES256, second, RS256, key_for("ES384"))
    assert kids(await cache.candidates(None, "ES256")) == [ES256.kid, second.kid]


async def test_duplicate_kids_are_all_candidates(cache: JwksCache, idp: FakeIdp) -> None:
    second = key_for("ES256", "second", kid=ES256.kid)
    idp.documents[JWKS_URI] = make_jwks(ES256, second)
    keys = await cache.candidates(ES256.kid, "ES256")
    assert kids(keys) == [ES256.kid, ES256.kid]


async def test_kid_lookup_does_not_fall_back_to_keys_without_kid(cache: JwksCache, idp: FakeIdp) -> None:
    jwk = ES256.public_jwk()
    del jwk["kid"]
    idp.documents[JWKS_URI] = make_jwks(jwk)
    assert await cache.candidates("some-kid", "ES256") == ()
    assert kids(await cache.candidates(None, "ES256")) == [None]
