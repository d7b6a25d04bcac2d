"""Issue 16 item 1, verify instead of look up: with response verification enforcing, a patient/ read,
vread or instance history of a bound type is allowed without a look-up (``allowed_verified_by_response``)
and the ext_proc stage proves it from the response; writes, Binary and Bundle entries still look up."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from google.protobuf import struct_pb2

from smartgate.config.model import HeaderNames
from smartgate.config.parse import parse_config
from smartgate.core.reasons import Reason
from smartgate.envoy_glue.check_response import ResponseBuilder
from smartgate.envoy_glue.ext_proc import AUTHZ_NAMESPACE, ResponseVerifier
from smartgate.policy import PolicySettings
from smartgate.policy.decision import Decision
from smartgate.policy.plan import MembershipCheck, Pending, VersionCheck
from smartgate.runtime.worker import policy_settings
from tests.unit.policy_helpers import FHIR_BASE_URL, SETTINGS, decide_body, decide_path, token_context

ENFORCING = PolicySettings(fhir_base_url=FHIR_BASE_URL, responses_verified=True)
VERIFIED = Reason.ALLOWED_VERIFIED_BY_RESPONSE


def reason_of(outcome: Decision | Pending) -> Reason:
    return outcome.reason if isinstance(outcome, Decision) else outcome.allow.reason


# --- the policy ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "Observation/o1",
        "Observation/o1/_history/2",
        "Observation/o1/_history",
        "Condition/c1?_format=json",
        "Device/d1",
        "Device/d1/_history/1",
        "Device/d1/_history",
    ],
)
def test_an_enforcing_read_of_a_bound_type_is_proven_by_its_response(path: str) -> None:
    outcome = decide_path(path, settings=ENFORCING)
    assert isinstance(outcome, Decision) and outcome.reason is VERIFIED and outcome.allowed


def test_a_verified_read_is_allowed_with_200() -> None:
    assert VERIFIED.allows and VERIFIED.http_status == 200


def test_without_enforce_a_read_is_still_looked_up() -> None:
    outcome = decide_path("Observation/o1", settings=SETTINGS)
    assert isinstance(outcome, Pending) and outcome.allow.reason is Reason.ALLOWED_COMPARTMENT_MEMBER
    assert isinstance(outcome.checks[0], MembershipCheck)


def test_without_enforce_a_vread_still_checks_its_versions() -> None:
    outcome = decide_path("Observation/o1/_history/2", settings=SETTINGS)
    assert isinstance(outcome, Pending) and any(isinstance(check, VersionCheck) for check in outcome.checks)


def test_a_granular_read_scope_is_proven_by_its_response() -> None:
    """The response check holds every resource to the scope's constraint, as the look-up's query does."""
    outcome = decide_path("Observation/o1", "patient/Observation.r?category=laboratory", settings=ENFORCING)
    assert reason_of(outcome) is VERIFIED


def test_a_search_scope_wider_than_the_read_scope_keeps_the_look_up() -> None:
    """The response check accepts what a search scope grants: it would not hold the read's constraint."""
    outcome = decide_path(
        "Observation/o1", "patient/Observation.r?category=laboratory patient/Observation.s", settings=ENFORCING
    )
    assert isinstance(outcome, Pending) and outcome.allow.reason is Reason.ALLOWED_COMPARTMENT_MEMBER


def test_a_user_scope_constraint_keeps_the_look_up() -> None:
    """Another patient's resource may be proven by a user/ constraint, which the response check does not know."""
    outcome = decide_path(
        "Observation/o1", "patient/Observation.r user/Observation.r?category=laboratory", settings=ENFORCING
    )
    assert isinstance(outcome, Pending)


@pytest.mark.parametrize(
    "path",
    [
        "Observation/o1?_elements=code",
        "Observation/o1?_summary=true",
        "Observation/o1/_history?_since=2020-01-01",
        "Observation/o1/_history?_count=0",
        "Observation/o1/_history?_at=2020",
    ],
)
def test_a_read_whose_response_may_not_carry_the_proof_keeps_the_look_up(path: str) -> None:
    assert isinstance(decide_path(path, settings=ENFORCING), Pending)


def test_a_binary_read_keeps_its_security_context_look_up() -> None:
    outcome = decide_path("Binary/b1", settings=ENFORCING)
    assert isinstance(outcome, Pending) and outcome.allow.reason is Reason.ALLOWED_COMPARTMENT_MEMBER


def test_a_type_outside_the_compartment_is_allowed_as_before() -> None:
    assert reason_of(decide_path("Medication/m1", settings=ENFORCING)) is Reason.ALLOWED_OUTSIDE_COMPARTMENT


def test_a_user_scope_read_is_allowed_by_scope_as_before() -> None:
    assert reason_of(decide_path("Observation/o1", "user/Observation.r", settings=ENFORCING)) is Reason.ALLOWED_BY_SCOPE


def test_another_patients_record_is_still_refused_before_any_request() -> None:
    assert reason_of(decide_path("Patient/456", settings=ENFORCING)) is Reason.COMPARTMENT_OTHER_PATIENT


@pytest.mark.parametrize("method", ["PUT", "DELETE"])
def test_an_enforcing_write_still_looks_up_first(method: str) -> None:
    body = (
        {"resourceType": "Observation", "id": "o1", "subject": {"reference": "Patient/123"}}
        if method == "PUT"
        else None
    )
    outcome = decide_body("Observation/o1", method, body, settings=ENFORCING)
    assert isinstance(outcome, Pending) and any(isinstance(check, MembershipCheck) for check in outcome.checks)


def test_an_enforcing_patch_still_looks_up_first() -> None:
    patch = [{"op": "replace", "path": "/status", "value": "final"}]
    outcome = decide_body(
        "Observation/o1", "PATCH", patch, content_type="application/json-patch+json", settings=ENFORCING
    )
    assert isinstance(outcome, Pending) and any(isinstance(check, MembershipCheck) for check in outcome.checks)


def test_a_read_in_a_batch_is_still_looked_up() -> None:
    """A batch-response answers an entry's 404 inside a 200: that would tell a missing id from a foreign one."""
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"request": {"method": "GET", "url": "Observation/o1"}}],
    }
    outcome = decide_body("", "POST", batch, settings=ENFORCING)
    assert isinstance(outcome, Pending) and isinstance(outcome.checks[0], MembershipCheck)


def configured(**changes: Any) -> PolicySettings:
    return policy_settings(
        parse_config(
            {
                "fhir": {"base_url": FHIR_BASE_URL, "upstream_url": "http://fhir-upstream:8080/fhir"},
                "issuers": [{"issuer": "https://idp.example.org"}],
                **changes,
            }
        )
    )


@pytest.mark.parametrize(
    ("changes", "proven_by_response"),
    [
        ({"response_verification": {"mode": "enforce"}}, True),
        ({"response_verification": {"mode": "report"}}, False),
        ({}, False),
        ({"response_verification": {"mode": "enforce"}, "mode": "dry_run"}, False),
    ],
)
def test_only_an_enforcing_worker_outside_dry_run_proves_reads_by_response(
    changes: dict[str, Any], proven_by_response: bool
) -> None:
    """dry_run answers every Check with a bare allow, which hands nothing to the response stage."""
    outcome = decide_path("Observation/o1", settings=configured(**changes))
    assert (reason_of(outcome) is VERIFIED) is proven_by_response


# --- the Check response ----------------------------------------------------------------------------------


def verified_decision() -> Decision:
    return Decision(VERIFIED, "to be proven by the response", token_context("patient/*.rs"), "read", "Observation")


def test_a_verified_read_hands_its_reason_to_the_response_stage() -> None:
    response = ResponseBuilder(HeaderNames(), FHIR_BASE_URL, hand_over_context=True).build(verified_decision())
    assert response.WhichOneof("http_response") == "ok_response"
    assert response.dynamic_metadata["reason"] == VERIFIED.code


def test_a_verified_read_asks_the_fhir_server_for_the_resource_not_a_304() -> None:
    response = ResponseBuilder(HeaderNames(), FHIR_BASE_URL, hand_over_context=True).build(verified_decision())
    assert {"if-none-match", "if-modified-since", "if-match", "if-unmodified-since"} <= set(
        response.ok_response.headers_to_remove
    )


def test_a_verified_read_is_denied_when_no_response_stage_would_check_it() -> None:
    response = ResponseBuilder(HeaderNames(), FHIR_BASE_URL, hand_over_context=False).build(verified_decision())
    assert response.WhichOneof("http_response") == "denied_response"
    assert response.denied_response.status.code == 500


# --- the response stage ----------------------------------------------------------------------------------

CONTEXT = {
    "patient": "123",
    "scope": "patient/*.rs",
    "interaction": "read",
    "resource_type": "Observation",
    "reason": VERIFIED.code,
}


def headers(
    status: str = "200", end_of_stream: bool = False, context: dict[str, str] | None = None
) -> ext_proc.ProcessingRequest:
    message = ext_proc.ProcessingRequest(response_headers=ext_proc.HttpHeaders(end_of_stream=end_of_stream))
    for key, value in ((":status", status), ("content-type", "application/fhir+json")):
        message.response_headers.headers.headers.append(base_pb2.HeaderValue(key=key, raw_value=value.encode()))
    fields = struct_pb2.Struct()
    fields.update(context or CONTEXT)
    message.metadata_context.filter_metadata[AUTHZ_NAMESPACE].CopyFrom(fields)
    return message


def body(document: Any) -> ext_proc.ProcessingRequest:
    return ext_proc.ProcessingRequest(
        response_body=ext_proc.HttpBody(body=json.dumps(document).encode(), end_of_stream=True)
    )


async def run(mode: str, *messages: ext_proc.ProcessingRequest) -> list[ext_proc.ProcessingResponse]:
    service = ResponseVerifier(mode, 1024 * 1024, FHIR_BASE_URL, frozenset({"Practitioner"}), lambda entry: None)

    async def stream() -> AsyncIterator[ext_proc.ProcessingRequest]:
        for message in messages:
            yield message

    return [answer async for answer in service.Process(stream(), None)]


def observation(patient: str, category: str = "laboratory") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": "o1",
        "subject": {"reference": f"Patient/{patient}"},
        "category": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": category}]}
        ],
    }


def refused_body(answer: ext_proc.ProcessingResponse) -> str:
    assert answer.WhichOneof("response") == "immediate_response"
    assert answer.immediate_response.status.code == 403
    outcome = json.loads(answer.immediate_response.body)
    assert outcome["issue"][0]["details"]["coding"][0]["code"] == "response_foreign_resource"
    return str(outcome["issue"][0]["details"]["text"])


async def test_a_verified_read_of_the_patients_own_resource_passes() -> None:
    answers = await run("enforce", headers(), body(observation("123")))
    assert answers[1].WhichOneof("response") == "response_body"


async def test_a_verified_read_of_another_patients_resource_is_refused() -> None:
    answers = await run("enforce", headers(), body(observation("456")))
    refused_body(answers[1])


async def test_a_verified_history_with_one_foreign_version_is_refused() -> None:
    history = {
        "resourceType": "Bundle",
        "type": "history",
        "entry": [{"resource": observation("123")}, {"resource": observation("456")}],
    }
    answers = await run("enforce", headers(), body(history))
    refused_body(answers[1])


async def test_a_verified_read_still_meets_the_granular_constraint() -> None:
    context = {**CONTEXT, "scope": "patient/Observation.r?category=laboratory"}
    answers = await run("enforce", headers(context=context), body(observation("123", "vital-signs")))
    refused_body(answers[1])


@pytest.mark.parametrize("status", ["404", "410"])
async def test_a_missing_resource_answers_as_a_foreign_one(status: str) -> None:
    """The look-up answers "no such id" and "not yours" with one 403; so does the response proof."""
    missing = await run("enforce", headers(status))
    foreign = await run("enforce", headers(), body(observation("456")))
    assert refused_body(missing[0]) == refused_body(foreign[1])


async def test_a_bodiless_answer_to_a_verified_read_is_refused() -> None:
    answers = await run("enforce", headers(end_of_stream=True))
    refused_body(answers[0])


async def test_a_verified_history_with_no_resource_is_refused() -> None:
    """A history of deletions only proves nothing, and a 200 would tell the id exists."""
    deletions = {
        "resourceType": "Bundle",
        "type": "history",
        "entry": [{"request": {"method": "DELETE", "url": "Observation/o1"}, "response": {"status": "204"}}],
    }
    answers = await run("enforce", headers(), body(deletions))
    refused_body(answers[1])


async def test_a_404_to_a_read_proven_by_look_up_passes_as_before() -> None:
    context = {**CONTEXT, "reason": Reason.ALLOWED_COMPARTMENT_MEMBER.code}
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-found"}]}
    answers = await run("enforce", headers("404", context=context), body(outcome))
    assert answers[0].WhichOneof("response") == "response_headers"
    assert answers[1].WhichOneof("response") == "response_body"
