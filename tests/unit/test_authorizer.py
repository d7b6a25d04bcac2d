"""The Authorizer end to end (real ES256 tokens, jwks_file issuer, fake look-ups), and the
MembershipLookup against a mocked FHIR server."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from smartgate.config.model import HeaderNames
from smartgate.core.reasons import Reason
from smartgate.envoy_glue.check_response import ResponseBuilder
from smartgate.pipeline.authorizer import Authorizer
from smartgate.pipeline.fhir_lookup import FhirLookupError, LookupResult, MembershipLookup
from smartgate.pipeline.public_routes import PublicRoutes
from smartgate.policy.decision import Decision
from smartgate.policy.plan import MembershipCheck, compartment_check
from tests.unit.policy_helpers import (
    BASE_PATH,
    FHIR_BASE_URL,
    SETTINGS,
    UPSTREAM_URL,
    SigningKey,
    file_verifier,
    form_post,
    http,
    lookup_config,
    offline_client,
)

# --- the Authorizer with a fake look-up ------------------------------------------------------------------


class FakeLookup(MembershipLookup):
    """Answers from a fixed outcome and records every check it was asked."""

    def __init__(self, outcome: bool | Exception = True) -> None:
        self.outcome = outcome
        self.checks: list[MembershipCheck] = []
        self.binary_targets: dict[str, tuple[str, str] | None] = {}

    async def is_member(self, check: MembershipCheck) -> LookupResult:
        self.checks.append(check)
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return LookupResult(self.outcome, False)

    async def binary_security_context(self, resource_id: str, fhir_base_url: str) -> tuple[str, str] | None:
        return self.binary_targets[resource_id]


@dataclass
class Harness:
    key: SigningKey
    lookup: FakeLookup
    authorizer: Authorizer
    tokens: dict[str, str] = field(default_factory=dict)

    async def decide(
        self, path: str, token: str | None = None, method: str = "GET", headers: dict[str, str] | None = None
    ) -> Decision:
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["authorization"] = f"Bearer {token}"
        return await self.authorizer.authorize(http(BASE_PATH + path, method, all_headers))


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    key = SigningKey(tmp_path)
    lookup = FakeLookup()
    async with offline_client() as client:
        authorizer = Authorizer(
            BASE_PATH, PublicRoutes(BASE_PATH, ()), file_verifier(key, client), SETTINGS, lookup, 16_384
        )
        yield Harness(key, lookup, authorizer)


async def test_missing_token_is_401(harness: Harness) -> None:
    decision = await harness.decide("/Observation?patient=123")
    assert decision.reason is Reason.TOKEN_MISSING
    assert decision.http_status == 401


async def test_another_authentication_scheme_is_401_without_an_error_code(harness: Harness) -> None:
    decision = await harness.decide("/Observation?patient=123", headers={"authorization": "Basic dXNlcjpwdw=="})
    assert decision.reason is Reason.AUTHENTICATION_SCHEME_UNSUPPORTED


async def test_a_bearer_header_without_a_token_is_400(harness: Harness) -> None:
    decision = await harness.decide("/Observation?patient=123", headers={"authorization": "Bearer "})
    assert decision.reason is Reason.AUTHORIZATION_HEADER_MALFORMED


async def test_garbage_token_is_401(harness: Harness) -> None:
    decision = await harness.decide("/Observation?patient=123", "not-a-jwt")
    assert decision.reason is Reason.TOKEN_MALFORMED


async def test_expired_token_is_401(harness: Harness) -> None:
    decision = await harness.decide("/Observation?patient=123", harness.key.token(lifetime=-3600))
    assert decision.reason is Reason.TOKEN_EXPIRED


async def test_token_for_another_audience_is_401(harness: Harness) -> None:
    token = harness.key.token(aud="https://other.example.org/fhir")
    assert (await harness.decide("/Observation?patient=123", token)).reason is Reason.TOKEN_AUDIENCE_MISMATCH


async def test_token_signed_by_another_key_is_401(harness: Harness, tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    other = SigningKey(tmp_path / "other")  # same kid, different key
    decision = await harness.decide("/Observation?patient=123", other.token())
    assert decision.reason is Reason.TOKEN_BAD_SIGNATURE


async def test_bound_search_is_allowed_end_to_end(harness: Harness) -> None:
    decision = await harness.decide("/Observation?patient=123", harness.key.token())
    assert decision.reason is Reason.ALLOWED_COMPARTMENT_SEARCH
    assert decision.context is not None
    assert (decision.context.patient, decision.context.client_id, decision.context.issuer) == (
        "123",
        "app-1",
        "https://issuer.example.org",
    )
    assert harness.lookup.checks == []


async def test_patient_claim_as_reference_is_normalised(harness: Harness) -> None:
    decision = await harness.decide("/Patient/123", harness.key.token(patient="Patient/123"))
    assert decision.reason is Reason.ALLOWED_CONTEXT_PATIENT


async def test_other_patients_search_is_denied_end_to_end(harness: Harness) -> None:
    decision = await harness.decide("/Observation?patient=456", harness.key.token())
    assert decision.reason is Reason.COMPARTMENT_OTHER_PATIENT
    assert decision.context is not None


async def test_request_errors_keep_the_verified_context(harness: Harness) -> None:
    decision = await harness.decide("/Observation?patient=123&access_token=x", harness.key.token())
    assert decision.reason is Reason.TOKEN_NOT_IN_HEADER
    assert decision.context is not None and decision.context.patient == "123"


async def test_unknown_type_is_400_after_authentication(harness: Harness) -> None:
    assert (await harness.decide("/Foo/1", harness.key.token())).reason is Reason.UNKNOWN_RESOURCE_TYPE


async def test_path_outside_base_is_403(harness: Harness) -> None:
    decision = await harness.authorizer.authorize(
        http("/admin", "GET", {"authorization": f"Bearer {harness.key.token()}"})
    )
    assert decision.reason is Reason.PATH_OUTSIDE_BASE


async def test_patient_scope_without_patient_claim_is_401(harness: Harness) -> None:
    decision = await harness.decide("/Observation?patient=123", harness.key.token(patient=None))
    assert decision.reason is Reason.PATIENT_CONTEXT_MISSING


async def test_user_scope_token_is_allowed_by_scope(harness: Harness) -> None:
    decision = await harness.decide("/Observation/abc", harness.key.token("openid user/Observation.rs", None))
    assert decision.reason is Reason.ALLOWED_BY_SCOPE
    assert harness.lookup.checks == []


async def test_compartment_member_is_allowed(harness: Harness) -> None:
    decision = await harness.decide("/Observation/abc", harness.key.token())
    assert decision.reason is Reason.ALLOWED_COMPARTMENT_MEMBER
    assert (decision.interaction, decision.resource_type) == ("read", "Observation")
    assert harness.lookup.checks == [compartment_check("Observation", "abc", "123", ("subject", "performer"))]


async def test_compartment_non_member_is_denied(harness: Harness) -> None:
    harness.lookup.outcome = False
    decision = await harness.decide("/Observation/abc", harness.key.token())
    assert decision.reason is Reason.NOT_IN_COMPARTMENT
    assert decision.http_status == 403


async def test_lookup_failure_is_503(harness: Harness) -> None:
    harness.lookup.outcome = FhirLookupError("upstream down")
    decision = await harness.decide("/Observation/abc", harness.key.token())
    assert decision.reason is Reason.LOOKUP_FAILED
    assert decision.http_status == 503
    assert decision.context is not None


async def test_unexpected_exception_is_an_internal_error_deny(harness: Harness) -> None:
    harness.lookup.outcome = RuntimeError("boom")
    decision = await harness.decide("/Observation/abc", harness.key.token())
    assert decision.reason is Reason.INTERNAL_ERROR
    assert not decision.allowed


async def test_binary_whose_security_context_is_the_patient_is_allowed(harness: Harness) -> None:
    harness.lookup.binary_targets["b1"] = ("Patient", "123")
    assert (await harness.decide("/Binary/b1", harness.key.token())).reason is Reason.ALLOWED_COMPARTMENT_MEMBER
    assert harness.lookup.checks == []


async def test_binary_whose_security_context_is_another_patient_is_denied(harness: Harness) -> None:
    harness.lookup.binary_targets["b1"] = ("Patient", "456")
    harness.lookup.outcome = False  # Patient/456 does not link to Patient/123
    assert (await harness.decide("/Binary/b1", harness.key.token())).reason is Reason.NOT_IN_COMPARTMENT
    assert harness.lookup.checks == []  # another Patient is never proven while links are not followed


async def test_binary_of_a_linked_patient_is_denied_by_default(harness: Harness) -> None:
    harness.lookup.binary_targets["b1"] = ("Patient", "789")
    harness.lookup.outcome = True  # Patient/789 links to Patient/123: the look-up would find it
    assert (await harness.decide("/Binary/b1", harness.key.token())).reason is Reason.NOT_IN_COMPARTMENT
    assert harness.lookup.checks == []


async def test_binary_of_a_linked_patient_follows_the_link_when_configured(tmp_path: Path) -> None:
    key = SigningKey(tmp_path)
    lookup = FakeLookup(outcome=True)
    settings = dataclasses.replace(SETTINGS, follow_patient_links=True)
    lookup.binary_targets["b1"] = ("Patient", "789")
    async with offline_client() as client:
        authorizer = Authorizer(
            BASE_PATH, PublicRoutes(BASE_PATH, ()), file_verifier(key, client), settings, lookup, 16_384
        )
        decision = await authorizer.authorize(
            http(f"{BASE_PATH}/Binary/b1", "GET", {"authorization": f"Bearer {key.token()}"})
        )
    assert decision.reason is Reason.ALLOWED_COMPARTMENT_MEMBER
    assert lookup.checks == [compartment_check("Patient", "789", "123", ("link",))]


async def test_binary_without_security_context_is_denied(harness: Harness) -> None:
    harness.lookup.binary_targets["b1"] = None
    assert (await harness.decide("/Binary/b1", harness.key.token())).reason is Reason.NOT_IN_COMPARTMENT


async def test_binary_of_a_compartment_resource_needs_its_membership(harness: Harness) -> None:
    harness.lookup.binary_targets["b1"] = ("DocumentReference", "d1")
    harness.lookup.outcome = False
    assert (await harness.decide("/Binary/b1", harness.key.token())).reason is Reason.NOT_IN_COMPARTMENT
    assert [(c.resource_type, c.resource_id) for c in harness.lookup.checks] == [("DocumentReference", "d1")]


async def test_binary_of_an_extra_bound_type_needs_its_membership_through_its_parameter(harness: Harness) -> None:
    harness.lookup.binary_targets["b1"] = ("Device", "d1")  # compartment.extra_binding_params: {Device: [patient]}
    harness.lookup.outcome = False
    assert (await harness.decide("/Binary/b1", harness.key.token())).reason is Reason.NOT_IN_COMPARTMENT
    assert harness.lookup.checks == [compartment_check("Device", "d1", "123", ("patient",))]


async def test_own_patient_read_needs_no_lookup(harness: Harness) -> None:
    assert (await harness.decide("/Patient/123", harness.key.token())).reason is Reason.ALLOWED_CONTEXT_PATIENT
    assert harness.lookup.checks == []


async def test_post_search_body_is_checked_end_to_end(harness: Harness) -> None:
    request = form_post(
        f"{BASE_PATH}/Observation/_search", b"subject=Patient%2F456", authorization=f"Bearer {harness.key.token()}"
    )
    assert (await harness.authorizer.authorize(request)).reason is Reason.COMPARTMENT_OTHER_PATIENT


async def test_responses_never_contain_the_token(harness: Harness) -> None:
    builder = ResponseBuilder(HeaderNames(), FHIR_BASE_URL)
    good = harness.key.token()
    cases = [
        ("/Observation?patient=123", good),
        ("/Observation?patient=456", good),
        ("/Observation?patient=123&access_token=" + good, good),
        ("/Observation?patient=123", harness.key.token(lifetime=-3600)),
        ("/Observation?patient=123", good[:-4] + "AAAA"),
    ]
    for path, token in cases:
        response = builder.build(await harness.decide(path, token))
        serialized = response.SerializeToString()
        for part in token.split("."):
            assert part.encode() not in serialized, path


# --- MembershipLookup against a mocked FHIR server ----------------------------------------------------------


Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


class FhirServer:
    """A mock FHIR server answering ``_summary=count`` searches from a set of member patients."""

    def __init__(self, members: dict[tuple[str, str], set[str]] | None = None, honours_params: bool = True) -> None:
        self.members = members if members is not None else {("subject", "abc"): {"Patient/123"}}
        self.honours_params = honours_params
        self.requests: list[httpx.Request] = []
        self.gate: asyncio.Event | None = None
        self.override: Callable[[httpx.Request], httpx.Response] | None = None

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.gate is not None:
            await self.gate.wait()
        if self.override is not None:
            return self.override(request)
        query = dict(parse_qsl(request.url.query.decode()))
        resource_id = query["_id"]
        found = 1 if not self.honours_params else 0
        for (param, member_id), patients in self.members.items():
            if member_id == resource_id and query.get(param) in patients:
                found = 1
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset", "total": found})

    def queries(self) -> list[dict[str, str]]:
        return [dict(parse_qsl(request.url.query.decode())) for request in self.requests]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


CHECK = compartment_check("Observation", "abc", "123", ("subject", "performer"))


@pytest.fixture
async def client_for() -> AsyncIterator[Callable[[FhirServer], httpx.AsyncClient]]:
    clients: list[httpx.AsyncClient] = []

    def make(server: FhirServer) -> httpx.AsyncClient:
        client = httpx.AsyncClient(transport=httpx.MockTransport(server))
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


def make_lookup(
    server: FhirServer, client_for: Callable[[FhirServer], httpx.AsyncClient], clock: Clock | None = None, **config: Any
) -> MembershipLookup:
    return MembershipLookup(UPSTREAM_URL + "/", lookup_config(**config), client_for(server), clock or Clock())


async def test_lookup_query_shape(client_for: Callable[[FhirServer], httpx.AsyncClient]) -> None:
    server = FhirServer()
    result = await make_lookup(server, client_for, headers={"x-api-key": "k"}).is_member(CHECK)
    assert result == LookupResult(True, False)
    first = server.requests[0]
    assert first.method == "GET"
    assert urlsplit(str(first.url))._replace(query="").geturl() == f"{UPSTREAM_URL}/Observation"
    assert server.queries()[0] == {"_id": "abc", "subject": "Patient/123", "_summary": "count"}
    assert first.headers["accept"] == "application/fhir+json"
    assert first.headers["x-api-key"] == "k"


async def test_lookup_member_is_probed_once_with_an_impossible_patient(
    client_for: Callable[[FhirServer], httpx.AsyncClient],
) -> None:
    server = FhirServer()
    assert (await make_lookup(server, client_for).is_member(CHECK)).member
    queries = server.queries()
    assert len(queries) == 2
    assert queries[1]["_id"] == "abc"
    assert queries[1]["subject"].startswith("Patient/smartgate-probe-")


async def test_lookup_tries_each_param_until_one_finds_it(
    client_for: Callable[[FhirServer], httpx.AsyncClient],
) -> None:
    server = FhirServer({("performer", "abc"): {"Patient/123"}})
    assert (await make_lookup(server, client_for).is_member(CHECK)).member
    assert [(q.get("subject"), q.get("performer")) for q in server.queries()[:2]] == [
        ("Patient/123", None),
        (None, "Patient/123"),
    ]


async def test_lookup_non_member(client_for: Callable[[FhirServer], httpx.AsyncClient]) -> None:
    server = FhirServer({})
    result = await make_lookup(server, client_for).is_member(CHECK)
    assert result == LookupResult(False, False)
    assert len(server.requests) == 2  # subject, then performer; no probe


async def test_lookup_cache_hit_within_ttl(client_for: Callable[[FhirServer], httpx.AsyncClient]) -> None:
    server, clock = FhirServer(), Clock()
    lookup = make_lookup(server, client_for, clock, cache_ttl_seconds=30)
    await lookup.is_member(CHECK)
    sent = len(server.requests)
    clock.now += 29
    assert await lookup.is_member(CHECK) == LookupResult(True, True)
    assert len(server.requests) == sent


async def test_lookup_cache_expires_after_ttl(client_for: Callable[[FhirServer], httpx.AsyncClient]) -> None:
    server, clock = FhirServer(), Clock()
    lookup = make_lookup(server, client_for, clock, cache_ttl_seconds=30)
    await lookup.is_member(CHECK)
    sent = len(server.requests)
    clock.now += 30
    assert await lookup.is_member(CHECK) == LookupResult(True, False)
    assert len(server.requests) == sent + 1  # the probe is not repeated


async def test_lookup_caches_non_members_too(client_for: Callable[[FhirServer], httpx.AsyncClient]) -> None:
    server = FhirServer({})
    lookup = make_lookup(server, client_for)
    await lookup.is_member(CHECK)
    assert await lookup.is_member(CHECK) == LookupResult(False, True)


async def test_lookup_cache_is_per_patient_and_resource(client_for: Callable[[FhirServer], httpx.AsyncClient]) -> None:
    server = FhirServer()
    lookup = make_lookup(server, client_for)
    await lookup.is_member(CHECK)
    other_patient = compartment_check("Observation", "abc", "456", ("subject", "performer"))
    assert await lookup.is_member(other_patient) == LookupResult(False, False)


async def test_concurrent_identical_lookups_share_one_request(
    client_for: Callable[[FhirServer], httpx.AsyncClient],
) -> None:
    server = FhirServer({})
    server.gate = asyncio.Event()
    lookup = make_lookup(server, client_for)
    tasks = [asyncio.create_task(lookup.is_member(CHECK)) for _ in range(5)]
    await asyncio.sleep(0.01)
    assert len(server.requests) == 1
    server.gate.set()
    results = await asyncio.gather(*tasks)
    assert [r.member for r in results] == [False] * 5
    assert len(server.requests) == 2  # subject then performer, once


async def test_concurrent_lookups_share_a_failure(client_for: Callable[[FhirServer], httpx.AsyncClient]) -> None:
    server = FhirServer()
    server.gate = asyncio.Event()
    server.override = lambda request: httpx.Response(500)
    lookup = make_lookup(server, client_for)
    tasks = [asyncio.create_task(lookup.is_member(CHECK)) for _ in range(3)]
    await asyncio.sleep(0.01)
    server.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, FhirLookupError) for r in results)
    assert len(server.requests) == 1


async def test_failures_are_not_cached(client_for: Callable[[FhirServer], httpx.AsyncClient]) -> None:
    server = FhirServer()
    server.override = lambda request: httpx.Response(503)
    lookup = make_lookup(server, client_for)
    with pytest.raises(FhirLookupError):
        await lookup.is_member(CHECK)
    server.override = None
    assert await lookup.is_member(CHECK) == LookupResult(True, False)


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(404, json={"resourceType": "OperationOutcome"}),
        httpx.Response(500),
        httpx.Response(302, headers={"location": "http://elsewhere/"}),
        httpx.Response(200, text="<html>not json</html>"),
        httpx.Response(200, json={"resourceType": "OperationOutcome"}),
        httpx.Response(200, json=[{"resourceType": "Bundle"}]),
        httpx.Response(200, json={"resourceType": "Bundle", "entry": {"not": "a list"}}),
    ],
    ids=["404", "500", "redirect", "not-json", "not-bundle", "json-list", "bad-entries"],
)
async def test_bad_answers_are_lookup_errors(
    client_for: Callable[[FhirServer], httpx.AsyncClient], response: httpx.Response
) -> None:
    server = FhirServer()
    server.override = lambda request: response
    with pytest.raises(FhirLookupError):
        await make_lookup(server, client_for).is_member(CHECK)


async def test_transport_errors_are_lookup_errors(client_for: Callable[[FhirServer], httpx.AsyncClient]) -> None:
    server = FhirServer()

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    server.override = refuse
    with pytest.raises(FhirLookupError):
        await make_lookup(server, client_for).is_member(CHECK)


async def test_bundle_without_total_counts_entries(client_for: Callable[[FhirServer], httpx.AsyncClient]) -> None:
    server = FhirServer()
    calls = iter([1, 0])
    server.override = lambda request: httpx.Response(
        200, content=json.dumps({"resourceType": "Bundle", "entry": [{}] * next(calls)}).encode()
    )
    assert (await make_lookup(server, client_for).is_member(CHECK)).member


async def test_boolean_total_is_not_a_count(client_for: Callable[[FhirServer], httpx.AsyncClient]) -> None:
    server = FhirServer()
    server.override = lambda request: httpx.Response(200, json={"resourceType": "Bundle", "total": True})
    assert not (await make_lookup(server, client_for).is_member(CHECK)).member


async def test_lenient_server_that_ignores_the_param_is_a_lookup_error(
    client_for: Callable[[FhirServer], httpx.AsyncClient],
) -> None:
    server = FhirServer(honours_params=False)
    with pytest.raises(FhirLookupError):
        await make_lookup(server, client_for).is_member(CHECK)


async def test_lenient_server_that_ignores_a_granular_constraint_is_a_lookup_error(
    client_for: Callable[[FhirServer], httpx.AsyncClient],
) -> None:
    lab = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"
    server = FhirServer()  # honours subject, knows nothing of category (so ignores it)
    check = MembershipCheck("Observation", "abc", ((("subject", "Patient/123"), ("category", lab)),))
    with pytest.raises(FhirLookupError):
        await make_lookup(server, client_for).is_member(check)
    probes = [q for q in server.queries() if q.get("category", lab) != lab]
    assert probes and all(q["category"].startswith("urn:smartgate:probe|") for q in probes)


async def test_lenient_server_failure_is_not_cached_as_member(
    client_for: Callable[[FhirServer], httpx.AsyncClient],
) -> None:
    server = FhirServer(honours_params=False)
    lookup = make_lookup(server, client_for)
    for _ in range(2):
        with pytest.raises(FhirLookupError):
            await lookup.is_member(CHECK)


async def test_lookup_error_through_the_authorizer_is_503(
    tmp_path: Path, client_for: Callable[[FhirServer], httpx.AsyncClient]
) -> None:
    key = SigningKey(tmp_path)
    server = FhirServer(honours_params=False)
    async with offline_client() as offline:
        authorizer = Authorizer(
            BASE_PATH,
            PublicRoutes(BASE_PATH, ()),
            file_verifier(key, offline),
            SETTINGS,
            make_lookup(server, client_for),
            16_384,
        )
        decision = await authorizer.authorize(
            http(f"{BASE_PATH}/Observation/abc", "GET", {"authorization": f"Bearer {key.token()}"})
        )
    assert decision.reason is Reason.LOOKUP_FAILED


async def test_real_lookup_member_through_the_authorizer(
    tmp_path: Path, client_for: Callable[[FhirServer], httpx.AsyncClient]
) -> None:
    key = SigningKey(tmp_path)
    server = FhirServer()
    async with offline_client() as offline:
        authorizer = Authorizer(
            BASE_PATH,
            PublicRoutes(BASE_PATH, ()),
            file_verifier(key, offline),
            SETTINGS,
            make_lookup(server, client_for),
            16_384,
        )
        member = await authorizer.authorize(
            http(f"{BASE_PATH}/Observation/abc", "GET", {"authorization": f"Bearer {key.token()}"})
        )
        other = await authorizer.authorize(
            http(f"{BASE_PATH}/Observation/xyz", "GET", {"authorization": f"Bearer {key.token()}"})
        )
    assert member.reason is Reason.ALLOWED_COMPARTMENT_MEMBER
    assert other.reason is Reason.NOT_IN_COMPARTMENT
