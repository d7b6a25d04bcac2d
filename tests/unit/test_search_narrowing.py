"""Issue 15 at the policy: searches narrowed to the context patient, Device bound through ``patient``,
comma lists under granular scopes, and case variants of binding parameters.

Unless a test says otherwise the token has patient context 123 and the scope ``patient/*.rs``.
"""

from __future__ import annotations

import json

import pytest

from smartgate.core.reasons import Reason
from smartgate.fhir.compartment import MEMBERSHIP_PARAMS, NARROWING_EXCEPTIONS, bound_types
from smartgate.policy import PolicySettings, decide
from smartgate.policy.decision import Decision
from smartgate.policy.plan import MembershipCheck, Pending
from tests.unit.policy_helpers import (
    FHIR_BASE_URL,
    SETTINGS,
    decide_body,
    decide_path,
    fhir_request,
    form_post,
    token_context,
)

NO_NARROWING = PolicySettings(fhir_base_url=FHIR_BASE_URL, search_narrowing=False)
NO_EXTRA_BINDINGS = PolicySettings(fhir_base_url=FHIR_BASE_URL, extra_binding_params={})
LAB = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"
VITALS = "http://terminology.hl7.org/CodeSystem/observation-category|vital-signs"
SURVEY = "http://terminology.hl7.org/CodeSystem/observation-category|survey"
LAB_SCOPE = f"patient/Observation.rs?category={LAB}"
LAB_AND_VITALS_SCOPES = f"{LAB_SCOPE} patient/Observation.rs?category={VITALS}"


def decided(path: str, scope: str = "patient/*.rs", settings: PolicySettings = SETTINGS) -> Decision:
    outcome = decide_path(path, scope, settings=settings)
    assert isinstance(outcome, Decision), outcome
    return outcome


def reason(path: str, scope: str = "patient/*.rs", settings: PolicySettings = SETTINGS) -> Reason:
    return decided(path, scope, settings).reason


# --- search narrowing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "narrowing"),
    [
        ("Observation?code=http://loinc.org|8867-4", ("patient", "123")),
        ("Condition?clinical-status=active", ("patient", "123")),
        ("Patient?identifier=http://hospital.example.org|1032702", ("_id", "123")),
        ("Patient?name=Shaw&birthdate=2007-03-20", ("_id", "123")),
        ("Coverage?_id=c1", ("patient", "123")),
        ("Encounter?_id=e1", ("patient", "123")),
        ("Device?type=http://snomed.info/sct|468063009", ("patient", "123")),
        ("Observation", ("patient", "123")),
    ],
)
def test_an_unbound_search_of_a_bound_type_is_narrowed_to_the_context_patient(
    path: str, narrowing: tuple[str, str]
) -> None:
    outcome = decided(path)
    assert outcome.reason is Reason.ALLOWED_NARROWED
    assert outcome.query_parameters_to_set == (narrowing,)


def test_a_type_without_a_patient_parameter_is_narrowed_through_a_typed_reference() -> None:
    assert decided("AdverseEvent?seriousness=x").query_parameters_to_set == (("subject", "Patient/123"),)


def test_every_bound_type_has_one_narrowing_parameter_that_binds_it() -> None:
    bound = SETTINGS.bound
    for resource_type in bound.membership:
        narrowing = bound.narrowing(resource_type, "123")
        assert narrowing is not None, resource_type
        code, _ = narrowing
        assert code in bound.binding[resource_type] or (resource_type, code) == ("Patient", "_id"), resource_type
    assert set(NARROWING_EXCEPTIONS) <= set(MEMBERSHIP_PARAMS)


def test_coverage_is_narrowed_through_its_beneficiary_only() -> None:
    """Coverage is in the compartment through four parameters; one of them is safe: less, never more."""
    assert decided("Coverage?status=active").query_parameters_to_set == (("patient", "123"),)


def test_a_search_already_bound_to_the_context_patient_is_not_narrowed() -> None:
    outcome = decided("Observation?patient=123&code=x")
    assert outcome.reason is Reason.ALLOWED_COMPARTMENT_SEARCH
    assert outcome.query_parameters_to_set == ()


def test_a_compartment_search_by_path_is_not_narrowed() -> None:
    outcome = decided("Patient/123/Observation?code=x")
    assert outcome.reason is Reason.ALLOWED_COMPARTMENT_SEARCH
    assert outcome.query_parameters_to_set == ()


@pytest.mark.parametrize(
    "path",
    [
        "Observation?code=x&subject=Patient/456",
        "Observation?code=x&patient=456",
        "Patient?name=x&_id=456",
        "Coverage?_id=c1&beneficiary=Patient/456",
        "Device?type=x&patient=456",
    ],
)
def test_a_search_naming_another_patient_is_denied_not_narrowed(path: str) -> None:
    assert reason(path) is Reason.COMPARTMENT_OTHER_PATIENT


def test_a_search_of_a_type_outside_the_compartment_is_not_narrowed() -> None:
    outcome = decided("Practitioner?name=Smith")
    assert outcome.reason is Reason.ALLOWED_OUTSIDE_COMPARTMENT
    assert outcome.query_parameters_to_set == ()


def test_search_narrowing_off_denies_an_unbound_search_as_before() -> None:
    assert reason("Observation?code=x", settings=NO_NARROWING) is Reason.COMPARTMENT_UNBOUND


def test_a_search_holding_the_narrowing_parameter_is_not_narrowed_over_it() -> None:
    """Envoy would replace the client's ``subject=Group/7``: the search is refused instead."""
    assert reason("AdverseEvent?subject=Group/7") is Reason.COMPARTMENT_UNBOUND


def test_a_post_search_is_not_narrowed_since_the_server_may_read_its_body_alone() -> None:
    request = fhir_request("Observation/_search", "POST", **_form(b"code=x"))
    outcome = decide(request, token_context("patient/*.rs"), SETTINGS)
    assert isinstance(outcome, Decision)
    assert outcome.reason is Reason.COMPARTMENT_UNBOUND
    assert "POST _search" in outcome.message


def test_a_post_search_bound_in_its_body_is_allowed_as_before() -> None:
    request = fhir_request("Observation/_search", "POST", **_form(b"patient=123&code=x"))
    outcome = decide(request, token_context("patient/*.rs"), SETTINGS)
    assert isinstance(outcome, Decision) and outcome.reason is Reason.ALLOWED_COMPARTMENT_SEARCH


def _post(path: str, body: bytes, scope: str = "patient/*.rs") -> Decision | Pending:
    return decide(fhir_request(path, "POST", **_form(body)), token_context(scope), SETTINGS)


@pytest.mark.parametrize(
    "body", [b"_id=e1", b"_id=e1&status=finished", b"_id=e1&_revinclude=Provenance:target", b"_id=e1&_count=5"]
)
def test_a_post_search_by_one_id_is_proven_by_a_look_up_like_a_read(body: bytes) -> None:
    """Inferno sends its _id searches as POST _search too: the search can match one resource only, and
    the membership look-up proves it the patient's (a GET would be narrowed instead)."""
    outcome = _post("Encounter/_search", body)
    assert isinstance(outcome, Pending), outcome
    (check,) = outcome.checks
    assert isinstance(check, MembershipCheck)
    assert (check.resource_type, check.resource_id) == ("Encounter", "e1")
    assert ("patient", "Patient/123") in check.queries[0] or ("subject", "Patient/123") in check.queries[0]
    assert outcome.allow.reason is Reason.ALLOWED_COMPARTMENT_SEARCH


def test_a_post_search_by_one_id_keeps_a_granular_constraint_in_its_look_up() -> None:
    outcome = _post("Observation/_search", f"_id=o1&category={LAB}".encode(), LAB_SCOPE)
    assert isinstance(outcome, Pending)
    assert all(("category", LAB) in query for query in outcome.checks[0].queries)  # type: ignore[union-attr]


@pytest.mark.parametrize("body", [b"_id=e1,e2", b"_id=e1&_id=e2", b"_id:not=e1", b"_id=", b"code=x&_id:missing=true"])
def test_a_post_search_by_anything_but_one_id_is_still_refused(body: bytes) -> None:
    outcome = _post("Encounter/_search", body)
    assert isinstance(outcome, Decision) and not outcome.allowed, outcome


def test_a_get_search_by_one_id_is_narrowed_not_looked_up() -> None:
    assert reason("Encounter?_id=e1") is Reason.ALLOWED_NARROWED


def _form(body: bytes) -> dict[str, object]:
    prepared = form_post("/x", body)
    return {"headers": prepared.headers, "body": prepared.body}


def test_a_narrowed_search_keeps_the_granular_constraint_it_carries() -> None:
    outcome = decided(f"Observation?category={LAB}", LAB_SCOPE)
    assert outcome.reason is Reason.ALLOWED_NARROWED
    assert outcome.query_parameters_to_set == (("patient", "123"),)


def test_a_search_without_the_granular_constraint_is_denied_not_narrowed() -> None:
    assert reason("Observation?code=x", LAB_SCOPE) is Reason.SCOPE_INSUFFICIENT


def test_a_narrowed_search_may_include_the_context_patient_through_the_narrowing_parameter() -> None:
    outcome = decided("Observation?code=x&_include=Observation:patient")
    assert outcome.reason is Reason.ALLOWED_NARROWED


def test_a_narrowed_patient_search_may_revinclude_from_the_context_patient() -> None:
    outcome = decided("Patient?name=x&_revinclude=Observation:subject")
    assert outcome.reason is Reason.ALLOWED_NARROWED
    assert outcome.query_parameters_to_set == (("_id", "123"),)


def test_a_search_in_a_bundle_entry_is_never_narrowed() -> None:
    """Envoy narrows the request's own URL, never an entry's: the entry must be bound itself."""
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"request": {"method": "GET", "url": "Observation?code=x"}}],
    }
    outcome = decide_body("", "POST", bundle, "patient/*.rs")
    assert isinstance(outcome, Decision)
    assert outcome.reason is Reason.BUNDLE_ENTRY_DENIED
    assert "(compartment_unbound)" in outcome.message


def test_a_narrowed_search_is_a_search_decision_of_its_type() -> None:
    outcome = decided("Observation?code=x")
    assert (outcome.interaction, outcome.resource_type) == ("search-type", "Observation")


# --- Device and other extra bound types -----------------------------------------------------------------


def test_a_device_search_bound_to_the_context_patient_is_a_compartment_search() -> None:
    assert reason("Device?patient=123") is Reason.ALLOWED_COMPARTMENT_SEARCH


def test_a_device_search_naming_another_patient_is_denied() -> None:
    assert reason("Device?patient=Patient/456") is Reason.COMPARTMENT_OTHER_PATIENT


def test_a_device_read_by_id_is_proven_by_a_look_up_through_patient() -> None:
    outcome = decide_path("Device/d1")
    assert isinstance(outcome, Pending)
    assert outcome.checks == (MembershipCheck("Device", "d1", ((("patient", "Patient/123"),),)),)
    assert outcome.allow.reason is Reason.ALLOWED_COMPARTMENT_MEMBER


def test_past_device_versions_are_denied_under_patient_scopes() -> None:
    """The version check reads the official compartment only, which leaves Device out."""
    assert reason("Device/d1/_history/2") is Reason.INTERACTION_NOT_SUPPORTED


def test_without_the_extra_binding_device_is_an_ordinary_type_outside_the_compartment() -> None:
    assert reason("Device/d1", settings=NO_EXTRA_BINDINGS) is Reason.ALLOWED_OUTSIDE_COMPARTMENT


def test_any_configured_type_is_bound_through_its_parameter() -> None:
    settings = PolicySettings(
        fhir_base_url=FHIR_BASE_URL, extra_binding_params={"Device": ("patient",), "VerificationResult": ("target",)}
    )
    assert reason("VerificationResult?status=validated", settings=settings) is Reason.ALLOWED_NARROWED
    assert decided("VerificationResult?status=x", settings=settings).query_parameters_to_set == (
        ("target", "Patient/123"),
    )
    outcome = decide_path("VerificationResult/v1", settings=settings)
    assert isinstance(outcome, Pending)
    assert outcome.checks == (MembershipCheck("VerificationResult", "v1", ((("target", "Patient/123"),),)),)


def test_the_extra_bound_types_add_to_the_official_compartment() -> None:
    bound = bound_types({"Device": ("patient",)})
    assert bound.membership["Device"] == ("patient",)
    assert bound.membership["Observation"] == MEMBERSHIP_PARAMS["Observation"]


DEVICE = {"resourceType": "Device", "patient": {"reference": "Patient/123"}}


def test_a_device_created_for_the_context_patient_is_allowed() -> None:
    outcome = decide_body("Device", "POST", DEVICE)
    assert isinstance(outcome, Decision) and outcome.reason is Reason.ALLOWED_WRITE


def test_a_device_created_without_a_patient_is_unbound() -> None:
    outcome = decide_body("Device", "POST", {"resourceType": "Device"})
    assert isinstance(outcome, Decision) and outcome.reason is Reason.COMPARTMENT_UNBOUND


def test_a_device_created_for_another_patient_is_denied() -> None:
    outcome = decide_body("Device", "POST", {"resourceType": "Device", "patient": {"reference": "Patient/456"}})
    assert isinstance(outcome, Decision) and outcome.reason is Reason.COMPARTMENT_OTHER_PATIENT


def test_a_device_update_needs_the_stored_device_proven_the_patients() -> None:
    outcome = decide_body("Device/d1", "PUT", {**DEVICE, "id": "d1"})
    assert isinstance(outcome, Pending)
    assert outcome.checks == (MembershipCheck("Device", "d1", ((("patient", "Patient/123"),),), absent_ok=True),)


def test_a_device_patch_may_not_touch_device_patient() -> None:
    patch = json.dumps([{"op": "replace", "path": "/patient/reference", "value": "Patient/123"}]).encode()
    outcome = decide_body("Device/d1", "PATCH", patch, content_type="application/json-patch+json")
    assert isinstance(outcome, Decision) and outcome.reason is Reason.COMPARTMENT_AMBIGUOUS


# --- granular comma lists -------------------------------------------------------------------------------


def test_a_list_each_of_whose_values_a_granular_scope_grants_is_allowed() -> None:
    path = f"Observation?patient=123&category={LAB},{VITALS}"
    assert reason(path, LAB_AND_VITALS_SCOPES) is Reason.ALLOWED_COMPARTMENT_SEARCH


def test_a_list_with_one_value_no_granular_scope_grants_is_denied() -> None:
    path = f"Observation?patient=123&category={LAB},{SURVEY}"
    assert reason(path, LAB_AND_VITALS_SCOPES) is Reason.SCOPE_INSUFFICIENT


@pytest.mark.parametrize(
    "values",
    [
        "laboratory,vital-signs",  # no system: not the scope's exact value
        f"{LAB},",  # an empty value
        f"{LAB}%5C,{VITALS}",  # an escaped comma (\\,) is one value
    ],
)
def test_each_listed_value_must_match_a_granular_scope_exactly(values: str) -> None:
    assert reason(f"Observation?patient=123&category={values}", LAB_AND_VITALS_SCOPES) is Reason.SCOPE_INSUFFICIENT


def test_a_list_under_a_modifier_is_denied() -> None:
    path = f"Observation?patient=123&category:not={LAB},{VITALS}"
    assert reason(path, LAB_AND_VITALS_SCOPES) is Reason.SCOPE_INSUFFICIENT


def test_a_granted_list_of_a_user_scope_is_allowed_by_scope() -> None:
    scopes = f"user/Observation.rs?category={LAB} user/Observation.rs?category={VITALS}"
    outcome = decide_path(f"Observation?category={LAB},{VITALS}", scopes, patient=None)
    assert isinstance(outcome, Decision) and outcome.reason is Reason.ALLOWED_BY_SCOPE


def test_a_granted_list_without_a_patient_is_narrowed() -> None:
    outcome = decided(f"Observation?category={LAB},{VITALS}", LAB_AND_VITALS_SCOPES)
    assert outcome.reason is Reason.ALLOWED_NARROWED


# --- case variants of binding parameters ----------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "Observation?patient=123&Patient=456",
        "Observation?PATIENT=456",
        "Observation?patient=123&Subject=Patient/456",
        "Device?Patient=456",
        "VerificationResult?Target=Patient/456",
    ],
)
def test_a_case_variant_of_a_binding_parameter_naming_another_patient_is_denied(path: str) -> None:
    assert reason(path) is Reason.COMPARTMENT_OTHER_PATIENT


def test_a_case_variant_next_to_the_binding_parameter_counts_as_the_parameter_twice() -> None:
    assert reason("Observation?patient=123&Patient=123") is Reason.COMPARTMENT_AMBIGUOUS


def test_a_case_variant_naming_the_context_patient_alone_does_not_bind() -> None:
    """A server that keeps case ignores it and would return every patient's data: it is refused,
    never narrowed around."""
    assert reason("Observation?Patient=123&code=x") is Reason.COMPARTMENT_AMBIGUOUS


def test_a_case_variant_of_patient_id_is_not_permitted() -> None:
    assert reason("Patient?_ID=456") is Reason.SEARCH_PARAMETER_NOT_PERMITTED
