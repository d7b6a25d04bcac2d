"""Properties of the parsers of untrusted input: the query/form decoder, the FHIR request
classifier, resource bodies and Bundles. They answer a value or their own error, never raise."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest
from fuzz.check_world import BASE_PATH, FHIR_BASE_URL
from hypothesis import given, settings
from hypothesis import strategies as st

from smartgate.core.http import HttpRequest
from smartgate.core.reasons import Refusal
from smartgate.fhir.query import QueryError, parse_query
from smartgate.fhir.request import FhirRequest, parse_fhir_request
from smartgate.fhir.resources import BodyError, parse_resource
from smartgate.policy import PolicySettings, decide
from smartgate.tokens.context import TokenContext
from smartgate.tokens.scopes import parse_scopes

pytestmark = pytest.mark.fuzz

PROPERTY = settings(max_examples=200, deadline=None, derandomize=True, database=None)
METHODS = st.sampled_from(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "get", ""])
PATH_PIECES = st.sampled_from(
    [
        "Observation",
        "Patient",
        "alice7",
        "bob9",
        "_search",
        "_history",
        "$everything",
        "metadata",
        "..",
        ".",
        "",
        "%2F",
        "Bundle",
        "1",
        "x?y",
        "#",
        "\\",
        "\x00",
        "é",
    ]
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "resourceType",
                    "id",
                    "subject",
                    "patient",
                    "reference",
                    "entry",
                    "request",
                    "url",
                    "method",
                    "resource",
                    "contained",
                    "type",
                    "x",
                ]
            ),
            children,
            max_size=5,
        )
    ),
    max_leaves=20,
)
ALICE = TokenContext(
    issuer="https://issuer.example.org",
    subject="user-1",
    client_id="fuzz-app",
    scope_text="patient/*.cruds",
    grants=parse_scopes(["patient/*.cruds"]),
    patient="alice7",
    fhir_user=None,
    expires_at=2e9,
)
SETTINGS = PolicySettings(fhir_base_url=FHIR_BASE_URL)


@PROPERTY
@given(raw=st.binary(max_size=200))
def test_the_query_decoder_answers_params_or_a_query_error(raw: bytes) -> None:
    try:
        params = parse_query(raw)
    except QueryError:
        return
    for param in params:
        assert param.name and not any(ord(char) < 0x20 or char == "\x7f" for char in param.name + param.value)


@PROPERTY
@given(
    value=st.text(
        alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x2FF, exclude_characters="\x7f"), max_size=30
    )
)
def test_the_query_decoder_decodes_exactly_once(value: str) -> None:
    once = quote(value, safe="")
    assert parse_query(f"code={once}")[0].value == value
    assert parse_query(f"code={quote(once, safe='')}")[0].value == once  # never a second time


@PROPERTY
@given(
    method=METHODS,
    pieces=st.lists(PATH_PIECES, max_size=5),
    query=st.text(max_size=40),
    headers=st.dictionaries(
        st.sampled_from(
            ["content-type", "content-length", "x-http-method-override", "if-none-exist", "transfer-encoding"]
        ),
        st.text(max_size=40),
        max_size=3,
    ),
    body=st.none() | st.binary(max_size=120),
    truncated=st.booleans(),
)
def test_classifying_any_request_answers_a_fhir_request_or_a_request_error(
    method: str, pieces: list[str], query: str, headers: dict[str, str], body: bytes | None, truncated: bool
) -> None:
    path = BASE_PATH + "/" + "/".join(pieces) + (f"?{query}" if query else "")
    http = HttpRequest(method=method, path=path, headers=headers, body=body, body_truncated=truncated)
    parsed = parse_fhir_request(http, BASE_PATH)
    assert isinstance(parsed, FhirRequest | Refusal)
    if isinstance(parsed, FhirRequest) and truncated and method in ("POST", "PUT", "PATCH"):
        raise AssertionError("a truncated body was classified as complete")


@PROPERTY
@given(document=JSON, expected=st.sampled_from([None, "Observation", "Patient", "Bundle"]))
def test_a_resource_body_is_a_resource_or_a_body_error(document: Any, expected: str | None) -> None:
    try:
        resource = parse_resource(json.dumps(document).encode(), expected)
    except BodyError:
        return
    assert isinstance(resource, dict) and isinstance(resource.get("resourceType"), str)


@PROPERTY
@given(
    method=st.sampled_from(["POST", "PUT", "PATCH"]),
    path=st.sampled_from(
        ["", "/Observation", "/Observation/alice7-o1", "/Patient/alice7", "/Patient/alice7/$everything"]
    ),
    content_type=st.sampled_from(["application/fhir+json", "application/json-patch+json", "application/json"]),
    document=JSON,
    nest=st.integers(0, 3),
)
def test_the_policy_decides_any_json_body_without_raising(
    method: str, path: str, content_type: str, document: Any, nest: int
) -> None:
    """Writes, patches and Bundles (entries included) of arbitrary JSON: a Decision or look-ups, never an exception."""
    if nest:
        document = {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [{"request": {"method": "POST", "url": "Observation"}, "resource": document}] * nest,
        }
    http = HttpRequest(
        method=method, path=BASE_PATH + path, headers={"content-type": content_type}, body=json.dumps(document).encode()
    )
    parsed = parse_fhir_request(http, BASE_PATH)
    if isinstance(parsed, FhirRequest):
        decide(parsed, ALICE, SETTINGS)
