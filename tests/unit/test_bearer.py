"""extract_bearer: the token comes from the Authorization header, and nowhere else."""

from __future__ import annotations

import pytest

from smartgate.core.reasons import Reason, Refusal
from smartgate.tokens.bearer import extract_bearer

MAX = 64
JWT_LIKE = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJ4In0.c2lnbmF0dXJl"


def _reason(result: object) -> Reason:
    assert isinstance(result, Refusal), f"expected a Refusal, got {result!r}"
    return result.reason


def test_missing_authorization_header_gives_none() -> None:
    assert extract_bearer({}, MAX) is None


def test_token_elsewhere_than_authorization_header_is_not_used() -> None:
    headers = {"x-access-token": JWT_LIKE, "cookie": f"access_token={JWT_LIKE}"}
    assert extract_bearer(headers, MAX) is None


def test_bearer_token_is_returned() -> None:
    assert extract_bearer({"authorization": f"Bearer {JWT_LIKE}"}, MAX) == JWT_LIKE


def test_bearer_scheme_is_case_insensitive() -> None:
    assert extract_bearer({"authorization": f"bEaReR {JWT_LIKE}"}, MAX) == JWT_LIKE


def test_surrounding_spaces_around_the_token_are_ignored() -> None:
    assert extract_bearer({"authorization": f"Bearer   {JWT_LIKE}  "}, MAX) == JWT_LIKE


def test_b64token_alphabet_with_padding_is_accepted() -> None:
    token = "Az09-._~+/=="
    assert extract_bearer({"authorization": f"Bearer {token}"}, MAX) == token


@pytest.mark.parametrize(
    "value",
    [f"Basic {JWT_LIKE}", f"DPoP {JWT_LIKE}", f"Token {JWT_LIKE}", 'Digest username="a", realm="b"', "basic abc"],
    ids=["basic", "dpop", "token", "digest", "lower-case"],
)
def test_another_authentication_scheme_gets_the_bare_challenge(value: str) -> None:
    """RFC 6750 section 3.1: a request with an unsupported authentication method is a 401 whose
    challenge carries no error code (the README's interaction with Basic was a 400 before)."""
    result = extract_bearer({"authorization": value}, MAX)
    assert _reason(result) is Reason.AUTHENTICATION_SCHEME_UNSUPPORTED
    assert (
        Reason.AUTHENTICATION_SCHEME_UNSUPPORTED.http_status,
        Reason.AUTHENTICATION_SCHEME_UNSUPPORTED.bearer_error,
    ) == (401, None)


@pytest.mark.parametrize(
    "value",
    [f"Bearer-{JWT_LIKE}", f"Bearer\t{JWT_LIKE}", f" Bearer {JWT_LIKE}", JWT_LIKE, "Ba(sic abc"],
    ids=["no-space", "tab", "leading-space", "no-scheme", "not-a-scheme"],
)
def test_a_header_that_is_no_scheme_and_credentials_is_malformed(value: str) -> None:
    assert _reason(extract_bearer({"authorization": value}, MAX)) is Reason.AUTHORIZATION_HEADER_MALFORMED


@pytest.mark.parametrize("value", ["Bearer", "Bearer ", "Bearer    ", ""], ids=["bare", "space", "spaces", "empty"])
def test_empty_bearer_credentials_are_malformed_header(value: str) -> None:
    assert _reason(extract_bearer({"authorization": value}, MAX)) is Reason.AUTHORIZATION_HEADER_MALFORMED


@pytest.mark.parametrize(
    "value",
    [
        f"Bearer {JWT_LIKE},Bearer {JWT_LIKE}",
        f"Bearer {JWT_LIKE}, Bearer {JWT_LIKE}",
        f"Bearer {JWT_LIKE},{JWT_LIKE}",
    ],
    ids=["comma", "comma-space", "comma-token"],
)
def test_duplicate_authorization_headers_joined_with_comma_are_malformed_header(value: str) -> None:
    assert _reason(extract_bearer({"authorization": value}, 1024)) is Reason.AUTHORIZATION_HEADER_MALFORMED


@pytest.mark.parametrize(
    "token",
    [
        "abc def",
        "abc\r\nx-injected: 1",
        "abc\x00",
        "abc%2Edef",
        'abc"def',
        "abc;def",
        "abc==def",
        "=abc",
        "t\u00f6ken",
        "abc\u2028",
    ],
    ids=[
        "space",
        "crlf",
        "nul",
        "percent",
        "quote",
        "semicolon",
        "inner-padding",
        "only-padding-first",
        "non-ascii",
        "unicode-separator",
    ],
)
def test_illegal_characters_in_token_are_malformed_header(token: str) -> None:
    assert _reason(extract_bearer({"authorization": f"Bearer {token}"}, MAX)) is (Reason.AUTHORIZATION_HEADER_MALFORMED)


def test_token_with_trailing_newline_is_malformed_header() -> None:
    result = extract_bearer({"authorization": f"Bearer {JWT_LIKE}\n"}, MAX)
    assert _reason(result) is Reason.AUTHORIZATION_HEADER_MALFORMED


def test_token_at_the_size_limit_is_accepted() -> None:
    token = "a" * MAX
    assert extract_bearer({"authorization": f"Bearer {token}"}, MAX) == token


def test_oversized_token_is_malformed_token() -> None:
    token = "a" * (MAX + 1)
    assert _reason(extract_bearer({"authorization": f"Bearer {token}"}, MAX)) is Reason.TOKEN_MALFORMED


def test_oversized_token_with_illegal_characters_is_still_rejected() -> None:
    result = extract_bearer({"authorization": "Bearer " + "a b" * MAX}, MAX)
    assert _reason(result) in (Reason.TOKEN_MALFORMED, Reason.AUTHORIZATION_HEADER_MALFORMED)


def test_bearer_error_reasons_have_the_documented_http_status() -> None:
    header = extract_bearer({"authorization": "Bearer a,b"}, MAX)
    oversized = extract_bearer({"authorization": "Bearer " + "a" * (MAX + 1)}, MAX)
    assert isinstance(header, Refusal)
    assert isinstance(oversized, Refusal)
    assert (header.reason.http_status, header.reason.bearer_error) == (400, "invalid_request")
    assert (oversized.reason.http_status, oversized.reason.bearer_error) == (401, "invalid_token")
