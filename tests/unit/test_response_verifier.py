"""Response verification, the ext_proc face (envoy.service.ext_proc.v3 generated classes): what
smartgate answers Envoy for each stage of a response (issue 8, items 1-3)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from google.protobuf import struct_pb2

from smartgate.envoy_glue.ext_proc import AUTHZ_NAMESPACE, ResponseVerifier
from smartgate.telemetry import metrics

BASE = "https://fhir.example.org/r4"
CONTEXT = {"patient": "123", "scope": "patient/*.rs", "interaction": "search-type", "resource_type": "Observation"}


def verifier(
    mode: str = "enforce", max_body_bytes: int = 1024 * 1024, log: list[dict[str, Any]] | None = None
) -> ResponseVerifier:
    entries = log if log is not None else []
    return ResponseVerifier(mode, max_body_bytes, BASE, frozenset({"Binary"}), entries.append)


def headers_message(
    context: dict[str, str] | None,
    content_type: str = "application/fhir+json",
    encoding: str = "",
    end_of_stream: bool = False,
) -> ext_proc.ProcessingRequest:
    message = ext_proc.ProcessingRequest(response_headers=ext_proc.HttpHeaders(end_of_stream=end_of_stream))
    for key, value in (("content-type", content_type), ("content-encoding", encoding)):
        if value:
            message.response_headers.headers.headers.append(base_pb2.HeaderValue(key=key, raw_value=value.encode()))
    if context is not None:
        fields = struct_pb2.Struct()
        fields.update(context)
        message.metadata_context.filter_metadata[AUTHZ_NAMESPACE].CopyFrom(fields)
    return message


def body_message(document: Any) -> ext_proc.ProcessingRequest:
    body = document if isinstance(document, bytes) else json.dumps(document).encode()
    return ext_proc.ProcessingRequest(response_body=ext_proc.HttpBody(body=body, end_of_stream=True))


async def run(service: ResponseVerifier, *messages: ext_proc.ProcessingRequest) -> list[ext_proc.ProcessingResponse]:
    async def stream() -> AsyncIterator[ext_proc.ProcessingRequest]:
        for message in messages:
            yield message

    return [response async for response in service.Process(stream(), None)]


def searchset(*patients: str) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {"resource": {"resourceType": "Observation", "id": f"o{i}", "subject": {"reference": f"Patient/{p}"}}}
            for i, p in enumerate(patients)
        ],
    }


async def test_a_clean_response_passes_unchanged() -> None:
    answers = await run(verifier(), headers_message(CONTEXT), body_message(searchset("123", "123")))
    assert answers[0].WhichOneof("response") == "response_headers"
    assert not answers[0].HasField("mode_override")  # the body is asked for
    assert answers[1].WhichOneof("response") == "response_body"
    assert not answers[1].response_body.HasField("response")  # no mutation


async def test_enforce_mode_replaces_a_response_with_a_foreign_resource_by_a_403() -> None:
    answers = await run(verifier(), headers_message(CONTEXT), body_message(searchset("123", "456")))
    immediate = answers[1].immediate_response
    assert answers[1].WhichOneof("response") == "immediate_response"
    assert immediate.status.code == 403
    outcome = json.loads(immediate.body)
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["details"]["coding"][0]["code"] == "response_foreign_resource"
    assert "entry 1" in immediate.body.decode()  # names the entry, never echoes what was withheld
    assert "Patient/456" not in immediate.body.decode()
    assert any(
        h.header.key == "content-type" and h.header.raw_value == b"application/fhir+json"
        for h in immediate.headers.set_headers
    )


async def test_report_mode_lets_a_response_with_a_foreign_resource_through() -> None:
    answers = await run(verifier("report"), headers_message(CONTEXT), body_message(searchset("456")))
    assert answers[1].WhichOneof("response") == "response_body"


async def test_a_response_without_a_handed_over_context_skips_the_body() -> None:
    answers = await run(verifier(), headers_message(None))
    assert answers[0].mode_override.response_body_mode == processing_mode_pb2.ProcessingMode.NONE


async def test_a_handed_over_context_without_a_patient_skips_the_body() -> None:
    answers = await run(verifier(), headers_message({"patient": "", "scope": "user/*.rs"}))
    assert answers[0].mode_override.response_body_mode == processing_mode_pb2.ProcessingMode.NONE


async def test_enforce_mode_refuses_a_response_too_large_to_verify() -> None:
    answers = await run(verifier(max_body_bytes=100), headers_message(CONTEXT), body_message(searchset("123")))
    assert answers[1].immediate_response.status.code == 403
    assert b"too large to verify" in answers[1].immediate_response.body


async def test_enforce_mode_refuses_a_body_envoy_cut_short() -> None:
    partial = ext_proc.ProcessingRequest(
        response_body=ext_proc.HttpBody(body=b'{"resourceType": "Bun', end_of_stream=False)
    )
    answers = await run(verifier(), headers_message(CONTEXT), partial)
    assert answers[1].immediate_response.status.code == 403


@pytest.mark.parametrize("cut_short", [False, True])
async def test_report_mode_lets_a_response_too_large_to_check_through_and_counts_it(cut_short: bool) -> None:
    skipped = metrics.RESPONSE_CHECKS_SKIPPED.labels("too_large")
    before = skipped._value.get()
    log: list[dict[str, Any]] = []
    body = json.dumps(searchset("456")).encode()
    message = ext_proc.ProcessingRequest(response_body=ext_proc.HttpBody(body=body, end_of_stream=not cut_short))
    answers = await run(
        verifier("report", max_body_bytes=10_000 if cut_short else 100, log=log), headers_message(CONTEXT), message
    )
    assert answers[1].WhichOneof("response") == "response_body"
    assert not answers[1].response_body.HasField("response")  # passed untouched
    assert skipped._value.get() == before + 1
    [entry] = log
    assert (entry["outcome"], entry["reason"], entry["skipped"]) == ("skipped", "response_unchecked", "too_large")


async def test_the_upstream_address_of_another_patient_is_foreign() -> None:
    upstream = "http://fhir-server:8080/fhir"
    log: list[dict[str, Any]] = []
    service = ResponseVerifier("enforce", 1 << 20, BASE, frozenset(), log.append, upstream_base_url=upstream)
    contained = {"resourceType": "Condition", "id": "c", "subject": {"reference": f"{upstream}/Patient/456"}}
    document = {
        "resourceType": "Observation",
        "id": "o",
        "subject": {"reference": "Patient/123"},
        "contained": [contained],
    }
    answers = await run(service, headers_message(CONTEXT), body_message(document))
    assert answers[1].immediate_response.status.code == 403


async def test_enforce_mode_refuses_a_compressed_response() -> None:
    answers = await run(verifier(), headers_message(CONTEXT, encoding="gzip"))
    assert answers[0].immediate_response.status.code == 403
    assert b"cannot be read" in answers[0].immediate_response.body


async def test_enforce_mode_refuses_a_non_json_response_to_a_json_request() -> None:
    answers = await run(verifier(), headers_message(CONTEXT, content_type="text/html"))
    assert answers[0].immediate_response.status.code == 403


async def test_report_mode_passes_an_unreadable_response_without_buffering_it() -> None:
    answers = await run(verifier("report"), headers_message(CONTEXT, encoding="gzip"))
    assert answers[0].WhichOneof("response") == "response_headers"
    assert answers[0].mode_override.response_body_mode == processing_mode_pb2.ProcessingMode.NONE


async def test_a_response_without_a_body_passes() -> None:
    answers = await run(verifier(), headers_message(CONTEXT, end_of_stream=True))
    assert answers[0].WhichOneof("response") == "response_headers"


async def test_raw_binary_content_passes_because_its_security_context_was_proven_before_the_read() -> None:
    binary_context = {**CONTEXT, "interaction": "read", "resource_type": "Binary"}
    answers = await run(
        verifier(), headers_message(binary_context, content_type="application/pdf"), body_message(b"%PDF-1.7 ...")
    )
    assert [a.WhichOneof("response") for a in answers] == ["response_headers", "response_body"]


async def test_a_binary_read_as_json_is_still_checked() -> None:
    binary_context = {**CONTEXT, "interaction": "read", "resource_type": "Binary"}
    foreign = {"resourceType": "Binary", "id": "b", "securityContext": {"reference": "Patient/456"}}
    answers = await run(verifier(), headers_message(binary_context), body_message(foreign))
    assert answers[1].immediate_response.status.code == 403


async def test_each_checked_response_is_one_decision_log_entry_with_its_reason_code(
    capsys: pytest.CaptureFixture[str],
) -> None:
    log: list[dict[str, Any]] = []
    service = verifier(log=log)
    await run(service, headers_message(CONTEXT), body_message(searchset("123")))
    await run(service, headers_message(CONTEXT), body_message(searchset("123", "456")))
    assert [(e["stage"], e["outcome"], e["reason"]) for e in log] == [
        ("response", "clean", "response_clean"),
        ("response", "blocked", "response_foreign_resource"),
    ]
    assert log[1]["patient"] == "123" and log[1]["resources_checked"] == 2
    assert capsys.readouterr().out == ""  # written where the decision log goes, not to stdout regardless


async def test_report_mode_logs_the_finding_as_reported() -> None:
    log: list[dict[str, Any]] = []
    await run(verifier("report", log=log), headers_message(CONTEXT), body_message(searchset("456")))
    assert [(e["outcome"], e["reason"]) for e in log] == [("reported", "response_foreign_resource")]


# --- issue 15: Provenance of the matches, linked patients --------------------------------------------------


LINKED_PATIENT = {"resourceType": "Patient", "id": "789", "link": [{"other": {"reference": "Patient/123"}}]}
PATIENT_READ = {**CONTEXT, "interaction": "read", "resource_type": "Patient"}


async def test_enforce_mode_passes_provenance_revincluded_for_the_patients_own_observations() -> None:
    document = searchset("123")
    document["entry"].append(
        {
            "resource": {"resourceType": "Provenance", "id": "p1", "target": [{"reference": "Observation/o0"}]},
            "search": {"mode": "include"},
        }
    )
    answers = await run(verifier(), headers_message(CONTEXT), body_message(document))
    assert answers[1].WhichOneof("response") == "response_body"


async def test_enforce_mode_blocks_a_provenance_naming_another_patient() -> None:
    document = searchset("123")
    document["entry"].append(
        {
            "resource": {
                "resourceType": "Provenance",
                "id": "p1",
                "target": [{"reference": "Observation/o0"}, {"reference": "Patient/456"}],
            },
            "search": {"mode": "include"},
        }
    )
    answers = await run(verifier(), headers_message(CONTEXT), body_message(document))
    assert answers[1].WhichOneof("response") == "immediate_response"


async def test_enforce_mode_blocks_a_linked_patient_by_default() -> None:
    answers = await run(verifier(), headers_message(PATIENT_READ), body_message(LINKED_PATIENT))
    assert answers[1].WhichOneof("response") == "immediate_response"


async def test_enforce_mode_passes_a_linked_patient_when_links_are_followed() -> None:
    log: list[dict[str, Any]] = []
    following = ResponseVerifier(
        "enforce", 1024 * 1024, BASE, frozenset({"Binary"}), log.append, follow_patient_links=True
    )
    answers = await run(following, headers_message(PATIENT_READ), body_message(LINKED_PATIENT))
    assert answers[1].WhichOneof("response") == "response_body"
