"""SMART scopes: what each scope string grants, and that anything doubtful grants nothing."""

from __future__ import annotations

import itertools

import pytest

from smartgate.tokens.scopes import ALL_PERMISSIONS, ScopeGrants, parse_scope, parse_scopes


def granted(scope: str, context: str = "patient", resource_type: str = "Observation") -> set[str]:
    grants = parse_scopes([scope])
    return {p for p in "cruds" if grants.permits(context, resource_type, p)}


def _ordered_subsets() -> list[str]:
    return ["".join(combo) for n in range(1, 6) for combo in itertools.combinations("cruds", n)]


# --- v1 ---------------------------------------------------------------------------------------


def test_v1_read_grants_read_and_search() -> None:
    assert granted("patient/Observation.read") == {"r", "s"}


def test_v1_write_grants_create_update_delete_only() -> None:
    assert granted("patient/Observation.write") == {"c", "u", "d"}


def test_v1_star_grants_everything() -> None:
    assert granted("patient/Observation.*") == set("cruds")


def test_v1_scope_parses_to_its_permissions() -> None:
    scope = parse_scope("user/Patient.read")
    assert scope is not None
    assert (scope.context, scope.resource_type, scope.permissions) == ("user", "Patient", frozenset("rs"))
    assert not scope.granular


def test_v1_scope_with_a_query_is_invalid() -> None:
    assert parse_scope("patient/Observation.read?category=laboratory") is None
    assert granted("patient/Observation.read?category=laboratory") == set()


# --- v2 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", _ordered_subsets())
def test_v2_any_ordered_subset_of_cruds_grants_exactly_those_letters(suffix: str) -> None:
    assert granted(f"patient/Observation.{suffix}") == set(suffix)


def test_every_ordered_subset_is_covered() -> None:
    assert len(_ordered_subsets()) == 31


@pytest.mark.parametrize("suffix", ["sr", "rc", "dc", "sd", "scrud", "ur", "src"])
def test_v2_out_of_order_suffix_grants_nothing(suffix: str) -> None:
    assert parse_scope(f"patient/Observation.{suffix}") is None
    assert granted(f"patient/Observation.{suffix}") == set()


@pytest.mark.parametrize("suffix", ["rr", "rss", "ccruds", "crudss", "cc"])
def test_v2_duplicate_letters_grant_nothing(suffix: str) -> None:
    assert parse_scope(f"patient/Observation.{suffix}") is None


@pytest.mark.parametrize("suffix", ["x", "rx", "reads", "**", "r*", "READ", "Rs", ""])
def test_unknown_permission_suffix_grants_nothing(suffix: str) -> None:
    assert parse_scope(f"patient/Observation.{suffix}") is None


def test_write_never_implies_read() -> None:
    for scope in ("patient/Observation.write", "patient/Observation.cud", "patient/*.cud", "user/*.write"):
        grants = parse_scopes([scope])
        for context in ("patient", "user", "system"):
            assert not grants.permits(context, "Observation", "r"), scope
            assert not grants.permits(context, "Observation", "s"), scope


def test_read_does_not_imply_search_in_v2() -> None:
    assert granted("patient/Observation.r") == {"r"}
    assert granted("patient/Observation.s") == {"s"}


# --- resource types and contexts ----------------------------------------------------------------


@pytest.mark.parametrize("resource_type", ["Foo", "observation", "Observations", "OBSERVATION", "Patient1"])
def test_unknown_resource_type_grants_nothing(resource_type: str) -> None:
    assert parse_scope(f"patient/{resource_type}.rs") is None


def test_star_type_grants_every_type_in_its_context() -> None:
    grants = parse_scopes(["patient/*.rs"])
    for resource_type in ("Observation", "Patient", "Practitioner", "Binary"):
        assert grants.permits("patient", resource_type, "r")
        assert grants.permits("patient", resource_type, "s")
        assert not grants.permits("patient", resource_type, "c")
    assert not grants.permits("user", "Observation", "r")


@pytest.mark.parametrize("context", ["patient", "user", "system"])
def test_each_context_grants_only_in_itself(context: str) -> None:
    grants = parse_scopes([f"{context}/Observation.rs"])
    for other in ("patient", "user", "system"):
        assert grants.permits(other, "Observation", "r") is (other == context)


def test_user_and_system_scopes_permit_beyond_patient() -> None:
    assert parse_scopes(["user/Observation.rs"]).permits_beyond_patient("Observation", "r")
    assert parse_scopes(["system/Observation.rs"]).permits_beyond_patient("Observation", "s")
    assert not parse_scopes(["patient/Observation.rs"]).permits_beyond_patient("Observation", "r")


@pytest.mark.parametrize(
    "text",
    [
        "Patient/Observation.rs",
        "practitioner/Observation.rs",
        "patient/.rs",
        "patient/Observation",
        "patient/Observation.",
        "/Observation.rs",
        "patient//Observation.rs",
        "patient/Observation.rs/extra",
    ],
)
def test_malformed_scope_grants_nothing(text: str) -> None:
    assert parse_scope(text) is None


def test_scopes_are_a_union() -> None:
    grants = parse_scopes(["patient/Observation.r patient/Observation.s", "patient/Condition.read user/Practitioner.r"])
    assert grants.permits("patient", "Observation", "r")
    assert grants.permits("patient", "Observation", "s")
    assert grants.permits("patient", "Condition", "s")
    assert grants.permits("user", "Practitioner", "r")
    assert not grants.permits("user", "Practitioner", "s")
    assert not grants.permits("patient", "Practitioner", "r")


def test_union_of_specific_and_wildcard_scope() -> None:
    grants = parse_scopes(["patient/*.r patient/Observation.s"])
    assert grants.permits("patient", "Observation", "s")
    assert grants.permits("patient", "Observation", "r")
    assert grants.permits("patient", "Condition", "r")
    assert not grants.permits("patient", "Condition", "s")


def test_scope_values_split_on_any_whitespace() -> None:
    grants = parse_scopes(["patient/Observation.rs\tpatient/Condition.rs\n user/Patient.r"])
    assert grants.permits("patient", "Condition", "r")
    assert grants.permits("user", "Patient", "r")


# --- granular and non-resource scopes --------------------------------------------------------------


def test_granular_scope_grants_nothing_yet() -> None:
    text = "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory"
    scope = parse_scope(text)
    assert scope is not None and scope.granular
    assert scope.constraints == (("category", "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"),)
    grants = parse_scopes([text])
    assert granted(text) == set()
    assert grants.granular == (scope,)


def test_granular_scope_does_not_widen_an_unconstrained_scope() -> None:
    grants = parse_scopes(["patient/Observation.r patient/Observation.rs?category=laboratory"])
    assert grants.permits("patient", "Observation", "r")
    assert not grants.permits("patient", "Observation", "s")


def test_granular_scope_still_counts_as_a_patient_scope() -> None:
    assert parse_scopes(["patient/Observation.rs?category=laboratory"]).has_patient_scopes


@pytest.mark.parametrize(
    "text", ["patient/Observation.rs?category", "patient/Observation.rs?", "patient/Observation.rs?a=1&&b"]
)
def test_malformed_granular_query_is_invalid(text: str) -> None:
    assert parse_scope(text) is None


@pytest.mark.parametrize(
    "text",
    [
        "patient/Observation.rs?=x",
        "patient/Observation.rs?a=1&b=2",
        "patient/*.rs?category=laboratory",
        "user/Observation.rs?code=1234-5",
    ],
)
def test_any_constrained_scope_grants_nothing(text: str) -> None:
    for context in ("patient", "user", "system"):
        assert granted(text, context) == set()


@pytest.mark.parametrize(
    "text",
    [
        "openid",
        "fhirUser",
        "profile",
        "launch",
        "launch/patient",
        "launch/encounter",
        "offline_access",
        "online_access",
    ],
)
def test_non_resource_scopes_are_ignored(text: str) -> None:
    assert parse_scope(text) is None
    grants = parse_scopes([f"{text} patient/Observation.rs"])
    assert [scope.text for scope in grants.scopes] == ["patient/Observation.rs"]


def test_no_resource_scopes_grant_nothing() -> None:
    grants = parse_scopes(["openid fhirUser launch/patient offline_access"])
    assert grants.scopes == ()
    assert not grants.has_patient_scopes
    for context in ("patient", "user", "system"):
        for permission in ALL_PERMISSIONS:
            assert not grants.permits(context, "Observation", permission)


def test_has_patient_scopes_only_for_patient_context() -> None:
    assert parse_scopes(["patient/*.rs"]).has_patient_scopes
    assert not parse_scopes(["user/*.rs system/*.rs"]).has_patient_scopes


def test_empty_grants_permit_nothing() -> None:
    assert not ScopeGrants([]).permits("patient", "Patient", "r")
