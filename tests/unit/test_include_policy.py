"""`_include` and `_revinclude` under patient/ scopes (issue 15): Provenance of the matches in every
mode; includes of compartment types only when every response is verified
(``response_verification.mode: enforce``); includes of types outside the compartment in every mode.

The token has patient context 123 and the scope ``patient/*.rs`` unless a test says otherwise.
``UNVERIFIED`` is the policy for response verification ``off`` and ``report`` (neither withholds a
response), ``VERIFIED`` for ``enforce``.
"""

from __future__ import annotations

import pytest

from smartgate.core.reasons import Reason
from smartgate.policy import PolicySettings
from smartgate.policy.decision import Decision
from tests.unit.policy_helpers import FHIR_BASE_URL, decide_path

UNVERIFIED = PolicySettings(fhir_base_url=FHIR_BASE_URL)
VERIFIED = PolicySettings(fhir_base_url=FHIR_BASE_URL, responses_verified=True)
EVERY_MODE = pytest.mark.parametrize("settings", [UNVERIFIED, VERIFIED], ids=["off-or-report", "enforce"])
CARIN = (
    "launch/patient patient/ExplanationOfBenefit.rs patient/Coverage.rs patient/Patient.rs "
    "patient/Organization.rs patient/Practitioner.rs patient/PractitionerRole.rs patient/RelatedPerson.rs "
    "patient/Claim.rs patient/Encounter.rs patient/Location.rs patient/Device.rs"
)


def decided(path: str, settings: PolicySettings, scope: str = "patient/*.rs") -> Decision:
    outcome = decide_path(path, scope, "123", "GET", settings)
    assert isinstance(outcome, Decision), outcome
    return outcome


def reason(path: str, settings: PolicySettings, scope: str = "patient/*.rs") -> Reason:
    return decided(path, settings, scope).reason


# --- Provenance of the matches ----------------------------------------------------------------------


@EVERY_MODE
@pytest.mark.parametrize(
    "search",
    [
        "Observation?patient=123",
        "Observation?subject=Patient/123&category=laboratory",
        "Patient/123/Observation",
        "Condition?patient=123",
        "Patient?_id=123",
        "ExplanationOfBenefit?patient=123",
    ],
)
def test_provenance_revinclude_on_a_search_bound_to_the_context_patient_is_allowed(
    search: str, settings: PolicySettings
) -> None:
    separator = "&" if "?" in search else "?"
    assert decided(f"{search}{separator}_revinclude=Provenance:target", settings).allowed


@EVERY_MODE
def test_provenance_revinclude_may_name_the_searched_type_as_its_target(settings: PolicySettings) -> None:
    path = "Observation?patient=123&_revinclude=Provenance:target:Observation"
    assert reason(path, settings) is Reason.ALLOWED_COMPARTMENT_SEARCH


def test_provenance_revinclude_targeting_another_type_cannot_be_proven() -> None:
    path = "Observation?patient=123&_revinclude=Provenance:target:Encounter"
    assert reason(path, UNVERIFIED) is Reason.INCLUDE_NOT_PERMITTED


@EVERY_MODE
def test_provenance_revinclude_needs_a_scope_that_reads_provenance(settings: PolicySettings) -> None:
    path = "Observation?patient=123&_revinclude=Provenance:target"
    assert reason(path, settings, "patient/Observation.rs") is Reason.INCLUDE_NOT_PERMITTED
    assert reason(path, settings, "patient/Observation.rs patient/Provenance.rs") is (Reason.ALLOWED_COMPARTMENT_SEARCH)


@EVERY_MODE
def test_provenance_revinclude_on_a_search_naming_another_patient_is_denied(settings: PolicySettings) -> None:
    assert reason("Observation?patient=456&_revinclude=Provenance:target", settings) is (
        Reason.COMPARTMENT_OTHER_PATIENT
    )


def test_provenance_revinclude_on_a_search_outside_the_compartment_cannot_be_proven() -> None:
    assert reason("Practitioner?name=x&_revinclude=Provenance:target", UNVERIFIED) is Reason.INCLUDE_NOT_PERMITTED


@pytest.mark.parametrize("value", ["Provenance:entity", "Provenance:agent", "Provenance:*"])
def test_provenance_revinclude_through_another_parameter_cannot_be_proven(value: str) -> None:
    assert reason(f"Observation?patient=123&_revinclude={value}", UNVERIFIED) is Reason.INCLUDE_NOT_PERMITTED


def test_provenance_revinclude_iterate_is_denied_even_when_verified() -> None:
    path = "Observation?patient=123&_revinclude:iterate=Provenance:target"
    assert reason(path, VERIFIED) is Reason.INCLUDE_NOT_PERMITTED


# --- includes of compartment types: only when every response is verified --------------------------------


@pytest.mark.parametrize(
    "value", ["coverage", "care-team", "provider", "insurer", "payee", "patient", "*", "claim", "encounter"]
)
def test_carin_includes_are_allowed_when_responses_are_verified(value: str) -> None:
    path = f"ExplanationOfBenefit?patient=123&_include=ExplanationOfBenefit:{value}"
    assert reason(path, VERIFIED, CARIN) is Reason.ALLOWED_COMPARTMENT_SEARCH


@pytest.mark.parametrize("value", ["coverage", "payee", "claim", "encounter", "*"])
def test_includes_of_compartment_types_are_denied_without_verification_naming_enforce(value: str) -> None:
    refused = decided(f"ExplanationOfBenefit?patient=123&_include=ExplanationOfBenefit:{value}", UNVERIFIED, CARIN)
    assert refused.reason is Reason.INCLUDE_NOT_PERMITTED
    assert "response_verification.mode: enforce" in refused.message


@EVERY_MODE
@pytest.mark.parametrize("value", ["provider", "care-team", "insurer"])
def test_carin_includes_of_types_outside_the_compartment_are_allowed_in_every_mode(
    value: str, settings: PolicySettings
) -> None:
    path = f"ExplanationOfBenefit?patient=123&_include=ExplanationOfBenefit:{value}"
    assert reason(path, settings, CARIN) is Reason.ALLOWED_COMPARTMENT_SEARCH


@EVERY_MODE
def test_the_bound_patient_include_stays_allowed_in_every_mode(settings: PolicySettings) -> None:
    path = "ExplanationOfBenefit?patient=123&_include=ExplanationOfBenefit:patient"
    assert reason(path, settings, CARIN) is Reason.ALLOWED_COMPARTMENT_SEARCH


@EVERY_MODE
def test_us_core_medication_include_is_allowed_in_every_mode(settings: PolicySettings) -> None:
    path = "MedicationRequest?patient=123&intent=order&_include=MedicationRequest:medication"
    assert reason(path, settings) is Reason.ALLOWED_COMPARTMENT_SEARCH


def test_an_include_of_a_compartment_type_is_allowed_when_verified() -> None:
    assert reason("Observation?patient=123&_include=Observation:encounter", VERIFIED) is (
        Reason.ALLOWED_COMPARTMENT_SEARCH
    )


def test_a_revinclude_of_a_compartment_type_is_allowed_when_verified() -> None:
    assert reason("Observation?patient=123&_revinclude=Observation:has-member", VERIFIED) is (
        Reason.ALLOWED_COMPARTMENT_SEARCH
    )


@pytest.mark.parametrize(
    "scope", ["patient/ExplanationOfBenefit.rs", "patient/ExplanationOfBenefit.rs patient/Coverage.rs"]
)
def test_an_include_still_needs_a_scope_that_reads_the_included_type_when_verified(scope: str) -> None:
    path = "ExplanationOfBenefit?patient=123&_include=ExplanationOfBenefit:coverage"
    expected = Reason.ALLOWED_COMPARTMENT_SEARCH if "Coverage" in scope else Reason.INCLUDE_NOT_PERMITTED
    assert reason(path, VERIFIED, scope) is expected


def test_an_include_of_a_closed_type_stays_denied_when_verified() -> None:
    assert reason("Observation?patient=123&_include=Observation:focus:Task", VERIFIED) is Reason.INCLUDE_NOT_PERMITTED


def test_iterating_includes_stay_denied_when_verified() -> None:
    path = "ExplanationOfBenefit?patient=123&_include:iterate=ExplanationOfBenefit:coverage"
    assert reason(path, VERIFIED, CARIN) is Reason.INCLUDE_NOT_PERMITTED


# --- the wildcard -------------------------------------------------------------------------------------


def test_a_wildcard_include_needs_a_scope_for_every_type_it_can_bring_in() -> None:
    scope = CARIN.replace(" patient/Device.rs", "")
    refused = decided("ExplanationOfBenefit?patient=123&_include=ExplanationOfBenefit:*", VERIFIED, scope)
    assert refused.reason is Reason.INCLUDE_NOT_PERMITTED and "Device" in refused.message


def test_a_wildcard_include_that_can_bring_in_a_closed_type_is_denied() -> None:
    assert reason("Observation?patient=123&_include=Observation:*", VERIFIED) is Reason.INCLUDE_NOT_PERMITTED


@pytest.mark.parametrize("value", ["*", "*:patient", "Observation:patient:*", "Observation:*:Patient", "Nope:*"])
def test_malformed_wildcards_are_denied(value: str) -> None:
    assert reason(f"Observation?patient=123&_include={value}", VERIFIED) is Reason.INCLUDE_NOT_PERMITTED


def test_a_wildcard_include_under_user_scopes_needs_every_type_granted_beyond_the_patient() -> None:
    path = "ExplanationOfBenefit?patient=123&_include=ExplanationOfBenefit:*"
    assert reason(path, UNVERIFIED, "user/*.rs") is Reason.ALLOWED_BY_SCOPE
    assert reason(path, UNVERIFIED, "user/ExplanationOfBenefit.rs user/Patient.r") is Reason.INCLUDE_NOT_PERMITTED
