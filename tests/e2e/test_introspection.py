"""Opaque access tokens from the real oidc-provider, checked by smartgate with RFC 7662
introspection (client_secret_basic against one issuer, client_secret_post against the other):
active → allowed with the token's SMART context; revoked or unknown → 401 token_inactive;
introspection endpoint down → 503 introspection_failed, never an allow."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator

import pytest

from .checks import assert_denied, assert_ok
from .conftest import INTROSPECTION_CACHE_SECONDS, E2EStack
from .smart_auth import revoke

pytestmark = pytest.mark.e2e

SCOPE = "launch/patient patient/*.rs"


@pytest.fixture
def introspection_restored(e2e: E2EStack) -> Iterator[None]:
    yield
    for issuer in e2e.idp.issuers:
        e2e.idp.set_introspection(issuer, "up")


def _opaque(e2e: E2EStack, issuer: str | None = None, user: str = "alice") -> str:
    token = e2e.fresh_token(user, SCOPE, "smart-opaque", issuer)
    assert token.count(".") != 2, "expected an opaque token"
    return token


@pytest.mark.parametrize("which", ["basic", "post"])
def test_an_active_opaque_token_is_allowed_with_its_patient_context(e2e: E2EStack, which: str) -> None:
    issuer = e2e.issuer if which == "basic" else e2e.issuer_post
    before = e2e.idp.introspection_calls(issuer)
    token = _opaque(e2e, issuer)
    a, b = e2e.data.patients["A"], e2e.data.patients["B"]
    assert assert_ok(e2e.get(f"/Patient/{a.patient_id}", token))["id"] == a.patient_id
    assert_ok(e2e.get(f"/Observation?patient={a.patient_id}", token))
    assert_denied(e2e.get(f"/Observation/{b.ids('Observation')[0]}", token), 403, "not_in_compartment")
    after = e2e.idp.introspection_calls(issuer)
    assert after[which] == before[which] + 1, (before, after)  # one call: the answer is cached
    assert after["refused"] == before["refused"] == 0, "smartgate used the wrong client authentication method"


def test_a_token_revoked_before_use_is_inactive(e2e: E2EStack) -> None:
    token = _opaque(e2e)
    revoke(e2e.issuer, "smart-opaque", token)
    response = e2e.get(f"/Patient/{e2e.data.patients['A'].patient_id}", token)
    assert_denied(response, 401, "token_inactive")
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


def test_an_unknown_opaque_token_is_inactive(e2e: E2EStack) -> None:
    response = e2e.get(f"/Patient/{e2e.data.patients['A'].patient_id}", secrets.token_urlsafe(32))
    assert_denied(response, 401, "token_inactive")


def test_a_token_revoked_after_use_is_refused_once_the_cached_answer_expires(e2e: E2EStack) -> None:
    token = _opaque(e2e)
    path = f"/Patient/{e2e.data.patients['A'].patient_id}"
    assert_ok(e2e.get(path, token))
    revoke(e2e.issuer, "smart-opaque", token)
    time.sleep(INTROSPECTION_CACHE_SECONDS + 0.5)
    assert_denied(e2e.get(path, token), 401, "token_inactive")


@pytest.mark.usefixtures("introspection_restored")
@pytest.mark.parametrize("mode", ["down", "error"])
def test_introspection_failure_is_503_never_an_allow(e2e: E2EStack, mode: str) -> None:
    token = _opaque(e2e)  # never introspected yet, so nothing is cached
    path = f"/Patient/{e2e.data.patients['A'].patient_id}"
    e2e.idp.set_introspection(e2e.issuer, mode)
    response = e2e.get(path, token)
    assert_denied(response, 503, "introspection_failed")
    assert "www-authenticate" not in response.headers
    jwt_token = e2e.token("alice", SCOPE)
    assert_ok(e2e.get(path, jwt_token))  # JWTs do not depend on introspection
    e2e.idp.set_introspection(e2e.issuer, "up")
    assert_ok(e2e.get(path, token))  # failures are not cached
