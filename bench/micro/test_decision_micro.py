"""Decision micro-benchmarks (pytest-benchmark). Each asserts the answer it times, so with
``--benchmark-disable`` they run once as ordinary tests.

Targets (issue 6): the pure decision for a cached token p50 ≤ 30 µs; a fresh RS256 token ≤ 100 µs.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import tokens
from conftest import AUDIENCE, run_now
from envoy.service.auth.v3 import external_auth_pb2

from smartgate.config.model import Config
from smartgate.core.http import HttpRequest
from smartgate.core.reasons import Reason
from smartgate.envoy_glue.check_request import from_check_request
from smartgate.fhir.request import FhirRequest, parse_fhir_request
from smartgate.pipeline.authorizer import Authorizer
from smartgate.pipeline.fhir_lookup import MembershipLookup
from smartgate.pipeline.public_routes import PublicRoutes
from smartgate.policy import PolicySettings, decide
from smartgate.policy.decision import Decision
from smartgate.tokens.context import TokenContext
from smartgate.tokens.scopes import parse_scopes
from smartgate.tokens.verifier import TokenVerifier

SEARCH = "/fhir/Observation?patient=123&category=laboratory&_count=50&_sort=-date"
POOL = 600  # distinct tokens per algorithm: every round verifies one never seen before


def _headers(token: str) -> dict[str, str]:
    """20 headers, as Envoy sends them for a browser-ish client."""
    headers = {
        ":authority": "fhir.example.org",
        ":method": "GET",
        ":path": SEARCH,
        ":scheme": "https",
        "authorization": f"Bearer {token}",
        "accept": "application/fhir+json",
        "accept-encoding": "gzip, br",
        "accept-language": "en-GB,en;q=0.9",
        "user-agent": "Mozilla/5.0 (X11; Linux x86_64) bench/1.0",
        "x-forwarded-proto": "https",
        "x-request-id": "6f1f7c1e-2b5c-4d0b-9d3e-9a8d1f0c2b7a",
        "x-forwarded-for": "203.0.113.7",
        "x-envoy-expected-rq-timeout-ms": "60000",
        "cache-control": "no-cache",
        "origin": "https://app.example.org",
        "referer": "https://app.example.org/chart",
        "sec-fetch-mode": "cors",
        "sec-fetch-site": "same-site",
        "sec-fetch-dest": "empty",
        "dnt": "1",
    }
    assert len(headers) == 20
    return headers


def _check_request(token: str) -> external_auth_pb2.CheckRequest:
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method, http.path, http.host = "GET", SEARCH, "fhir.example.org"
    http.scheme, http.protocol = "https", "HTTP/1.1"
    http.headers.update(_headers(token))
    return request


@pytest.fixture()
def context(verifier: TokenVerifier, keys: tokens.BenchKeys) -> TokenContext:
    verified = run_now(verifier.verify(tokens.sign(keys, "ES256", AUDIENCE)))
    assert isinstance(verified, TokenContext)
    return verified


def test_pure_decision_for_a_cached_token(benchmark: Any, context: TokenContext) -> None:
    """FhirRequest + TokenContext -> Decision: the policy alone, no I/O."""
    request = parse_fhir_request(HttpRequest("GET", SEARCH, _headers("x")), "/fhir")
    assert isinstance(request, FhirRequest)
    settings = PolicySettings(AUDIENCE)
    decision = benchmark(decide, request, context, settings)
    assert isinstance(decision, Decision) and decision.reason is Reason.ALLOWED_COMPARTMENT_SEARCH


def test_whole_decision_path_for_a_cached_token(
    benchmark: Any, verifier: TokenVerifier, config: Config, keys: tokens.BenchKeys
) -> None:
    """HttpRequest -> Decision through the Authorizer: bearer, token cache hit, classification, policy."""
    token = tokens.sign(keys, "ES256", AUDIENCE)
    authorizer = Authorizer(
        "/fhir",
        PublicRoutes("/fhir", config.public_routes),
        verifier,
        PolicySettings(AUDIENCE),
        MembershipLookup("http://127.0.0.1:9/fhir", config.fhir.lookup, None),  # type: ignore[arg-type]
        config.tokens.max_token_bytes,
    )
    http = HttpRequest("GET", SEARCH, _headers(token))
    assert run_now(authorizer.authorize(http)).allowed  # the token is now cached
    decision = benchmark(lambda: run_now(authorizer.authorize(http)))
    assert decision.reason is Reason.ALLOWED_COMPARTMENT_SEARCH


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_verification_of_a_fresh_token(
    benchmark: Any, verifier: TokenVerifier, keys: tokens.BenchKeys, alg: str
) -> None:
    """A token never seen before: parse, check the header, verify the signature (warm JWKS), build the context."""
    pool = iter(tokens.token_pool(keys, alg, AUDIENCE, POOL))
    results: list[object] = []

    def next_token() -> tuple[tuple[str], dict[str, Any]]:
        return (next(pool),), {}

    def verify(token: str) -> None:
        results.append(run_now(verifier.verify(token)))

    benchmark.pedantic(verify, setup=next_token, rounds=POOL - 10, iterations=1, warmup_rounds=5)
    assert results and all(isinstance(result, TokenContext) for result in results)
    assert verifier.cache_hits == 0


def test_check_request_with_20_headers_to_fhir_request(benchmark: Any) -> None:
    """CheckRequest (protobuf) -> HttpRequest -> FhirRequest."""
    request = _check_request("eyJhbGciOiJFUzI1NiJ9." + "a" * 400 + ".sig")

    def parse() -> FhirRequest:
        classified = parse_fhir_request(from_check_request(request), "/fhir")
        assert isinstance(classified, FhirRequest)
        return classified

    classified = benchmark(parse)
    assert classified.resource_type == "Observation" and len(classified.params) == 4


SCOPES = (
    "launch/patient openid fhirUser offline_access patient/Observation.rs patient/Condition.rs "
    "patient/MedicationRequest.rs patient/AllergyIntolerance.read patient/Patient.read "
    "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory"
)


def test_scope_parsing(benchmark: Any) -> None:
    grants = benchmark(parse_scopes, [SCOPES])
    assert grants.permits("patient", "Observation", "s")
    assert not grants.permits("patient", "Encounter", "r")


def test_token_pool_is_distinct(keys: tokens.BenchKeys) -> None:
    """The fresh-token figures rely on every token being new."""
    pool = tokens.token_pool(keys, "ES256", AUDIENCE, 50)
    assert len(set(pool)) == 50 and len(set(itertools.islice(pool, 10))) == 10
