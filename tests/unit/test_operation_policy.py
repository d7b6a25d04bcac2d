"""Operations, history, Binary and system-level search (issue 3, item 3), and granular reads
(item 4). One behaviour per test, named after the rule.

Unless a test says otherwise the token has patient context 123 and the scope ``patient/*.rs``.
"""

from __future__ import annotations

import pytest

from smartgate.config.model import OperationRule
from smartgate.core.reasons import Reason
from smartgate.policy import PolicySettings
from smartgate.policy.decision import Decision
from smartgate.policy.plan import BinaryCheck, MembershipCheck, Pending
from tests.unit.policy_helpers import FHIR_BASE_URL, decide_body, decide_path

LAB = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"
VITALS = "http://terminology.hl7.org/CodeSystem/observation-category|vital-signs"
LASTN = OperationRule("$lastn", frozenset({"type"}), "s")
META = OperationRule("$meta", frozenset({"instance"}), "r", patient_context=True)
EXPORT = OperationRule("$export", frozenset({"system", "type"}), "r")
CONFIGURED = PolicySettings(fhir_base_url=FHIR_BASE_URL, operations=(LASTN, META, EXPORT))
FOLLOWING_LINKS = PolicySettings(fhir_base_url=FHIR_BASE_URL, follow_patient_links=True)


def reason(
    path: str,
    scope: str = "patient/*.rs",
    patient: str | None = "123",
    method: str = "GET",
    settings: PolicySettings | None = None,
) -> Reason:
    outcome = decide_path(path, scope, patient, method, *(() if settings is None else (settings,)))
    assert isinstance(outcome, Decision), outcome
    return outcome.reason


def pending(path: str, scope: str = "patient/*.rs", settings: PolicySettings | None = None) -> Pending:
    outcome = decide_path(path, scope, "123", "GET", *(() if settings is None else (settings,)))
    assert isinstance(outcome, Pending), outcome
    return outcome


# --- Patient/[ctx]/$everything ------------------------------------------------------------------------------


def test_everything_of_the_context_patient_is_allowed_when_every_type_is_granted() -> None:
    assert reason("Patient/123/$everything") is Reason.ALLOWED_OPERATION


def test_everything_is_denied_when_only_some_types_are_granted() -> None:
    assert reason("Patient/123/$everything", "patient/Observation.rs") is Reason.SCOPE_INSUFFICIENT


def test_everything_needs_search_as_well_as_read() -> None:
    assert reason("Patient/123/$everything", "patient/*.r") is Reason.SCOPE_INSUFFICIENT


def test_everything_limited_by_type_needs_only_the_types_named() -> None:
    assert reason("Patient/123/$everything?_type=Observation", "patient/Observation.rs") is Reason.ALLOWED_OPERATION


def test_everything_limited_by_type_is_denied_when_a_named_type_is_not_granted() -> None:
    assert reason("Patient/123/$everything?_type=Observation,Condition", "patient/Observation.rs") is (
        Reason.SCOPE_INSUFFICIENT
    )


def test_everything_naming_a_type_closed_to_patient_scopes_is_denied() -> None:
    assert reason("Patient/123/$everything?_type=Observation,Binary") is Reason.SCOPE_INSUFFICIENT


def test_everything_naming_an_unknown_type_is_denied() -> None:
    assert reason("Patient/123/$everything?_type=Nope") is Reason.UNKNOWN_RESOURCE_TYPE


def test_everything_with_its_own_parameters_is_allowed() -> None:
    path = "Patient/123/$everything?_since=2020-01-01&_count=10&start=2020&end=2021&_elements=id&_format=json"
    assert reason(path) is Reason.ALLOWED_OPERATION


@pytest.mark.parametrize(
    "query",
    [
        "patient=456",
        "_include=Observation:patient",
        "_revinclude=Observation:subject",
        "_has:Observation:patient:code=x",
        "_id=456",
        "_filter=x",
    ],
)
def test_everything_with_a_parameter_outside_its_set_is_denied(query: str) -> None:
    assert reason(f"Patient/123/$everything?{query}") is Reason.SEARCH_PARAMETER_NOT_PERMITTED


def test_everything_posted_with_a_parameters_body_is_denied() -> None:
    # regression: the body's _type (or any parameter) was never seen by the check
    body = {"resourceType": "Parameters", "parameter": [{"name": "_type", "valueString": "Binary"}]}
    outcome = decide_body("Patient/123/$everything", "POST", body, "patient/*.rs")
    assert isinstance(outcome, Decision) and outcome.reason is Reason.SEARCH_PARAMETER_NOT_PERMITTED


def test_everything_posted_without_a_body_is_allowed() -> None:
    assert reason("Patient/123/$everything", method="POST") is Reason.ALLOWED_OPERATION


def test_type_level_everything_is_denied() -> None:
    assert reason("Patient/$everything", "patient/*.rs user/*.rs") is Reason.OPERATION_NOT_PERMITTED


def test_everything_of_another_patient_is_denied_even_with_every_type_granted() -> None:
    assert reason("Patient/456/$everything?_type=Observation") is Reason.COMPARTMENT_OTHER_PATIENT


def test_everything_under_patient_scopes_needs_the_patient_context() -> None:
    assert reason("Patient/123/$everything", patient=None) is Reason.PATIENT_CONTEXT_MISSING


def test_everything_of_any_patient_is_allowed_by_user_scopes_granting_every_type() -> None:
    assert reason("Patient/456/$everything", "user/*.rs", patient=None) is Reason.ALLOWED_OPERATION


def test_everything_is_not_allowed_by_user_scopes_granting_some_types() -> None:
    assert reason("Patient/123/$everything", "user/Observation.rs") is Reason.SCOPE_INSUFFICIENT


# --- $export and unknown operations: closed by default --------------------------------------------------------


@pytest.mark.parametrize("path", ["$export", "Patient/$export", "Group/g1/$export"])
def test_export_is_denied_under_patient_scopes(path: str) -> None:
    assert reason(path, "patient/*.cruds") is Reason.OPERATION_NOT_PERMITTED


@pytest.mark.parametrize("path", ["Patient/123/$foo", "$foo", "Observation/$foo", "Patient/123/$meta"])
def test_unknown_operations_are_denied_by_default(path: str) -> None:
    assert reason(path, "patient/*.cruds user/*.cruds system/*.cruds") is Reason.OPERATION_NOT_PERMITTED


def test_the_config_allowlist_opens_an_operation_to_scopes_granting_its_permission() -> None:
    assert reason("Observation/$lastn", "user/Observation.s", patient=None, settings=CONFIGURED) is (
        Reason.ALLOWED_OPERATION
    )


def test_an_allowlisted_operation_still_needs_its_permission() -> None:
    assert reason("Observation/$lastn", "user/Observation.r", patient=None, settings=CONFIGURED) is (
        Reason.OPERATION_NOT_PERMITTED
    )


def test_an_allowlisted_operation_is_open_only_at_its_levels() -> None:
    assert reason("Observation/abc/$lastn", "user/*.rs", patient=None, settings=CONFIGURED) is (
        Reason.OPERATION_NOT_PERMITTED
    )


def test_an_allowlisted_operation_without_patient_context_stays_closed_to_patient_scopes() -> None:
    assert reason("Observation/$lastn", settings=CONFIGURED) is Reason.OPERATION_NOT_PERMITTED


def test_export_opened_for_user_scopes_stays_closed_to_patient_scopes() -> None:
    assert reason("$export", "user/*.rs", patient=None, settings=CONFIGURED) is Reason.ALLOWED_OPERATION
    assert reason("$export", settings=CONFIGURED) is Reason.OPERATION_NOT_PERMITTED


def test_a_patient_context_operation_on_a_compartment_resource_needs_a_membership_lookup() -> None:
    outcome = pending("Observation/abc/$meta", settings=CONFIGURED)
    assert outcome.allow.reason is Reason.ALLOWED_OPERATION
    assert outcome.checks == (
        MembershipCheck("Observation", "abc", ((("subject", "Patient/123"),), (("performer", "Patient/123"),))),
    )


def test_a_patient_context_operation_on_the_context_patient_needs_no_lookup() -> None:
    assert reason("Patient/123/$meta", settings=CONFIGURED) is Reason.ALLOWED_OPERATION


def test_a_patient_context_operation_may_not_name_another_patient_in_its_parameters() -> None:
    assert reason("Observation/abc/$meta?x=Patient/456", settings=CONFIGURED) is Reason.COMPARTMENT_OTHER_PATIENT


def test_a_patient_context_operation_takes_no_control_parameters() -> None:
    assert reason("Observation/abc/$meta?_format=json", settings=CONFIGURED) is Reason.SEARCH_PARAMETER_NOT_PERMITTED


def test_a_patient_context_operation_is_closed_to_granular_patient_scopes() -> None:
    assert reason("Observation/abc/$meta", f"patient/Observation.r?category={LAB}", settings=CONFIGURED) is (
        Reason.OPERATION_NOT_PERMITTED
    )


def test_a_patient_context_operation_is_open_at_instance_level_only() -> None:
    settings = PolicySettings(
        fhir_base_url=FHIR_BASE_URL,
        operations=(OperationRule("$meta", frozenset({"type", "instance"}), "r", patient_context=True),),
    )
    assert reason("Observation/$meta", settings=settings) is Reason.OPERATION_NOT_PERMITTED


# --- history and vread follow the read rules; type and system levels cannot be bound -------------------------


def test_instance_history_needs_read() -> None:
    assert reason("Observation/abc/_history", "patient/Observation.s") is Reason.SCOPE_INSUFFICIENT


def test_vread_needs_read() -> None:
    assert reason("Observation/abc/_history/1", "patient/Observation.s") is Reason.SCOPE_INSUFFICIENT


def test_instance_history_of_another_patient_record_is_denied() -> None:
    assert reason("Patient/456/_history") is Reason.COMPARTMENT_OTHER_PATIENT


def test_instance_history_of_another_patient_record_needs_the_link_lookup_when_links_are_followed() -> None:
    (check, *_) = pending("Patient/456/_history", settings=FOLLOWING_LINKS).checks
    assert check == MembershipCheck("Patient", "456", ((("link", "Patient/123"),),))


def test_instance_history_with_a_search_parameter_is_denied() -> None:
    assert reason("Observation/abc/_history?_type=Observation") is Reason.SEARCH_PARAMETER_NOT_PERMITTED


def test_instance_history_naming_another_patient_is_denied() -> None:
    assert reason("Observation/abc/_history?x=Patient/456") is Reason.COMPARTMENT_OTHER_PATIENT


def test_vread_takes_no_history_parameters() -> None:
    assert reason("Observation/abc/_history/1?_since=2020") is Reason.SEARCH_PARAMETER_NOT_PERMITTED


def test_type_level_history_is_denied_to_patient_tokens_even_with_a_user_scope_for_another_type() -> None:
    assert reason("Observation/_history", "patient/*.rs user/Condition.rs") is Reason.INTERACTION_NOT_SUPPORTED


def test_type_level_history_is_allowed_by_a_user_read_scope_on_the_type() -> None:
    assert reason("Observation/_history", "user/Observation.r", patient=None) is Reason.ALLOWED_BY_SCOPE


def test_type_level_history_without_a_scope_for_the_type_is_insufficient() -> None:
    assert reason("Observation/_history", "user/Condition.r", patient=None) is Reason.SCOPE_INSUFFICIENT


def test_system_level_history_needs_read_on_every_type() -> None:
    assert reason("_history", "user/Observation.r", patient=None) is Reason.SCOPE_INSUFFICIENT
    assert reason("_history", "user/*.r", patient=None) is Reason.ALLOWED_BY_SCOPE


@pytest.mark.parametrize("path", ["?_type=Observation&patient=123", "?patient=123"])
def test_system_level_search_is_denied_to_patient_tokens(path: str) -> None:
    assert reason(path) is Reason.INTERACTION_NOT_SUPPORTED


def test_system_level_search_posted_is_denied_to_patient_tokens() -> None:
    outcome = decide_body(
        "_search",
        "POST",
        b"_type=Observation&patient=123",
        "patient/*.rs",
        content_type="application/x-www-form-urlencoded",
        headers={"content-length": "29"},
    )
    assert isinstance(outcome, Decision) and outcome.reason is Reason.INTERACTION_NOT_SUPPORTED


def test_system_level_search_is_allowed_by_user_scopes_for_every_named_type() -> None:
    assert reason("?_type=Observation,Condition", "user/Observation.s user/Condition.s", patient=None) is (
        Reason.ALLOWED_BY_SCOPE
    )


def test_system_level_search_is_denied_when_a_named_type_is_not_granted() -> None:
    assert reason("?_type=Observation,Condition", "user/Observation.s", patient=None) is Reason.SCOPE_INSUFFICIENT


def test_system_level_search_without_type_needs_every_type() -> None:
    assert reason("?name=x", "user/Observation.s", patient=None) is Reason.SCOPE_INSUFFICIENT


# --- Binary: outside the compartment, readable under patient/ scopes only through its securityContext ---------


def test_binary_read_of_the_current_version_waits_for_its_security_context() -> None:
    assert pending("Binary/x1").checks == (BinaryCheck("x1", "123"),)


@pytest.mark.parametrize("path", ["Binary/x1/_history/1", "Binary/x1/_history"])
def test_past_binary_versions_are_denied_under_patient_scopes(path: str) -> None:
    # regression: the securityContext look-up reads the current version only, so a past version
    # bound to another patient was shown
    assert reason(path) is Reason.INTERACTION_NOT_SUPPORTED


def test_past_binary_versions_stay_open_to_user_scopes() -> None:
    assert reason("Binary/x1/_history/1", "user/Binary.r", patient=None) is Reason.ALLOWED_BY_SCOPE


def test_binary_search_is_closed_to_patient_scopes() -> None:
    assert reason("Binary?_id=x1") is Reason.SCOPE_INSUFFICIENT


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_binary_writes_are_closed_to_patient_scopes(method: str) -> None:
    path = "Binary" if method == "POST" else "Binary/x1"
    body = None if method == "DELETE" else {"resourceType": "Binary", "id": "x1", "contentType": "text/plain"}
    outcome = decide_body(path, method, body, "patient/*.cruds")
    assert isinstance(outcome, Decision) and outcome.reason is Reason.SCOPE_INSUFFICIENT


# --- granular reads: by id only when the look-up proves the match; several scopes union ----------------------


def test_several_granular_read_scopes_prove_any_one_of_their_constraints() -> None:
    scope = f"patient/Observation.r?category={LAB} patient/Observation.r?category={VITALS}"
    outcome = pending("Observation/abc", scope)
    (check,) = outcome.checks
    assert isinstance(check, MembershipCheck)
    assert {query[1] for query in check.queries} == {("category", LAB), ("category", VITALS)}
    assert all(query[0] in {("subject", "Patient/123"), ("performer", "Patient/123")} for query in check.queries)


def test_several_granular_search_scopes_grant_a_search_carrying_either_constraint() -> None:
    scope = f"patient/Observation.s?category={LAB} patient/Observation.s?category={VITALS}"
    assert reason(f"Observation?patient=123&category={VITALS}", scope) is Reason.ALLOWED_COMPARTMENT_SEARCH
    assert reason(f"Observation?patient=123&category={LAB}", scope) is Reason.ALLOWED_COMPARTMENT_SEARCH


def test_a_plain_read_scope_supersedes_granular_ones_for_reads_by_id() -> None:
    (check,) = pending("Observation/abc", f"patient/Observation.r?category={LAB} patient/Observation.r").checks
    assert isinstance(check, MembershipCheck)
    assert check.queries == ((("subject", "Patient/123"),), (("performer", "Patient/123"),))


def test_a_granular_read_of_a_type_outside_the_compartment_needs_its_constraint_proven() -> None:
    (check,) = pending("Practitioner/p1", "patient/Practitioner.r?active=true").checks
    assert check == MembershipCheck("Practitioner", "p1", ((("active", "true"),),))


def test_a_granular_binary_scope_grants_no_binary_read() -> None:
    assert reason("Binary/x1", "patient/Binary.r?_security=R") is Reason.SCOPE_INSUFFICIENT
