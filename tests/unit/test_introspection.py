"""RFC 7662 introspection of opaque tokens (smartgate.tokens.introspection), driven against an introspection
endpoint behind ``httpx.MockTransport`` (and, for timeouts and refused connections, real local sockets).

The rules: ``active: false`` is a 401 token_inactive; any failure to get a usable answer is a 503
introspection_failed, never an allow; the client authenticates with client_secret_basic or
client_secret_post as configured; answers are cached no longer than the token's ``exp`` and the
configured maximum; the SMART claims of an active answer become the same TokenContext a JWT gives.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

import httpx
import pytest

from smartgate.config.model import (
    AuthMethod,
    IntrospectionConfig,
    IssuerConfig,
    LookupConfig,
    TokenPolicy,
)
from smartgate.config.parse import ConfigError, parse_config
from smartgate.core.reasons import Reason, Refusal
from smartgate.pipeline.authorizer import Authorizer
from smartgate.pipeline.fhir_lookup import MembershipLookup
from smartgate.pipeline.public_routes import PublicRoutes
from smartgate.policy.decision import Decision
from smartgate.tokens.context import TokenContext
from smartgate.tokens.introspection import INACTIVE_CACHE_SECONDS, Introspector
from smartgate.tokens.verifier import TokenVerifier
from tests.unit.policy_helpers import (
    BASE_PATH,
    FHIR_BASE_URL,
    ISSUER,
    SETTINGS,
    SigningKey,
    file_verifier,
    http,
    offline_client,
)
from tests.unit.token_helpers import ManualClock

ENDPOINT = "https://issuer.example.org/oauth/introspect"
CLIENT_ID = "smartgate"
CLIENT_SECRET = "s3cret-value"
TOKEN = "opaque-access-token-0123456789"
NOW = 1_700_000_000.0
SCOPE = "launch/patient patient/*.rs"


def active_answer(**overrides: Any) -> dict[str, Any]:
    """An RFC 7662 answer for an active SMART token; ``name=None`` leaves a member out."""
    answer: dict[str, Any] = {
        "active": True,
        "iss": ISSUER,
        "aud": FHIR_BASE_URL,
        "sub": "user-1",
        "client_id": "app-1",
        "scope": SCOPE,
        "patient": "123",
        "exp": NOW + 600,
    }
    answer.update(overrides)
    return {name: value for name, value in answer.items() if value is not None}


class IntrospectionEndpoint:
    """The authorization server's introspection endpoint: ``answer`` is served with status 200 when it
    is a JSON value, as is when it is an ``httpx.Response``; ``failure`` is raised instead when set.
    Every request is recorded."""

    def __init__(self, answer: Any = None) -> None:
        self.answer: Any = active_answer() if answer is None else answer
        self.failure: type[httpx.TransportError] | None = None
        self.requests: list[httpx.Request] = []
        self.client = httpx.AsyncClient(transport=httpx.MockTransport(self._handle))

    def _handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.failure is not None:
            raise self.failure(f"failed while sending {request.content.decode()}", request=request)
        if isinstance(self.answer, httpx.Response):
            return self.answer
        return httpx.Response(200, json=self.answer)

    @property
    def calls(self) -> int:
        return len(self.requests)

    def form(self, index: int = -1) -> dict[str, list[str]]:
        return parse_qs(self.requests[index].content.decode(), keep_blank_values=True)


def issuer_config(
    issuer: str = ISSUER,
    *,
    endpoint: str = ENDPOINT,
    client_id: str = CLIENT_ID,
    client_secret: str = CLIENT_SECRET,
    auth_method: AuthMethod = "client_secret_basic",
    max_ttl: float = 60.0,
    timeout: float = 2.0,
) -> IssuerConfig:
    return IssuerConfig(
        issuer=issuer,
        audiences=(FHIR_BASE_URL,),
        introspection=IntrospectionConfig(endpoint, client_id, client_secret, auth_method, max_ttl, timeout),
    )


def introspector(
    endpoint: IntrospectionEndpoint, clock: ManualClock | None = None, *issuers: IssuerConfig
) -> Introspector:
    return Introspector(list(issuers) or [issuer_config()], endpoint.client, FHIR_BASE_URL, clock or ManualClock(NOW))


@pytest.fixture
async def endpoint() -> AsyncIterator[IntrospectionEndpoint]:
    fake = IntrospectionEndpoint()
    yield fake
    await fake.client.aclose()


async def introspect(endpoint: IntrospectionEndpoint, **answer: Any) -> TokenContext | Refusal:
    """Introspect TOKEN once, at NOW, with the endpoint answering ``active_answer(**answer)``."""
    endpoint.answer = active_answer(**answer)
    return await introspector(endpoint).introspect(TOKEN)


def reason_of(result: TokenContext | Refusal) -> Reason:
    assert isinstance(result, Refusal), result
    return result.reason


def basic_credentials(request: httpx.Request) -> tuple[str, str]:
    scheme, _, encoded = request.headers["authorization"].partition(" ")
    assert scheme == "Basic"
    user, _, password = base64.b64decode(encoded).decode().partition(":")
    return user, password


# --- active / inactive -----------------------------------------------------------------------------


async def test_an_active_answer_gives_a_token_context(endpoint: IntrospectionEndpoint) -> None:
    context = await introspector(endpoint).introspect(TOKEN)
    assert isinstance(context, TokenContext)
    assert (context.issuer, context.patient, context.scope_text) == (ISSUER, "123", SCOPE)


async def test_an_inactive_token_is_rejected_as_token_inactive(endpoint: IntrospectionEndpoint) -> None:
    endpoint.answer = {"active": False}
    assert reason_of(await introspector(endpoint).introspect(TOKEN)) is Reason.TOKEN_INACTIVE
    assert Reason.TOKEN_INACTIVE.http_status == 401


async def test_an_inactive_answer_carrying_claims_is_still_inactive(endpoint: IntrospectionEndpoint) -> None:
    endpoint.answer = active_answer(active=False)
    assert reason_of(await introspector(endpoint).introspect(TOKEN)) is Reason.TOKEN_INACTIVE


async def test_an_active_answer_whose_exp_has_passed_is_expired(endpoint: IntrospectionEndpoint) -> None:
    assert reason_of(await introspect(endpoint, exp=NOW - 1)) is Reason.TOKEN_EXPIRED


async def test_an_active_answer_expiring_right_now_is_expired(endpoint: IntrospectionEndpoint) -> None:
    assert reason_of(await introspect(endpoint, exp=NOW)) is Reason.TOKEN_EXPIRED


async def test_an_exp_that_is_not_a_number_is_refused(endpoint: IntrospectionEndpoint) -> None:
    assert reason_of(await introspect(endpoint, exp=str(int(NOW + 600)))) is Reason.TOKEN_CLAIMS_INVALID


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity"])
async def test_an_exp_that_is_not_finite_is_refused(endpoint: IntrospectionEndpoint, literal: bytes) -> None:
    # Python's JSON parser accepts NaN and Infinity; a NaN deadline would never lapse in the cache.
    endpoint.answer = httpx.Response(200, content=b'{"active": true, "scope": "user/*.rs", "exp": ' + literal + b"}")
    assert reason_of(await introspector(endpoint).introspect(TOKEN)) is Reason.TOKEN_CLAIMS_INVALID


async def test_an_answer_without_exp_is_valid_for_at_most_the_cache_maximum(endpoint: IntrospectionEndpoint) -> None:
    context = await introspect(endpoint, exp=None)
    assert isinstance(context, TokenContext)
    assert context.expires_at == NOW + 60.0


async def test_an_answer_from_another_issuer_is_refused(endpoint: IntrospectionEndpoint) -> None:
    assert reason_of(await introspect(endpoint, iss="https://other.example.org")) is Reason.TOKEN_UNKNOWN_ISSUER


async def test_an_answer_for_another_audience_is_refused(endpoint: IntrospectionEndpoint) -> None:
    result = await introspect(endpoint, aud=["https://other.example.org/fhir"])
    assert reason_of(result) is Reason.TOKEN_AUDIENCE_MISMATCH


async def test_an_audience_that_is_not_strings_is_refused(endpoint: IntrospectionEndpoint) -> None:
    result = await introspect(endpoint, aud=[{"url": FHIR_BASE_URL}])
    assert reason_of(result) is Reason.TOKEN_AUDIENCE_MISMATCH


async def test_an_audience_list_naming_this_server_is_accepted(endpoint: IntrospectionEndpoint) -> None:
    result = await introspect(endpoint, aud=["https://other.example.org", FHIR_BASE_URL])
    assert isinstance(result, TokenContext)


async def test_an_answer_without_iss_and_aud_belongs_to_the_asked_issuer(endpoint: IntrospectionEndpoint) -> None:
    result = await introspect(endpoint, iss=None, aud=None)
    assert isinstance(result, TokenContext) and result.issuer == ISSUER


# --- failures are 503, never an allow ------------------------------------------------------------


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(500, json=active_answer()),
        httpx.Response(503, text="upstream unavailable"),
        httpx.Response(401, json={"error": "invalid_client"}),
        httpx.Response(200, text="<html>not json</html>"),
        httpx.Response(200, json=[active_answer()]),
        httpx.Response(200, json="active"),
        httpx.Response(200, json={"scope": SCOPE, "patient": "123"}),
        httpx.Response(200, json=active_answer(active="true")),
        httpx.Response(200, json=active_answer(active=1)),
    ],
    ids=[
        "500-saying-active",
        "503",
        "401-invalid-client",
        "not-json",
        "json-array",
        "json-string",
        "no-active-member",
        "active-as-string",
        "active-as-number",
    ],
)
async def test_an_unusable_answer_is_an_introspection_failure(
    endpoint: IntrospectionEndpoint, response: httpx.Response
) -> None:
    endpoint.answer = response
    assert reason_of(await introspector(endpoint).introspect(TOKEN)) is Reason.INTROSPECTION_FAILED
    assert Reason.INTROSPECTION_FAILED.http_status == 503


@pytest.mark.parametrize("failure", [httpx.ConnectError, httpx.ReadTimeout, httpx.RemoteProtocolError])
async def test_a_transport_error_is_an_introspection_failure(
    endpoint: IntrospectionEndpoint, failure: type[httpx.TransportError]
) -> None:
    endpoint.failure = failure
    assert reason_of(await introspector(endpoint).introspect(TOKEN)) is Reason.INTROSPECTION_FAILED


async def test_a_refused_connection_is_an_introspection_failure() -> None:
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with httpx.AsyncClient() as client:
        gate = Introspector([issuer_config(endpoint=f"http://127.0.0.1:{port}/introspect")], client, FHIR_BASE_URL)
        assert reason_of(await gate.introspect(TOKEN)) is Reason.INTROSPECTION_FAILED


async def test_an_endpoint_slower_than_the_timeout_is_an_introspection_failure() -> None:
    release = asyncio.Event()

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        writer.close()

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient() as client:
            issuer = issuer_config(endpoint=f"http://127.0.0.1:{port}/introspect", timeout=0.2)
            started = time.monotonic()
            result = await Introspector([issuer], client, FHIR_BASE_URL).introspect(TOKEN)
            elapsed = time.monotonic() - started
    finally:
        release.set()
        server.close()
        await server.wait_closed()
    assert reason_of(result) is Reason.INTROSPECTION_FAILED
    assert elapsed < 2.0  # the configured 0.2 s, not httpx's default 5 s


async def test_a_failure_is_logged_without_the_token_or_the_secret(
    endpoint: IntrospectionEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    endpoint.failure = httpx.ConnectError  # whose message echoes the request body
    with caplog.at_level(logging.DEBUG, logger="smartgate.introspection"):
        await introspector(endpoint, None, issuer_config(auth_method="client_secret_post")).introspect(TOKEN)
    assert caplog.records, "the failure is logged"
    assert TOKEN not in caplog.text and CLIENT_SECRET not in caplog.text


# --- what goes on the wire --------------------------------------------------------------------------


async def test_the_token_is_posted_as_the_token_form_field(endpoint: IntrospectionEndpoint) -> None:
    await introspector(endpoint).introspect(TOKEN)
    request = endpoint.requests[0]
    assert (request.method, str(request.url)) == ("POST", ENDPOINT)
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert endpoint.form()["token"] == [TOKEN]


async def test_the_token_type_hint_is_access_token(endpoint: IntrospectionEndpoint) -> None:
    await introspector(endpoint).introspect(TOKEN)
    assert endpoint.form()["token_type_hint"] == ["access_token"]


async def test_client_secret_basic_sends_the_credentials_in_basic_auth(endpoint: IntrospectionEndpoint) -> None:
    await introspector(endpoint).introspect(TOKEN)
    assert basic_credentials(endpoint.requests[0]) == (CLIENT_ID, CLIENT_SECRET)


async def test_client_secret_basic_keeps_the_secret_out_of_the_form(endpoint: IntrospectionEndpoint) -> None:
    await introspector(endpoint).introspect(TOKEN)
    form = endpoint.form()
    assert "client_secret" not in form and "client_id" not in form
    assert CLIENT_SECRET not in endpoint.requests[0].content.decode()


async def test_client_secret_basic_form_encodes_the_credentials_first(endpoint: IntrospectionEndpoint) -> None:
    # RFC 6749 section 2.3.1: a ':' in the client id must not split user from password.
    issuer = issuer_config(client_id="gate:one", client_secret="p@ss:w/rd")
    await introspector(endpoint, None, issuer).introspect(TOKEN)
    user, password = basic_credentials(endpoint.requests[0])
    assert (user, password) == ("gate%3Aone", "p%40ss%3Aw%2Frd")
    assert (unquote(user), unquote(password)) == ("gate:one", "p@ss:w/rd")


async def test_client_secret_post_sends_the_credentials_in_the_form(endpoint: IntrospectionEndpoint) -> None:
    await introspector(endpoint, None, issuer_config(auth_method="client_secret_post")).introspect(TOKEN)
    form = endpoint.form()
    assert (form["client_id"], form["client_secret"], form["token"]) == ([CLIENT_ID], [CLIENT_SECRET], [TOKEN])


async def test_client_secret_post_sends_no_authorization_header(endpoint: IntrospectionEndpoint) -> None:
    await introspector(endpoint, None, issuer_config(auth_method="client_secret_post")).introspect(TOKEN)
    assert "authorization" not in endpoint.requests[0].headers


async def test_the_configured_timeout_is_applied_to_the_call(endpoint: IntrospectionEndpoint) -> None:
    await introspector(endpoint, None, issuer_config(timeout=0.75)).introspect(TOKEN)
    assert set(endpoint.requests[0].extensions["timeout"].values()) == {0.75}


# --- the client secret comes from the configuration ---------------------------------------------------


def config_with_introspection(**introspection: Any) -> dict[str, Any]:
    return {
        "fhir": {"base_url": FHIR_BASE_URL, "upstream_url": "http://upstream.internal/fhir"},
        "issuers": [
            {"issuer": ISSUER, "introspection": {"endpoint": ENDPOINT, "client_id": CLIENT_ID, **introspection}}
        ],
    }


async def test_the_client_secret_is_read_from_client_secret_file(
    endpoint: IntrospectionEndpoint, tmp_path: Path
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-the-file\n", encoding="utf-8")
    config = parse_config(config_with_introspection(client_secret_file=str(secret_file)))
    await Introspector(list(config.issuers), endpoint.client, FHIR_BASE_URL).introspect(TOKEN)
    assert basic_credentials(endpoint.requests[0]) == (CLIENT_ID, "from-the-file")


async def test_the_client_secret_is_read_from_client_secret_env(
    endpoint: IntrospectionEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMARTGATE_TEST_INTROSPECTION_SECRET", "from-the-env")
    config = parse_config(
        config_with_introspection(
            client_secret_env="SMARTGATE_TEST_INTROSPECTION_SECRET", auth_method="client_secret_post"
        )
    )
    await Introspector(list(config.issuers), endpoint.client, FHIR_BASE_URL).introspect(TOKEN)
    assert endpoint.form()["client_secret"] == ["from-the-env"]


def test_an_unset_secret_env_var_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SMARTGATE_TEST_INTROSPECTION_SECRET", raising=False)
    with pytest.raises(ConfigError) as info:
        parse_config(config_with_introspection(client_secret_env="SMARTGATE_TEST_INTROSPECTION_SECRET"))
    assert info.value.key == "issuers[0].introspection.client_secret_env"


def test_the_secret_never_appears_in_the_config_repr(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("do-not-print-me", encoding="utf-8")
    config = parse_config(config_with_introspection(client_secret_file=str(secret_file)))
    assert "do-not-print-me" not in repr(config)


# --- caching ---------------------------------------------------------------------------------------


async def test_an_active_answer_is_reused_within_its_lifetime(endpoint: IntrospectionEndpoint) -> None:
    clock = ManualClock(NOW)
    gate = introspector(endpoint, clock)
    first = await gate.introspect(TOKEN)
    clock.advance(30)
    assert await gate.introspect(TOKEN) is first
    assert endpoint.calls == 1


async def test_a_cached_answer_is_not_reused_at_the_tokens_exp(endpoint: IntrospectionEndpoint) -> None:
    clock = ManualClock(NOW)
    gate = introspector(endpoint, clock)
    endpoint.answer = active_answer(exp=NOW + 2)
    assert isinstance(await gate.introspect(TOKEN), TokenContext)
    clock.advance(1.9)
    assert isinstance(await gate.introspect(TOKEN), TokenContext)
    assert endpoint.calls == 1
    clock.advance(0.1)  # now == exp: the cached answer must not be used
    assert reason_of(await gate.introspect(TOKEN)) is Reason.TOKEN_EXPIRED
    assert endpoint.calls == 2


async def test_a_cached_answer_is_not_reused_beyond_the_configured_maximum(endpoint: IntrospectionEndpoint) -> None:
    clock = ManualClock(NOW)
    gate = introspector(endpoint, clock, issuer_config(max_ttl=5))
    endpoint.answer = active_answer(exp=NOW + 3600)
    await gate.introspect(TOKEN)
    clock.advance(4.9)
    await gate.introspect(TOKEN)
    assert endpoint.calls == 1
    clock.advance(0.1)
    endpoint.answer = {"active": False}  # revoked meanwhile
    assert reason_of(await gate.introspect(TOKEN)) is Reason.TOKEN_INACTIVE
    assert endpoint.calls == 2


async def test_the_smallest_maximum_of_the_issuers_bounds_the_cache(endpoint: IntrospectionEndpoint) -> None:
    clock = ManualClock(NOW)
    gate = introspector(
        endpoint, clock, issuer_config(max_ttl=60), issuer_config("https://other.example.org", max_ttl=5)
    )
    await gate.introspect(TOKEN)
    clock.advance(5)
    await gate.introspect(TOKEN)
    assert endpoint.calls == 2


async def test_an_inactive_answer_is_cached_briefly_and_never_as_active(endpoint: IntrospectionEndpoint) -> None:
    clock = ManualClock(NOW)
    gate = introspector(endpoint, clock)
    endpoint.answer = {"active": False}
    await gate.introspect(TOKEN)
    endpoint.answer = active_answer()
    clock.advance(INACTIVE_CACHE_SECONDS - 0.1)
    assert reason_of(await gate.introspect(TOKEN)) is Reason.TOKEN_INACTIVE
    assert endpoint.calls == 1
    clock.advance(0.1)
    assert isinstance(await gate.introspect(TOKEN), TokenContext)
    assert endpoint.calls == 2


async def test_a_failure_is_not_cached(endpoint: IntrospectionEndpoint) -> None:
    gate = introspector(endpoint)
    endpoint.answer = httpx.Response(503)
    assert reason_of(await gate.introspect(TOKEN)) is Reason.INTROSPECTION_FAILED
    endpoint.answer = active_answer()
    assert isinstance(await gate.introspect(TOKEN), TokenContext)
    assert endpoint.calls == 2


async def test_an_expired_answer_is_not_cached(endpoint: IntrospectionEndpoint) -> None:
    gate = introspector(endpoint)
    endpoint.answer = active_answer(exp=NOW - 1)
    await gate.introspect(TOKEN)
    endpoint.answer = active_answer()
    assert isinstance(await gate.introspect(TOKEN), TokenContext)
    assert endpoint.calls == 2


async def test_the_cache_is_per_token(endpoint: IntrospectionEndpoint) -> None:
    gate = introspector(endpoint)
    await gate.introspect(TOKEN)
    endpoint.answer = {"active": False}
    assert reason_of(await gate.introspect(TOKEN + "x")) is Reason.TOKEN_INACTIVE
    assert endpoint.calls == 2


# --- several issuers ---------------------------------------------------------------------------------


async def test_the_next_issuer_is_asked_when_the_first_says_inactive() -> None:
    other = "https://other.example.org"
    answers = {ENDPOINT: {"active": False}, f"{other}/introspect": active_answer(iss=other)}
    async with httpx.AsyncClient(
        transport=httpx.MockTransport(lambda request: httpx.Response(200, json=answers[str(request.url)]))
    ) as client:
        gate = Introspector(
            [issuer_config(), issuer_config(other, endpoint=f"{other}/introspect")],
            client,
            FHIR_BASE_URL,
            ManualClock(NOW),
        )
        context = await gate.introspect(TOKEN)
    assert isinstance(context, TokenContext) and context.issuer == other


async def test_a_failure_at_the_first_issuer_is_a_failure_not_a_fall_through() -> None:
    other = "https://other.example.org"
    answers = {ENDPOINT: httpx.Response(502), f"{other}/introspect": httpx.Response(200, json=active_answer(iss=other))}
    async with httpx.AsyncClient(transport=httpx.MockTransport(lambda request: answers[str(request.url)])) as client:
        gate = Introspector(
            [issuer_config(), issuer_config(other, endpoint=f"{other}/introspect")],
            client,
            FHIR_BASE_URL,
            ManualClock(NOW),
        )
        assert reason_of(await gate.introspect(TOKEN)) is Reason.INTROSPECTION_FAILED


# --- the SMART context, as for JWTs ------------------------------------------------------------------------


def verifier_with(endpoint: IntrospectionEndpoint, clock: ManualClock | None = None) -> TokenVerifier:
    """The production wiring: a TokenVerifier that hands opaque tokens to the Introspector."""
    return TokenVerifier({}, TokenPolicy(), FHIR_BASE_URL, introspector=introspector(endpoint, clock))


async def verified(endpoint: IntrospectionEndpoint, **answer: Any) -> TokenContext:
    endpoint.answer = active_answer(**answer)
    context = await verifier_with(endpoint).verify(TOKEN)
    assert isinstance(context, TokenContext), context
    return context


async def test_scope_client_id_and_subject_reach_the_context(endpoint: IntrospectionEndpoint) -> None:
    context = await verified(endpoint, scope="launch/patient  patient/Observation.rs", client_id="app-9", sub="u-7")
    assert (context.scope_text, context.client_id, context.subject) == (
        "launch/patient patient/Observation.rs",
        "app-9",
        "u-7",
    )
    assert context.grants.permits("patient", "Observation", "r")
    assert not context.grants.permits("patient", "Condition", "r")


async def test_the_patient_claim_reaches_the_context_as_an_id(endpoint: IntrospectionEndpoint) -> None:
    assert (await verified(endpoint, patient="Patient/123")).patient == "123"


async def test_a_relative_fhir_user_reaches_the_context(endpoint: IntrospectionEndpoint) -> None:
    assert (await verified(endpoint, fhirUser="Practitioner/9")).fhir_user == "Practitioner/9"


async def test_an_absolute_fhir_user_on_this_server_is_made_relative(endpoint: IntrospectionEndpoint) -> None:
    context = await verified(endpoint, fhirUser=f"{FHIR_BASE_URL}/Practitioner/9")
    assert context.fhir_user == "Practitioner/9"


async def test_an_absolute_fhir_user_on_another_server_stays_absolute(endpoint: IntrospectionEndpoint) -> None:
    foreign = "https://elsewhere.example.org/fhir/Practitioner/9"
    assert (await verified(endpoint, fhirUser=foreign)).fhir_user == foreign


async def test_the_context_issuer_is_the_configured_issuer(endpoint: IntrospectionEndpoint) -> None:
    assert (await verified(endpoint, iss=None)).issuer == ISSUER


async def test_the_context_expires_at_the_answers_exp(endpoint: IntrospectionEndpoint) -> None:
    assert (await verified(endpoint, exp=NOW + 42)).expires_at == NOW + 42


async def test_patient_scopes_without_a_patient_are_refused(endpoint: IntrospectionEndpoint) -> None:
    endpoint.answer = active_answer(patient=None)
    result = await verifier_with(endpoint).verify(TOKEN)
    assert isinstance(result, Refusal) and result.reason is Reason.PATIENT_CONTEXT_MISSING


async def test_a_patient_that_is_not_a_fhir_id_is_refused(endpoint: IntrospectionEndpoint) -> None:
    endpoint.answer = active_answer(patient="123/../456")
    result = await verifier_with(endpoint).verify(TOKEN)
    assert isinstance(result, Refusal) and result.reason is Reason.TOKEN_CLAIMS_INVALID


async def test_an_introspected_token_gives_the_same_context_as_a_jwt_with_the_same_claims(
    endpoint: IntrospectionEndpoint, tmp_path: Path
) -> None:
    exp = int(time.time()) + 600
    claims: dict[str, Any] = {
        "sub": "u-7",
        "client_id": "app-9",
        "fhirUser": f"{FHIR_BASE_URL}/Practitioner/9",
        "exp": exp,
    }
    key = SigningKey(tmp_path)
    async with offline_client() as offline:
        from_jwt = await file_verifier(key, offline).verify(key.token(SCOPE, "Patient/123", **claims))
    endpoint.answer = active_answer(patient="Patient/123", **claims)
    gate = Introspector([issuer_config()], endpoint.client, FHIR_BASE_URL)
    from_introspection = await TokenVerifier({}, TokenPolicy(), FHIR_BASE_URL, introspector=gate).verify(TOKEN)
    assert isinstance(from_jwt, TokenContext) and isinstance(from_introspection, TokenContext)

    def fields(context: TokenContext) -> tuple[Any, ...]:
        return (
            context.issuer,
            context.subject,
            context.client_id,
            context.scope_text,
            context.patient,
            context.fhir_user,
            context.expires_at,
            context.grants.scopes,
        )

    assert fields(from_introspection) == fields(from_jwt)


async def test_a_token_shaped_like_a_jwt_is_never_sent_to_introspection(endpoint: IntrospectionEndpoint) -> None:
    result = await verifier_with(endpoint).verify("aaa.bbb.ccc")
    assert isinstance(result, Refusal) and result.reason is not Reason.TOKEN_INACTIVE
    assert endpoint.calls == 0


# --- through the Authorizer -------------------------------------------------------------------------------


class NoLookups(MembershipLookup):
    """These requests are decided from the token alone: any look-up fails the test."""

    def __init__(self) -> None:
        super().__init__("http://upstream.internal/fhir", LookupConfig(), offline_client())

    async def is_member(self, check: Any) -> Any:
        raise AssertionError(f"unexpected look-up {check}")


async def authorize(endpoint: IntrospectionEndpoint, path: str) -> Decision:
    authorizer = Authorizer(
        BASE_PATH, PublicRoutes(BASE_PATH, ()), verifier_with(endpoint), SETTINGS, NoLookups(), 16_384
    )
    return await authorizer.authorize(http(BASE_PATH + path, headers={"authorization": f"Bearer {TOKEN}"}))


async def test_an_active_opaque_token_reads_its_own_patient(endpoint: IntrospectionEndpoint) -> None:
    decision = await authorize(endpoint, "/Patient/123")
    assert decision.reason is Reason.ALLOWED_CONTEXT_PATIENT
    assert decision.context is not None and decision.context.patient == "123"


async def test_an_active_opaque_token_cannot_search_another_patient(endpoint: IntrospectionEndpoint) -> None:
    decision = await authorize(endpoint, "/Observation?patient=456")
    assert (decision.reason, decision.http_status) == (Reason.COMPARTMENT_OTHER_PATIENT, 403)


async def test_an_inactive_opaque_token_is_a_401_decision(endpoint: IntrospectionEndpoint) -> None:
    endpoint.answer = {"active": False}
    decision = await authorize(endpoint, "/Patient/123")
    assert (decision.reason, decision.http_status, decision.allowed) == (Reason.TOKEN_INACTIVE, 401, False)


async def test_an_introspection_outage_is_a_503_decision(endpoint: IntrospectionEndpoint) -> None:
    endpoint.failure = httpx.ConnectError
    decision = await authorize(endpoint, "/Patient/123")
    assert (decision.reason, decision.http_status, decision.allowed) == (Reason.INTROSPECTION_FAILED, 503, False)
