"""A token's allow answer (its x-smart-* headers and removal list) is built once and reused for that
token's requests: kept on the verified context, so it is evicted with it, and a changed context (a new
object) never reuses another's. Per-request parts (narrowing, the response stage's metadata) go on a copy."""

from __future__ import annotations

import dataclasses

from smartgate.config.model import HeaderNames
from smartgate.core.reasons import Reason
from smartgate.envoy_glue.check_response import ResponseBuilder
from smartgate.policy.decision import Decision
from smartgate.tokens.context import TokenContext
from tests.unit.policy_helpers import token_context

REALM = "https://fhir.example.org/r4"


def allow(context: TokenContext | None, **extra: object) -> Decision:
    return Decision(Reason.ALLOWED_COMPARTMENT_SEARCH, "ok", context, "search-type", "Observation", **extra)  # type: ignore[arg-type]


def headers(response: object) -> dict[str, str]:
    return {option.header.key: option.header.value for option in response.ok_response.headers}  # type: ignore[attr-defined]


def test_the_same_token_gets_the_same_allow_response_object() -> None:
    builder = ResponseBuilder(HeaderNames(), REALM)
    context = token_context("launch/patient patient/*.rs", "123")
    first = builder.build(allow(context), "rid-1")
    second = builder.build(allow(context), "rid-2")
    assert second is first
    assert second.ok_response.headers[0] is first.ok_response.headers[0]


def test_another_token_gets_its_own_allow_response() -> None:
    builder = ResponseBuilder(HeaderNames(), REALM)
    first = builder.build(allow(token_context("launch/patient patient/*.rs", "123")))
    other = builder.build(allow(token_context("launch/patient patient/*.rs", "456")))
    assert other is not first
    assert headers(first)["x-smart-patient"] == "123" and headers(other)["x-smart-patient"] == "456"


def test_a_changed_context_of_the_same_token_never_reuses_the_old_headers() -> None:
    builder = ResponseBuilder(HeaderNames(), REALM)
    context = token_context("launch/patient patient/*.rs", "123")
    builder.build(allow(context))
    changed = dataclasses.replace(context, patient="456")
    response = builder.build(allow(changed))
    assert headers(response)["x-smart-patient"] == "456"
    assert headers(builder.build(allow(context)))["x-smart-patient"] == "123"


def test_a_builder_with_other_header_names_does_not_reuse_anothers_answer() -> None:
    context = token_context("launch/patient patient/*.rs", "123")
    ResponseBuilder(HeaderNames(), REALM).build(allow(context))
    renamed = ResponseBuilder(HeaderNames(patient="x-patient"), REALM).build(allow(context))
    assert headers(renamed)["x-patient"] == "123" and "x-smart-patient" not in headers(renamed)


def test_per_request_parts_go_on_a_copy_and_never_into_the_shared_answer() -> None:
    builder = ResponseBuilder(HeaderNames(), REALM)
    context = token_context("launch/patient patient/*.rs", "123")
    plain = builder.build(allow(context))
    narrowed = builder.build(allow(context, query_parameters_to_set=(("patient", "123"),)))
    assert narrowed is not plain
    assert [(p.key, p.value) for p in narrowed.ok_response.query_parameters_to_set] == [("patient", "123")]
    assert list(plain.ok_response.query_parameters_to_set) == []
    assert builder.build(allow(context)) is plain
    assert list(builder.build(allow(context)).ok_response.query_parameters_to_set) == []


def test_the_response_stage_metadata_is_per_request_on_top_of_the_tokens_part() -> None:
    builder = ResponseBuilder(HeaderNames(), REALM, hand_over_context=True)
    context = token_context("launch/patient patient/*.rs", "123")
    first = builder.build(allow(context), "rid-1")
    second = builder.build(Decision(Reason.ALLOWED_VERIFIED_BY_RESPONSE, "ok", context, "read", "Condition"), "rid-2")
    assert dict(first.dynamic_metadata) == {
        "patient": "123",
        "scope": "launch/patient patient/*.rs",
        "interaction": "search-type",
        "resource_type": "Observation",
        "request_id": "rid-1",
        "reason": "allowed_compartment_search",
    }
    assert dict(second.dynamic_metadata) == {
        "patient": "123",
        "scope": "launch/patient patient/*.rs",
        "interaction": "read",
        "resource_type": "Condition",
        "request_id": "rid-2",
        "reason": "allowed_verified_by_response",
    }
    assert {"if-none-match", "if-modified-since"} <= set(second.ok_response.headers_to_remove)
    assert "if-none-match" not in list(first.ok_response.headers_to_remove)
    assert "if-none-match" not in list(builder.build(allow(context), "rid-3").ok_response.headers_to_remove)


def test_the_cached_answer_lives_in_the_tokens_context_and_goes_with_it() -> None:
    builder = ResponseBuilder(HeaderNames(), REALM)
    context = token_context("launch/patient patient/*.rs", "123")
    assert context.memo == {}
    builder.build(allow(context))
    assert list(context.memo) == [builder]
    assert context == dataclasses.replace(context)  # the memo plays no part in a context's equality


def test_an_allow_without_a_token_removes_every_context_header_from_one_shared_answer() -> None:
    builder = ResponseBuilder(HeaderNames(), REALM)
    public = Decision(Reason.ALLOWED_PUBLIC_ROUTE, "public route")
    response = builder.build(public)
    assert builder.build(public) is response
    assert len(response.ok_response.headers) == 0 and len(response.ok_response.headers_to_remove) == 6
