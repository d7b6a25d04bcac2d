"""Routes that need no token: built-in discovery routes, CORS preflight, operator routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from smartgate.config.model import PublicRoute
from smartgate.core.reasons import Reason
from smartgate.pipeline.authorizer import Authorizer
from smartgate.pipeline.fhir_lookup import LookupResult, MembershipLookup
from smartgate.pipeline.public_routes import PublicRoutes
from smartgate.policy.plan import MembershipCheck
from tests.unit.policy_helpers import (
    BASE_PATH,
    SETTINGS,
    SigningKey,
    file_verifier,
    http,
    offline_client,
    public_route,
)

PREFLIGHT = {"origin": "https://app.example.org", "access-control-request-method": "GET"}


def routes(*extra: PublicRoute) -> PublicRoutes:
    return PublicRoutes(BASE_PATH, extra)


# --- PublicRoutes.matches ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/r4/metadata", "/r4/metadata?_format=json", "/r4/metadata/", "/r4/.well-known/smart-configuration"]
)
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_built_in_routes_are_public(path: str, method: str) -> None:
    assert routes().matches(http(path, method))


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_built_in_routes_are_public_for_reads_only(method: str) -> None:
    assert not routes().matches(http("/r4/metadata", method))


@pytest.mark.parametrize(
    "path",
    [
        "/metadata",
        "/r4x/metadata",
        "/r4",
        "/r4/",
        "/r4/metadata/x",
        "/r4/metadata2",
        "/r4/Metadata",
        "/r4/metadat%61",
        "/r4//metadata",
        "/r4/Patient/metadata",
        "/r4/.well-known/smart-configuration.json",
        "/r4/Patient/123",
    ],
)
def test_other_paths_are_not_public(path: str) -> None:
    assert not routes().matches(http(path))


def test_cors_preflight_is_public() -> None:
    assert routes().matches(http("/r4/Patient/123", "OPTIONS", PREFLIGHT))


@pytest.mark.parametrize("missing", ["origin", "access-control-request-method"])
def test_options_without_preflight_headers_is_not_public(missing: str) -> None:
    headers = {name: value for name, value in PREFLIGHT.items() if name != missing}
    assert not routes().matches(http("/r4/Patient/123", "OPTIONS", headers))


def test_operator_route_is_exact_by_default() -> None:
    public = routes(public_route("/Organization"))
    assert public.matches(http("/r4/Organization"))
    assert public.matches(http("/r4/Organization?name=Acme"))
    assert not public.matches(http("/r4/Organization/1"))


def test_operator_prefix_route_matches_below_it() -> None:
    public = routes(public_route("/Practitioner", prefix=True))
    assert public.matches(http("/r4/Practitioner"))
    assert public.matches(http("/r4/Practitioner/1"))
    assert not public.matches(http("/r4/PractitionerRole/1"))


def test_operator_route_methods() -> None:
    public = routes(public_route("/Organization", methods=("GET",)))
    assert public.matches(http("/r4/Organization"))
    assert not public.matches(http("/r4/Organization", "HEAD"))
    assert not public.matches(http("/r4/Organization", "POST"))


def test_escaped_path_is_never_public() -> None:
    assert not routes(public_route("/Practitioner", prefix=True)).matches(http("/r4/Practitioner/%2E%2E/Patient/1"))


@pytest.mark.parametrize(
    "path",
    ["/r4/Practitioner/../Patient/456", "/r4/Practitioner/x/../../Patient/456", "/r4/Practitioner//../Patient/456"],
)
def test_prefix_route_does_not_match_dot_segments(path: str) -> None:
    assert not routes(public_route("/Practitioner", prefix=True)).matches(http(path))


def test_root_base_path() -> None:
    public = PublicRoutes("", ())
    assert public.matches(http("/metadata"))
    assert not public.matches(http("/Patient/1"))


# --- through the Authorizer --------------------------------------------------------------------------------


class _NeverLookup(MembershipLookup):
    def __init__(self) -> None:
        pass

    async def is_member(self, check: MembershipCheck) -> LookupResult:
        raise AssertionError("no look-up expected")


@pytest.fixture
async def authorizer(tmp_path: Path) -> AsyncIterator[Authorizer]:
    async with offline_client() as client:
        yield Authorizer(
            BASE_PATH,
            routes(public_route("/Practitioner", prefix=True)),
            file_verifier(SigningKey(tmp_path), client),
            SETTINGS,
            _NeverLookup(),
            16_384,
        )


@pytest.mark.parametrize(
    ("path", "method", "headers"),
    [
        ("/r4/metadata", "GET", {}),
        ("/r4/.well-known/smart-configuration", "GET", {}),
        ("/r4/Practitioner/1", "GET", {}),
        ("/r4/Patient/123", "OPTIONS", PREFLIGHT),
    ],
)
async def test_public_routes_pass_without_token(
    authorizer: Authorizer, path: str, method: str, headers: dict[str, str]
) -> None:
    decision = await authorizer.authorize(http(path, method, headers))
    assert decision.reason is Reason.ALLOWED_PUBLIC_ROUTE
    assert decision.context is None


async def test_public_routes_pass_even_with_a_bad_token(authorizer: Authorizer) -> None:
    decision = await authorizer.authorize(http("/r4/metadata", headers={"authorization": "Bearer not.a.jwt"}))
    assert decision.reason is Reason.ALLOWED_PUBLIC_ROUTE


async def test_non_public_route_without_token_is_401(authorizer: Authorizer) -> None:
    decision = await authorizer.authorize(http("/r4/metadata", "POST"))
    assert decision.reason is Reason.TOKEN_MISSING
    assert decision.http_status == 401
