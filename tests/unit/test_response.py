"""Stage 4: Decision -> CheckResponse (headers, status, RFC 6750 challenge, OperationOutcome)."""

from __future__ import annotations

import json
import re

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2
from google.rpc import code_pb2

from smartgate.config.model import HeaderNames
from smartgate.core.reasons import Reason
from smartgate.envoy_glue.check_response import ResponseBuilder, operation_outcome, www_authenticate
from smartgate.policy.decision import Decision
from tests.unit.policy_helpers import BASE_PATH, http, request_error, token_context

REALM = "https://fhir.example.org/r4"
NAMES = HeaderNames()
OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
DENY_REASONS = [reason for reason in Reason if not reason.allows]
# RFC 6750 section 3: error_description uses %x20-21 / %x23-5B / %x5D-7E only.
_NQSCHAR = re.compile(r"^[\x20\x21\x23-\x5b\x5d-\x7e]*\Z")


def build(decision: Decision, names: HeaderNames = NAMES) -> external_auth_pb2.CheckResponse:
    return ResponseBuilder(names, REALM).build(decision)


def headers_of(options: list[base_pb2.HeaderValueOption]) -> dict[str, str]:
    return {option.header.key: option.header.value for option in options}


def full_context_decision() -> Decision:
    context = token_context(
        "launch/patient patient/*.rs",
        "123",
        fhir_user="Practitioner/9",
        subject="sub-1",
        client_id="app-1",
        issuer="https://issuer.example.org",
    )
    return Decision(Reason.ALLOWED_COMPARTMENT_SEARCH, "ok", context, "search-type", "Observation")


# --- allow -------------------------------------------------------------------------------------------


def test_allow_sets_every_context_header() -> None:
    response = build(full_context_decision())
    assert response.WhichOneof("http_response") == "ok_response"
    assert headers_of(response.ok_response.headers) == {
        "x-smart-patient": "123",
        "x-smart-fhir-user": "Practitioner/9",
        "x-smart-scope": "launch/patient patient/*.rs",
        "x-smart-client-id": "app-1",
        "x-smart-subject": "sub-1",
        "x-smart-issuer": "https://issuer.example.org",
    }
    assert list(response.ok_response.headers_to_remove) == []


def test_allow_overwrites_context_headers() -> None:
    response = build(full_context_decision())
    assert [option.append_action for option in response.ok_response.headers] == [OVERWRITE] * 6


def test_allow_removes_empty_context_headers() -> None:
    context = token_context("user/*.rs", None, fhir_user=None, subject="", client_id="")
    response = build(Decision(Reason.ALLOWED_BY_SCOPE, "ok", context))
    assert set(headers_of(response.ok_response.headers)) == {"x-smart-scope", "x-smart-issuer"}
    assert set(response.ok_response.headers_to_remove) == {
        "x-smart-patient",
        "x-smart-fhir-user",
        "x-smart-client-id",
        "x-smart-subject",
    }


def test_allow_without_a_token_removes_every_context_header() -> None:
    response = build(Decision(Reason.ALLOWED_PUBLIC_ROUTE, "public route"))
    assert list(response.ok_response.headers) == []
    assert sorted(response.ok_response.headers_to_remove) == sorted(NAMES.all())


def test_allow_uses_the_configured_header_names() -> None:
    names = HeaderNames(
        patient="x-patient", fhir_user="x-user", scope="x-scope", client_id="x-client", subject="x-sub", issuer="x-iss"
    )
    response = build(full_context_decision(), names)
    assert set(headers_of(response.ok_response.headers)) == set(names.all())


def test_allow_status_is_set_explicitly_to_ok() -> None:
    response = build(full_context_decision())
    assert response.HasField("status")
    assert response.status.code == code_pb2.OK == 0


def test_a_narrowed_search_sets_its_binding_parameter_on_the_request() -> None:
    decision = Decision(
        Reason.ALLOWED_NARROWED,
        "narrowed",
        token_context("patient/*.rs"),
        "search-type",
        "Observation",
        query_parameters_to_set=(("patient", "123"),),
    )
    parameters = build(decision).ok_response.query_parameters_to_set
    assert [(parameter.key, parameter.value) for parameter in parameters] == [("patient", "123")]


def test_an_allow_that_is_not_narrowed_sets_no_query_parameter() -> None:
    response = build(full_context_decision())
    assert list(response.ok_response.query_parameters_to_set) == []
    assert list(response.ok_response.query_parameters_to_remove) == []


@pytest.mark.parametrize("reason", [reason for reason in Reason if reason.allows])
def test_every_allow_reason_builds_an_ok_response(reason: Reason) -> None:
    # allowed_verified_by_response needs the hand-over to the response stage (test_verify_by_response.py)
    builder = ResponseBuilder(NAMES, REALM, hand_over_context=True)
    response = builder.build(Decision(reason, "ok", token_context("patient/*.rs")))
    assert response.HasField("status") and response.status.code == 0
    assert response.WhichOneof("http_response") == "ok_response"


# --- deny --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reason", DENY_REASONS)
def test_every_deny_has_an_explicit_non_ok_status_and_the_http_status(reason: Reason) -> None:
    response = build(Decision(reason, "denied"))
    assert response.HasField("status")
    assert response.status.code != 0
    assert response.WhichOneof("http_response") == "denied_response"
    assert response.denied_response.status.code == reason.http_status


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        (Reason.TOKEN_MISSING, code_pb2.UNAUTHENTICATED),
        (Reason.TOKEN_EXPIRED, code_pb2.UNAUTHENTICATED),
        (Reason.REQUEST_MALFORMED, code_pb2.PERMISSION_DENIED),
        (Reason.COMPARTMENT_OTHER_PATIENT, code_pb2.PERMISSION_DENIED),
        (Reason.LOOKUP_FAILED, code_pb2.UNAVAILABLE),
        (Reason.INTERNAL_ERROR, code_pb2.UNAVAILABLE),
    ],
)
def test_deny_grpc_status(reason: Reason, code: int) -> None:
    assert build(Decision(reason, "denied")).status.code == code


BARE_CHALLENGE = (Reason.TOKEN_MISSING, Reason.AUTHENTICATION_SCHEME_UNSUPPORTED)  # RFC 6750 section 3.1


@pytest.mark.parametrize("reason", BARE_CHALLENGE)
def test_missing_token_or_another_scheme_challenge_has_no_error_attribute(reason: Reason) -> None:
    headers = headers_of(build(Decision(reason, "a bearer token is required")).denied_response.headers)
    assert headers["www-authenticate"] == f'Bearer realm="{REALM}"'


@pytest.mark.parametrize(
    "reason", [r for r in DENY_REASONS if r.http_status == 401 and r not in BARE_CHALLENGE and not r.dpop_challenge]
)
def test_token_errors_challenge_with_invalid_token(reason: Reason) -> None:
    challenge = headers_of(build(Decision(reason, "bad token")).denied_response.headers)["www-authenticate"]
    assert challenge == f'Bearer realm="{REALM}", error="invalid_token", error_description="bad token"'


DPOP_PROOF_FAILURES = [Reason.DPOP_PROOF_MISSING, Reason.DPOP_PROOF_INVALID, Reason.DPOP_PROOF_REPLAYED]


@pytest.mark.parametrize("reason", DPOP_PROOF_FAILURES)
def test_dpop_proof_failures_challenge_with_the_dpop_scheme_invalid_dpop_proof_and_algs(reason: Reason) -> None:
    """RFC 9449 section 7.1: the DPoP challenge names the proof algorithms the server accepts."""
    response = ResponseBuilder(HeaderNames(), REALM, dpop_algs=("ES256", "PS256")).build(Decision(reason, "bad proof"))
    challenge = headers_of(response.denied_response.headers)["www-authenticate"]
    assert challenge == (
        f'DPoP realm="{REALM}", error="invalid_dpop_proof", error_description="bad proof", algs="ES256 PS256"'
    )
    assert response.denied_response.status.code == 401


@pytest.mark.parametrize("reason", [r for r in DENY_REASONS if r.dpop_challenge and r not in DPOP_PROOF_FAILURES])
def test_other_dpop_binding_failures_challenge_with_the_dpop_scheme_and_invalid_token(reason: Reason) -> None:
    response = ResponseBuilder(HeaderNames(), REALM, dpop_algs=("ES256",)).build(Decision(reason, "bad binding"))
    challenge = headers_of(response.denied_response.headers)["www-authenticate"]
    assert challenge == f'DPoP realm="{REALM}", error="invalid_token", error_description="bad binding", algs="ES256"'


@pytest.mark.parametrize(
    "reason",
    [
        Reason.CERTIFICATE_BINDING_MISSING,
        Reason.CERTIFICATE_BINDING_MISMATCH,
        Reason.TOKEN_BINDING_UNSUPPORTED,
        Reason.BEARER_TOKEN_NOT_ALLOWED,
    ],
)
def test_certificate_and_unsupported_binding_failures_keep_the_bearer_challenge(reason: Reason) -> None:
    response = ResponseBuilder(HeaderNames(), REALM, dpop_algs=("ES256",)).build(Decision(reason, "bad binding"))
    challenge = headers_of(response.denied_response.headers)["www-authenticate"]
    assert challenge.startswith(f'Bearer realm="{REALM}", error="invalid_token"')


@pytest.mark.parametrize("reason", [r for r in DENY_REASONS if r.http_status == 400])
def test_bad_requests_challenge_with_invalid_request(reason: Reason) -> None:
    challenge = headers_of(build(Decision(reason, "bad request")).denied_response.headers)["www-authenticate"]
    assert challenge == f'Bearer realm="{REALM}", error="invalid_request", error_description="bad request"'


@pytest.mark.parametrize("reason", [r for r in DENY_REASONS if r.http_status == 403])
def test_forbidden_challenges_with_insufficient_scope(reason: Reason) -> None:
    challenge = headers_of(build(Decision(reason, "no")).denied_response.headers)["www-authenticate"]
    assert challenge == f'Bearer realm="{REALM}", error="insufficient_scope", error_description="no"'


@pytest.mark.parametrize("reason", [r for r in DENY_REASONS if r.http_status >= 500])
def test_server_errors_have_no_challenge(reason: Reason) -> None:
    assert "www-authenticate" not in headers_of(build(Decision(reason, "down")).denied_response.headers)
    assert www_authenticate(reason, REALM, "down") is None


def test_challenge_replaces_characters_rfc6750_forbids_in_quoted_strings() -> None:
    challenge = www_authenticate(Reason.TOKEN_EXPIRED, 'a "realm"', "x")
    assert challenge is not None and challenge.startswith('Bearer realm="a _realm_"')


@pytest.mark.parametrize("query", ["%22=1", "%C3%A9=1"])
def test_error_description_uses_only_rfc6750_characters(query: str) -> None:
    error = request_error(http(f"{BASE_PATH}/Observation?{query}"))
    challenge = www_authenticate(error.reason, REALM, error.message)
    assert challenge is not None
    description = challenge.partition('error_description="')[2][:-1]
    assert _NQSCHAR.match(description), description


@pytest.mark.parametrize("reason", DENY_REASONS)
def test_deny_body_is_a_fhir_operation_outcome_naming_the_reason(reason: Reason) -> None:
    response = build(Decision(reason, "why it was denied"))
    headers = headers_of(response.denied_response.headers)
    assert headers["content-type"] == "application/fhir+json"
    assert headers["cache-control"] == "no-store"
    outcome = json.loads(response.denied_response.body)
    assert outcome["resourceType"] == "OperationOutcome"
    (issue,) = outcome["issue"]
    assert issue["severity"] == "error"
    assert issue["details"]["coding"] == [{"system": "https://smartgate.dev/reason", "code": reason.code}]
    assert issue["details"]["text"] == "why it was denied"
    assert reason.code in issue["diagnostics"]


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        (Reason.TOKEN_MISSING, "login"),
        (Reason.REQUEST_MALFORMED, "invalid"),
        (Reason.SCOPE_INSUFFICIENT, "forbidden"),
        (Reason.LOOKUP_FAILED, "transient"),
        (Reason.INTERNAL_ERROR, "exception"),
    ],
)
def test_operation_outcome_issue_code_follows_the_status(reason: Reason, code: str) -> None:
    assert json.loads(operation_outcome(reason, "x"))["issue"][0]["code"] == code


def test_deny_headers_overwrite() -> None:
    response = build(Decision(Reason.TOKEN_EXPIRED, "expired"))
    assert {option.append_action for option in response.denied_response.headers} == {OVERWRITE}


def test_deny_never_carries_context_headers() -> None:
    decision = full_context_decision()
    response = build(Decision(Reason.COMPARTMENT_OTHER_PATIENT, "no", decision.context))
    assert not set(headers_of(response.denied_response.headers)) & set(NAMES.all())
