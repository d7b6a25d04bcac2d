"""Stage 1 and 2a: CheckRequest -> HttpRequest -> FhirRequest, and every way to be refused."""

from __future__ import annotations

import pytest
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2

from smartgate.core.http import HttpRequest
from smartgate.core.reasons import Reason, Refusal
from smartgate.envoy_glue.check_request import PARTIAL_BODY_HEADER, from_check_request
from smartgate.fhir.request import FhirRequest, Interaction, is_valid_id, parse_fhir_request
from tests.unit.policy_helpers import BASE_PATH, form_post, http, request_error


def classify(
    path: str, method: str = "GET", *, headers: dict[str, str] | None = None, body: bytes | None = None
) -> FhirRequest:
    parsed = parse_fhir_request(http(BASE_PATH + path, method, headers, body), BASE_PATH)
    assert isinstance(parsed, FhirRequest), parsed
    return parsed


def error_reason(
    path: str, method: str = "GET", *, headers: dict[str, str] | None = None, body: bytes | None = None
) -> Reason:
    return request_error(http(BASE_PATH + path, method, headers, body)).reason


# --- interactions -------------------------------------------------------------------------------


def test_read() -> None:
    request = classify("/Patient/123")
    assert (request.interaction, request.resource_type, request.resource_id) == (Interaction.READ, "Patient", "123")


def test_head_is_classified_like_get() -> None:
    assert classify("/Patient/123", "HEAD").interaction is Interaction.READ


def test_trailing_slash_is_tolerated() -> None:
    assert classify("/Patient/123/").interaction is Interaction.READ


def test_vread() -> None:
    request = classify("/Observation/abc/_history/2")
    assert (request.interaction, request.resource_id, request.version_id) == (Interaction.VREAD, "abc", "2")


def test_search_type_get() -> None:
    request = classify("/Observation?patient=123&code=1234-5")
    assert (request.interaction, request.resource_type) == (Interaction.SEARCH_TYPE, "Observation")
    assert [(p.name, p.value) for p in request.params] == [("patient", "123"), ("code", "1234-5")]


@pytest.mark.parametrize(
    "query",
    [
        "patient=123",
        "subject=Patient/123",
        "code=1234",
        "_id=o1",
        "Patient=123",
        "_has:Observation:patient:_id=1",
        "_count=5&patient=123",
    ],
)
def test_post_search_with_selecting_parameters_in_the_url_is_malformed(query: str) -> None:
    """Medplum reads a POST _search's body alone: a binding in the URL would be ignored there and the
    search would run over every patient. Selecting parameters belong in the body."""
    request = parse_fhir_request(form_post(f"{BASE_PATH}/Observation/_search?{query}", b"code=x"), BASE_PATH)
    assert isinstance(request, Refusal) and request.reason is Reason.REQUEST_MALFORMED
    assert "in the body" in request.message


@pytest.mark.parametrize(
    "query",
    ["_format=json", "_count=5&_sort=-date", "_include=Observation:performer", "_summary=count", "_elements=code"],
)
def test_post_search_may_shape_the_result_in_the_url(query: str) -> None:
    request = parse_fhir_request(form_post(f"{BASE_PATH}/Observation/_search?{query}", b"patient=123"), BASE_PATH)
    assert isinstance(request, FhirRequest)


def test_search_type_post_with_form_body() -> None:
    request = parse_fhir_request(form_post(f"{BASE_PATH}/Observation/_search?_count=5", b"patient=123"), BASE_PATH)
    assert isinstance(request, FhirRequest)
    assert (request.interaction, request.resource_type) == (Interaction.SEARCH_TYPE, "Observation")
    assert [(p.name, p.value) for p in request.params] == [("_count", "5"), ("patient", "123")]


def test_search_post_content_type_parameters_are_accepted() -> None:
    body = b"subject=Patient%2F123"
    request = parse_fhir_request(
        form_post(
            f"{BASE_PATH}/Observation/_search",
            body,
            **{"content-type": "Application/X-WWW-Form-Urlencoded; charset=UTF-8"},
        ),
        BASE_PATH,
    )
    assert isinstance(request, FhirRequest)
    assert [(p.code, p.value) for p in request.params] == [("subject", "Patient/123")]


def test_search_post_with_empty_body_and_content_length_zero() -> None:
    request = parse_fhir_request(
        http(
            f"{BASE_PATH}/Observation/_search",
            "POST",
            {"content-type": "application/x-www-form-urlencoded", "content-length": "0"},
        ),
        BASE_PATH,
    )
    assert isinstance(request, FhirRequest)
    assert request.params == ()


def test_search_compartment() -> None:
    request = classify("/Patient/1/Observation?code=x")
    assert (request.interaction, request.resource_type, request.resource_id, request.compartment_type) == (
        Interaction.SEARCH_COMPARTMENT,
        "Patient",
        "1",
        "Observation",
    )


def test_search_compartment_post() -> None:
    request = parse_fhir_request(form_post(f"{BASE_PATH}/Patient/1/Observation/_search", b"code=x"), BASE_PATH)
    assert isinstance(request, FhirRequest)
    assert (request.interaction, request.compartment_type) == (Interaction.SEARCH_COMPARTMENT, "Observation")
    assert [p.code for p in request.params] == ["code"]


def test_search_system_get_on_base() -> None:
    assert classify("?_type=Observation").interaction is Interaction.SEARCH_SYSTEM
    assert classify("/").interaction is Interaction.SEARCH_SYSTEM


def test_search_system_post() -> None:
    request = parse_fhir_request(form_post(f"{BASE_PATH}/_search", b"_type=Patient"), BASE_PATH)
    assert isinstance(request, FhirRequest)
    assert request.interaction is Interaction.SEARCH_SYSTEM


def test_capabilities() -> None:
    assert classify("/metadata").interaction is Interaction.CAPABILITIES


def test_smart_configuration() -> None:
    assert classify("/.well-known/smart-configuration").interaction is Interaction.SMART_CONFIGURATION


@pytest.mark.parametrize(
    ("path", "interaction"),
    [
        ("/_history", Interaction.HISTORY_SYSTEM),
        ("/Observation/_history", Interaction.HISTORY_TYPE),
        ("/Observation/abc/_history", Interaction.HISTORY_INSTANCE),
    ],
)
def test_history_kinds(path: str, interaction: Interaction) -> None:
    assert classify(path).interaction is interaction


@pytest.mark.parametrize(
    ("path", "method", "resource_type", "resource_id", "operation"),
    [
        ("/$export", "GET", None, None, "$export"),
        ("/Patient/$match", "POST", "Patient", None, "$match"),
        ("/Patient/123/$everything", "GET", "Patient", "123", "$everything"),
        ("/ValueSet/$expand", "GET", "ValueSet", None, "$expand"),
    ],
)
def test_operations(path: str, method: str, resource_type: str | None, resource_id: str | None, operation: str) -> None:
    request = classify(path, method)
    assert (request.interaction, request.resource_type, request.resource_id, request.operation) == (
        Interaction.OPERATION,
        resource_type,
        resource_id,
        operation,
    )


@pytest.mark.parametrize(
    ("path", "method", "interaction"),
    [
        ("/Observation", "POST", Interaction.CREATE),
        ("/Observation/abc", "PUT", Interaction.UPDATE),
        ("/Observation/abc", "PATCH", Interaction.PATCH),
        ("/Observation/abc", "DELETE", Interaction.DELETE),
        ("/Observation?identifier=x", "PUT", Interaction.UPDATE),
        ("/Observation?identifier=x", "PATCH", Interaction.PATCH),
        ("/Observation?identifier=x", "DELETE", Interaction.DELETE),
    ],
)
def test_write_interactions(path: str, method: str, interaction: Interaction) -> None:
    request = classify(path, method)
    assert (request.interaction, request.resource_type) == (interaction, "Observation")


def test_batch_at_base() -> None:
    request = classify("", "POST", headers={"content-type": "application/fhir+json"}, body=b"{}")
    assert request.interaction is Interaction.BATCH


# --- paths that cannot be classified ----------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/r5/Patient/1", "/r4x/Patient/1", "/fhir/r4/Patient", "/r", "/R4/Patient"])
def test_paths_outside_the_base(path: str) -> None:
    assert request_error(http(path)).reason is Reason.PATH_OUTSIDE_BASE


@pytest.mark.parametrize("path", ["/Foo", "/Foo/1", "/patient/123", "/Observations?code=x", "/_search"])
def test_unknown_resource_type(path: str) -> None:
    assert error_reason(path) is Reason.UNKNOWN_RESOURCE_TYPE


@pytest.mark.parametrize(
    "path",
    [
        "/Patient/a_b",
        "/Patient/a b",
        "/Patient/" + "a" * 65,
        "/Patient/123:456",
        "/Patient/*",
        "/Observation/abc/_history/v_1",
        "/Patient/123/Foo",
        "/Patient/123/Observation/1",
    ],
)
def test_invalid_ids_and_unknown_paths_are_malformed(path: str) -> None:
    assert error_reason(path) is Reason.REQUEST_MALFORMED


@pytest.mark.parametrize(
    "path", ["/Patient/..", "/Patient/.", "/Patient/123/../456", "/../r4/Patient", "/Patient/123/./Observation"]
)
def test_dot_segments_are_malformed(path: str) -> None:
    assert error_reason(path) is Reason.REQUEST_MALFORMED


@pytest.mark.parametrize("path", ["//Patient/1", "/Patient//1", "/Patient/1//", "/Patient/1/Observation//"])
def test_empty_segments_are_malformed(path: str) -> None:
    assert error_reason(path) is Reason.REQUEST_MALFORMED


@pytest.mark.parametrize(
    "path",
    ["/Patient%2F123", "/Patient/12%33", "/%50atient/1", "/Patient/123%2F..%2F456", "/Patient/1#frag", "/Patient\\1"],
)
def test_escapes_fragments_and_backslashes_in_the_path_are_malformed(path: str) -> None:
    assert error_reason(path) is Reason.REQUEST_MALFORMED


def test_percent_escapes_in_the_query_are_fine() -> None:
    assert classify("/Observation?subject=Patient%2F123").params[0].value == "Patient/123"


def test_bad_query_is_malformed() -> None:
    assert error_reason("/Observation?patient=%ZZ") is Reason.REQUEST_MALFORMED
    assert error_reason("/Observation?patient=%00") is Reason.REQUEST_MALFORMED
    assert error_reason("/Patient/123?a%20b=1") is Reason.REQUEST_MALFORMED


@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("/Observation/_search", "GET"),
        ("/Observation", "OPTIONS"),
        ("/Observation/abc", "POST"),
        ("/Observation/abc/_history/1", "DELETE"),
        ("/Observation/abc/_history", "POST"),
        ("", "DELETE"),
    ],
)
def test_methods_that_fit_no_interaction_are_malformed(path: str, method: str) -> None:
    assert error_reason(path, method) is Reason.REQUEST_MALFORMED


def test_is_valid_id() -> None:
    assert is_valid_id("abc-1.2")
    assert is_valid_id("a" * 64)
    assert not is_valid_id("a" * 65)
    assert not is_valid_id("")
    assert not is_valid_id("..")
    assert not is_valid_id(".")
    assert not is_valid_id("a/b")


def test_id_with_a_trailing_newline_is_invalid() -> None:
    assert not is_valid_id("123\n")


# --- POST _search bodies ------------------------------------------------------------------------------


def test_search_post_without_body_is_body_invalid() -> None:
    request = http(
        f"{BASE_PATH}/Observation/_search",
        "POST",
        {"content-type": "application/x-www-form-urlencoded", "content-length": "12"},
    )
    assert request_error(request).reason is Reason.BODY_INVALID


def test_search_post_without_body_or_length_is_body_invalid() -> None:
    request = http(f"{BASE_PATH}/Observation/_search", "POST", {"content-type": "application/x-www-form-urlencoded"})
    assert request_error(request).reason is Reason.BODY_INVALID


def test_chunked_search_post_without_body_is_body_invalid() -> None:
    request = http(
        f"{BASE_PATH}/Observation/_search",
        "POST",
        {"content-type": "application/x-www-form-urlencoded", "content-length": "0", "transfer-encoding": "chunked"},
    )
    assert request_error(request).reason is Reason.BODY_INVALID


def test_truncated_search_body_is_body_invalid() -> None:
    request = http(
        f"{BASE_PATH}/Observation/_search",
        "POST",
        {"content-type": "application/x-www-form-urlencoded"},
        b"patient=123",
        body_truncated=True,
    )
    assert request_error(request).reason is Reason.BODY_INVALID


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "application/json",
        "application/fhir+json",
        "multipart/form-data",
        "text/plain",
        "application/x-www-form-urlencodedx",
    ],
)
def test_search_body_that_is_not_form_encoded_is_body_invalid(content_type: str | None) -> None:
    headers = {"content-length": "11"}
    if content_type is not None:
        headers["content-type"] = content_type
    request = http(f"{BASE_PATH}/Observation/_search", "POST", headers, b"patient=123")
    assert request_error(request).reason is Reason.BODY_INVALID


@pytest.mark.parametrize("body", [b"patient=%ZZ", b"patient=\xff", b"patient=%0A", b"=123"])
def test_undecodable_form_body_is_body_invalid(body: bytes) -> None:
    assert request_error(form_post(f"{BASE_PATH}/Observation/_search", body)).reason is Reason.BODY_INVALID


@pytest.mark.parametrize(
    ("path", "method"),
    [("", "POST"), ("/Observation", "POST"), ("/Observation/abc", "PUT"), ("/Observation/abc", "PATCH")],
)
def test_truncated_write_body_is_body_invalid(path: str, method: str) -> None:
    request = http(BASE_PATH + path, method, {"content-type": "application/fhir+json"}, b"{}", body_truncated=True)
    assert request_error(request).reason is Reason.BODY_INVALID


def test_write_carries_its_body_and_content_type() -> None:
    request = classify(
        "/Observation",
        "POST",
        headers={"content-type": "application/fhir+json; charset=utf-8", "if-none-exist": "identifier=x"},
        body=b"{}",
    )
    assert (request.body, request.content_type, request.if_none_exist, request.conditional) == (
        b"{}",
        "application/fhir+json",
        True,
        True,
    )


def test_reads_carry_no_body() -> None:
    assert classify("/Patient/123", body=b"ignored").body is None


def test_batch_body_is_not_parsed_as_a_form() -> None:
    request = classify("", "POST", headers={"content-type": "application/x-www-form-urlencoded"}, body=b"%ZZ")
    assert request.params == ()


# --- tokens outside the header and method overrides ---------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/Patient/123?access_token=abc",
        "/Observation?patient=123&access_token=abc",
        "/Observation?access%5Ftoken=abc",
        "/metadata?access_token=x",
    ],
)
def test_access_token_in_query_is_refused(path: str) -> None:
    assert error_reason(path) is Reason.TOKEN_NOT_IN_HEADER


def test_access_token_in_form_body_is_refused() -> None:
    request = form_post(f"{BASE_PATH}/Observation/_search", b"patient=123&access_token=abc")
    assert request_error(request).reason is Reason.TOKEN_NOT_IN_HEADER


@pytest.mark.parametrize("header", ["x-http-method-override", "x-http-method", "x-method-override"])
def test_method_override_headers_are_refused(header: str) -> None:
    request = http(f"{BASE_PATH}/Observation?patient=123", "GET", {header: "DELETE"})
    assert request_error(request).reason is Reason.METHOD_OVERRIDE


def test_method_override_is_refused_even_outside_the_base() -> None:
    assert request_error(http("/elsewhere", "POST", {"x-http-method-override": "GET"})).reason is Reason.METHOD_OVERRIDE


# --- from_check_request ---------------------------------------------------------------------------------


def check_request(
    method: str = "POST",
    path: str = "/r4/Observation/_search",
    headers: dict[str, str] | None = None,
    body: str = "",
    raw_body: bytes = b"",
) -> external_auth_pb2.CheckRequest:
    http_request = attribute_context_pb2.AttributeContext.HttpRequest(
        method=method, path=path, headers=headers or {}, body=body, raw_body=raw_body
    )
    return external_auth_pb2.CheckRequest(
        attributes=attribute_context_pb2.AttributeContext(
            request=attribute_context_pb2.AttributeContext.Request(http=http_request)
        )
    )


def test_from_check_request_reads_method_path_headers() -> None:
    request = from_check_request(
        check_request("get", "/r4/Patient/123?_format=json", {"authorization": "Bearer x", "x-request-id": "r-1"})
    )
    assert request == HttpRequest(
        "GET", "/r4/Patient/123?_format=json", {"authorization": "Bearer x", "x-request-id": "r-1"}, None, False
    )
    assert request.request_id == "r-1"


def test_from_check_request_prefers_raw_body() -> None:
    request = from_check_request(
        check_request(headers={"content-length": "11"}, raw_body=b"patient=123", body="ignored")
    )
    assert request.body == b"patient=123"
    assert not request.body_truncated


def test_from_check_request_falls_back_to_string_body() -> None:
    request = from_check_request(check_request(headers={"content-length": "11"}, body="patient=123"))
    assert request.body == b"patient=123"
    assert not request.body_truncated


def test_from_check_request_without_body() -> None:
    request = from_check_request(check_request(headers={"content-length": "11"}))
    assert request.body is None


def test_partial_body_header_marks_the_body_truncated() -> None:
    request = from_check_request(
        check_request(headers={PARTIAL_BODY_HEADER: "true", "content-length": "11"}, raw_body=b"patient=123")
    )
    assert request.body_truncated


@pytest.mark.parametrize("declared", ["100", "5", "eleven", "-11", " 11"])
def test_content_length_mismatch_marks_the_body_truncated(declared: str) -> None:
    request = from_check_request(check_request(headers={"content-length": declared}, raw_body=b"patient=123"))
    assert request.body_truncated


def test_chunked_body_without_content_length_is_not_truncated() -> None:
    request = from_check_request(check_request(headers={"transfer-encoding": "chunked"}, raw_body=b"patient=123"))
    assert request.body == b"patient=123"
    assert not request.body_truncated


def test_truncated_check_request_body_is_refused_by_the_parser() -> None:
    request = from_check_request(
        check_request(
            headers={"content-type": "application/x-www-form-urlencoded", "content-length": "4096"},
            raw_body=b"patient=123",
        )
    )
    assert request_error(request).reason is Reason.BODY_INVALID


def test_complete_check_request_body_is_parsed() -> None:
    request = from_check_request(
        check_request(
            headers={"content-type": "application/x-www-form-urlencoded", "content-length": "11"},
            raw_body=b"patient=123",
        )
    )
    parsed = parse_fhir_request(request, BASE_PATH)
    assert isinstance(parsed, FhirRequest)
    assert [(p.code, p.value) for p in parsed.params] == [("patient", "123")]
