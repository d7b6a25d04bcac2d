"""Properties of SMART scope parsing: a scope never grants more than it says."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smartgate.tokens.scopes import CONTEXTS, parse_scope, parse_scopes

pytestmark = pytest.mark.fuzz

PROPERTY = settings(max_examples=300, deadline=None, derandomize=True, database=None)
TYPES = ("Observation", "Patient", "Condition", "Encounter", "*")
CANONICAL = "cruds"
LETTERS = st.lists(st.sampled_from(CANONICAL), min_size=1, max_size=5, unique=True)


def _canonical(letters: list[str]) -> str:
    return "".join(letter for letter in CANONICAL if letter in letters)


@PROPERTY
@given(text=st.text(max_size=80))
def test_parsing_any_text_never_raises(text: str) -> None:
    parse_scope(text)
    parse_scopes([text])


@PROPERTY
@given(context=st.sampled_from(CONTEXTS), resource_type=st.sampled_from(TYPES), letters=LETTERS)
def test_permission_letters_out_of_order_grant_nothing(context: str, resource_type: str, letters: list[str]) -> None:
    suffix = "".join(letters)
    scope = parse_scope(f"{context}/{resource_type}.{suffix}")
    if suffix == _canonical(letters):
        assert scope is not None and scope.permissions == frozenset(letters)
    else:
        assert scope is None


@PROPERTY
@given(
    context=st.sampled_from(CONTEXTS),
    resource_type=st.sampled_from(TYPES),
    letters=LETTERS,
    asked_context=st.sampled_from(CONTEXTS),
    asked_type=st.sampled_from(TYPES[:-1]),
    permission=st.sampled_from(CANONICAL),
)
def test_a_scope_grants_only_its_context_type_and_letters(
    context: str, resource_type: str, letters: list[str], asked_context: str, asked_type: str, permission: str
) -> None:
    grants = parse_scopes([f"{context}/{resource_type}.{_canonical(letters)}"])
    expected = asked_context == context and resource_type in (asked_type, "*") and permission in letters
    assert grants.permits(asked_context, asked_type, permission) is expected


@PROPERTY
@given(
    context=st.sampled_from(CONTEXTS),
    resource_type=st.sampled_from(TYPES),
    letters=LETTERS,
    constraint=st.sampled_from(["category=laboratory", "code=http://loinc.org|1234", "status=final&category=x"]),
    asked_type=st.sampled_from(TYPES[:-1]),
    permission=st.sampled_from(CANONICAL),
)
def test_a_granular_scope_grants_no_more_than_its_plain_form(
    context: str, resource_type: str, letters: list[str], constraint: str, asked_type: str, permission: str
) -> None:
    plain = f"{context}/{resource_type}.{_canonical(letters)}"
    granular = parse_scopes([f"{plain}?{constraint}"])
    plain_grants = parse_scopes([plain])
    for asked_context in CONTEXTS:
        assert not granular.permits(asked_context, asked_type, permission)  # only a proven constraint grants
    for scope in granular.granular_for(asked_type, permission):
        assert plain_grants.permits(scope.context, asked_type, permission)


@PROPERTY
@given(
    scopes=st.lists(
        st.sampled_from(
            [
                "patient/Observation.rs",
                "patient/*.read",
                "user/Patient.cud",
                "system/*.s",
                "patient/Condition.write",
                "launch/patient",
                "openid",
                "patient/Observation.sr",
                "user/Foo.rs",
                "patient/Observation.rs?category=lab",
            ]
        ),
        max_size=5,
    ),
    asked=st.tuples(st.sampled_from(CONTEXTS), st.sampled_from(TYPES[:-1]), st.sampled_from(CANONICAL)),
)
def test_the_grants_are_exactly_the_union_of_the_scopes(scopes: list[str], asked: tuple[str, str, str]) -> None:
    union = parse_scopes([" ".join(scopes)])
    assert union.permits(*asked) is any(parse_scopes([scope]).permits(*asked) for scope in scopes)


def test_v1_suffixes_map_to_their_v2_letters() -> None:
    for suffix, letters in (("read", "rs"), ("write", "cud"), ("*", "cruds")):
        scope = parse_scope(f"patient/Observation.{suffix}")
        assert scope is not None and scope.permissions == frozenset(letters)
    for permutation in itertools.permutations("rs"):
        assert (parse_scope(f"patient/Observation.{''.join(permutation)}") is None) is (permutation != ("r", "s"))
