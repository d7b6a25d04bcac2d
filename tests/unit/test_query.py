"""Query strings and form bodies: decoded exactly once, strictly."""

from __future__ import annotations

import pytest

from smartgate.fhir.query import QueryError, SearchParam, parse_query


def pairs(raw: bytes | str) -> list[tuple[str, str]]:
    return [(p.name, p.value) for p in parse_query(raw)]


def test_simple_pairs_in_order() -> None:
    assert pairs("patient=123&code=abc&_count=10") == [("patient", "123"), ("code", "abc"), ("_count", "10")]


def test_bytes_and_str_give_the_same_result() -> None:
    assert parse_query(b"a=1&b=2") == parse_query("a=1&b=2")


def test_percent_2f_decodes_to_slash() -> None:
    assert pairs("subject=Patient%2F123") == [("subject", "Patient/123")]


def test_plus_decodes_to_space() -> None:
    assert pairs("name=John+Smith") == [("name", "John Smith")]


def test_escaped_plus_stays_a_plus() -> None:
    assert pairs("date=2020-01-01T00:00:00%2B01:00") == [("date", "2020-01-01T00:00:00+01:00")]


def test_decoding_happens_exactly_once() -> None:
    assert pairs("subject=Patient%252F456") == [("subject", "Patient%2F456")]


def test_names_are_decoded_too() -> None:
    assert pairs("pat%69ent=123") == [("patient", "123")]


def test_utf8_is_decoded() -> None:
    assert pairs("name=Jos%C3%A9") == [("name", "José")]


def test_empty_pieces_are_skipped() -> None:
    assert pairs("a=1&&b=2&") == [("a", "1"), ("b", "2")]


def test_empty_query() -> None:
    assert parse_query("") == ()
    assert parse_query(b"") == ()


def test_name_without_value() -> None:
    assert pairs("_summary") == [("_summary", "")]


def test_value_keeps_further_equals_signs() -> None:
    assert pairs("a=1=2") == [("a", "1=2")]


@pytest.mark.parametrize("raw", ["a=%", "a=%2", "a=%G1", "a=%%41", "a%=1", "a=100%"])
def test_invalid_percent_escape_is_an_error(raw: str) -> None:
    with pytest.raises(QueryError):
        parse_query(raw)


@pytest.mark.parametrize("raw", [b"a=%FF", b"a=%C3", b"a=%C3%28", b"a=\xff", b"%FF=1", b"a=%ED%A0%80"])
def test_invalid_utf8_is_an_error(raw: bytes) -> None:
    with pytest.raises(QueryError):
        parse_query(raw)


@pytest.mark.parametrize("raw", ["a=%00", "a=%0A", "a=%0D%0A", "a=%09", "a=%1F", "a=%7F", "a=\x01", "a%00=1"])
def test_control_characters_are_an_error(raw: str) -> None:
    with pytest.raises(QueryError):
        parse_query(raw)


@pytest.mark.parametrize(
    "raw",
    ["=1", "%3D=1", "1abc=1", "a%20b=1", "a::b=1", "a:=1", "a.=1", "-a=1", "a b=1", "%C3%A9=1", "a%22=1", "a/b=1"],
)
def test_malformed_names_are_an_error(raw: str) -> None:
    with pytest.raises(QueryError):
        parse_query(raw)


def test_plain_name_has_no_modifier_or_chain() -> None:
    assert parse_query("patient=123") == (SearchParam("patient", "patient", None, None, "123"),)


def test_modifier_is_split_from_the_code() -> None:
    (param,) = parse_query("subject:Patient=123")
    assert (param.code, param.modifier, param.chain) == ("subject", "Patient", None)


def test_chain_is_split_from_the_code() -> None:
    (param,) = parse_query("patient.name=Smith")
    assert (param.code, param.modifier, param.chain, param.value) == ("patient", None, "name", "Smith")


def test_modifier_and_chain_together() -> None:
    (param,) = parse_query("subject:Patient.name=Smith")
    assert (param.name, param.code, param.modifier, param.chain) == (
        "subject:Patient.name",
        "subject",
        "Patient",
        "name",
    )


def test_multi_level_chain_keeps_the_rest() -> None:
    (param,) = parse_query("patient.organization.name:exact=Acme")
    assert (param.code, param.modifier, param.chain) == ("patient", None, "organization.name:exact")


def test_several_modifiers_are_kept_together() -> None:
    (param,) = parse_query("_has:Observation:patient:code=1234-5")
    assert (param.code, param.modifier, param.chain) == ("_has", "Observation:patient:code", None)


def test_missing_modifier() -> None:
    (param,) = parse_query("patient:missing=true")
    assert (param.code, param.modifier, param.value) == ("patient", "missing", "true")


def test_underscore_and_hyphen_names() -> None:
    assert [p.code for p in parse_query("_lastUpdated=gt2020&general-practitioner=Practitioner/1")] == [
        "_lastUpdated",
        "general-practitioner",
    ]
