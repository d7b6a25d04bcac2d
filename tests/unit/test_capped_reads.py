"""Every body smartgate reads from the FHIR server or the identity provider has a size cap (issue 16,
item 2): reading stops past it, and the answer counts as a failure (deny), never as an allow. The Binary
look-up asks for the securityContext alone, not the base64 content."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from smartgate.config.model import IntrospectionConfig, IssuerConfig, LookupConfig
from smartgate.core.reasons import Reason, Refusal
from smartgate.pipeline.fhir_lookup import FhirLookupError, MembershipLookup
from smartgate.policy.plan import MembershipCheck
from smartgate.tokens.introspection import Introspector

UPSTREAM = "http://fhir.internal/fhir"
PUBLIC = "https://fhir.example.org/r4"
CHUNK = b" " * 65_536


class EndlessBody(httpx.AsyncByteStream):
    """A 200 answer that starts like JSON and never ends; counts the bytes it was asked for."""

    def __init__(self) -> None:
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b'{"resourceType": "Bundle", "total": 1, "x": "'
        while True:
            self.sent += len(CHUNK)
            yield CHUNK


def endless_client(seen: list[httpx.Request], body: EndlessBody) -> httpx.AsyncClient:
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, stream=body)

    return httpx.AsyncClient(transport=httpx.MockTransport(answer))


@pytest.mark.parametrize("ask", ["member", "versions", "exists", "binary"])
async def test_an_endless_fhir_answer_fails_the_lookup_after_the_cap(ask: str) -> None:
    body, seen = EndlessBody(), list[httpx.Request]()
    async with endless_client(seen, body) as client:
        lookup = MembershipLookup(UPSTREAM, LookupConfig(), client)
        with pytest.raises(FhirLookupError, match="more than"):
            if ask == "member":
                await lookup.is_member(MembershipCheck("Observation", "o1", ((("subject", "Patient/123"),),)))
            elif ask == "versions":
                await lookup.versions("Observation", "o1", None)
            elif ask == "exists":
                await lookup.exists("Observation", "o1")
            else:
                await lookup.binary_security_context("b1", PUBLIC)
    assert body.sent <= 17 * 1024 * 1024


async def test_the_binary_lookup_asks_for_the_security_context_alone() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200, json={"resourceType": "Binary", "id": "b1", "securityContext": {"reference": "Patient/123"}}
        )

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        found = await MembershipLookup(UPSTREAM, LookupConfig(), client).binary_security_context("b1", PUBLIC)
    assert found == ("Patient", "123")
    assert seen[0].url.path == "/fhir/Binary/b1"
    assert seen[0].url.params.get("_elements") == "securityContext"


async def test_a_binary_answer_with_its_content_is_refused_past_a_small_cap() -> None:
    def answer(request: httpx.Request) -> httpx.Response:  # a server that ignores _elements
        return httpx.Response(
            200,
            json={
                "resourceType": "Binary",
                "id": "b1",
                "data": "QUJD" * 100_000,
                "securityContext": {"reference": "Patient/123"},
            },
        )

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        with pytest.raises(FhirLookupError, match="more than"):
            await MembershipLookup(UPSTREAM, LookupConfig(), client).binary_security_context("b1", PUBLIC)


async def test_an_endless_introspection_answer_is_introspection_failed() -> None:
    body, seen = EndlessBody(), list[httpx.Request]()
    issuer = IssuerConfig(
        issuer="https://issuer.example.org",
        audiences=(PUBLIC,),
        introspection=IntrospectionConfig(
            "https://issuer.example.org/introspect", "c", "s", "client_secret_basic", 60.0, 2.0
        ),
    )
    async with endless_client(seen, body) as client:
        result = await Introspector([issuer], client, PUBLIC).introspect("opaque-token-0123456789")
    assert isinstance(result, Refusal) and result.reason is Reason.INTROSPECTION_FAILED
    assert body.sent <= 128 * 1024
