"""Linked patients (issue 15): by default the context patient is the only Patient resource in its
compartment, whatever door a request uses; ``compartment.follow_patient_links: true`` opts in to
R4's ``Patient.link`` rule, the same way everywhere.

The token has patient context 123 and the scope ``patient/*.rs`` unless a test says otherwise;
Patient/789 is a record whose ``link`` points at Patient/123.
"""

from __future__ import annotations

from typing import Any

import pytest

from smartgate.config.model import OperationRule
from smartgate.core.reasons import Reason
from smartgate.policy import PolicySettings
from smartgate.policy.decision import Decision
from smartgate.policy.plan import MembershipCheck, Pending, compartment_check
from tests.unit.policy_helpers import FHIR_BASE_URL, SETTINGS, decide_body, decide_path

FOLLOWING = PolicySettings(fhir_base_url=FHIR_BASE_URL, follow_patient_links=True)
META = OperationRule("$meta", frozenset({"instance"}), "r", patient_context=True)
LINKED = "789"


def outcome(
    path: str, settings: PolicySettings = SETTINGS, method: str = "GET", scope: str = "patient/*.rs"
) -> Decision | Pending:
    return decide_path(path, scope, "123", method, settings)


def reason(path: str, settings: PolicySettings = SETTINGS, method: str = "GET", scope: str = "patient/*.rs") -> Reason:
    decided = outcome(path, settings, method, scope)
    assert isinstance(decided, Decision), decided
    return decided.reason


def link_lookup(path: str, settings: PolicySettings = FOLLOWING) -> MembershipCheck:
    decided = outcome(path, settings)
    assert isinstance(decided, Pending), decided
    check = decided.checks[0]
    assert isinstance(check, MembershipCheck)
    return check


def batch(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "batch", "entry": list(entries)}


# --- by default: the context patient is the only Patient in its compartment -----------------------------


@pytest.mark.parametrize(
    "path", [f"Patient/{LINKED}", f"Patient/{LINKED}/", f"Patient/{LINKED}/_history/1", f"Patient/{LINKED}/_history"]
)
def test_reads_of_a_linked_patient_are_denied_without_a_lookup(path: str) -> None:
    assert reason(path) is Reason.COMPARTMENT_OTHER_PATIENT


def test_head_of_a_linked_patient_is_denied() -> None:
    assert reason(f"Patient/{LINKED}", method="HEAD") is Reason.COMPARTMENT_OTHER_PATIENT


def test_a_granular_patient_scope_does_not_reach_a_linked_patient() -> None:
    assert reason(f"Patient/{LINKED}", scope="patient/Patient.rs?gender=female") is Reason.COMPARTMENT_OTHER_PATIENT


def test_a_batch_entry_reading_a_linked_patient_is_denied() -> None:
    decided = decide_body("", "POST", batch({"request": {"method": "GET", "url": f"Patient/{LINKED}"}}))
    assert isinstance(decided, Decision)
    assert decided.reason is Reason.BUNDLE_ENTRY_DENIED and "compartment_other_patient" in decided.message


def test_a_configured_operation_on_a_linked_patient_is_denied() -> None:
    settings = PolicySettings(fhir_base_url=FHIR_BASE_URL, operations=(META,))
    assert reason(f"Patient/{LINKED}/$meta", settings) is Reason.COMPARTMENT_OTHER_PATIENT


def test_the_patient_compartment_search_of_patients_is_denied() -> None:
    assert reason("Patient/123/Patient") is Reason.COMPARTMENT_OTHER_PATIENT


@pytest.mark.parametrize("query", ["link=Patient/123", "_id=123&link=Patient/123"])
def test_a_patient_search_by_link_is_denied(query: str) -> None:
    assert reason(f"Patient?{query}") is Reason.COMPARTMENT_OTHER_PATIENT


@pytest.mark.parametrize("query", ["link=123", "LINK=Patient/123", "Link=Patient/123", "link:missing=false"])
def test_every_other_form_of_a_patient_search_by_link_is_denied(query: str) -> None:
    decided = outcome(f"Patient?{query}")
    assert isinstance(decided, Decision) and not decided.allowed, decided


@pytest.mark.parametrize("value", ["Patient:link", "Patient:link:Patient", "Patient:*"])
def test_a_revinclude_of_linked_patients_is_denied_in_every_mode(value: str) -> None:
    verified = PolicySettings(fhir_base_url=FHIR_BASE_URL, responses_verified=True)
    for settings in (SETTINGS, verified):
        assert reason(f"Patient?_id=123&_revinclude={value}", settings) is Reason.INCLUDE_NOT_PERMITTED


def test_the_context_patients_own_record_stays_readable() -> None:
    assert reason("Patient/123") is Reason.ALLOWED_CONTEXT_PATIENT
    assert reason("Patient?_id=123") is Reason.ALLOWED_COMPARTMENT_SEARCH


# --- follow_patient_links: true: R4's Patient.link rule, the same at every door ------------------------


def test_following_links_a_read_of_another_patient_is_proven_through_link() -> None:
    assert link_lookup(f"Patient/{LINKED}") == compartment_check("Patient", LINKED, "123", ("link",))


def test_following_links_a_vread_is_proven_through_link() -> None:
    assert link_lookup(f"Patient/{LINKED}/_history/1") == compartment_check("Patient", LINKED, "123", ("link",))


def test_following_links_a_batch_entry_waits_for_the_link_lookup() -> None:
    decided = decide_body(
        "", "POST", batch({"request": {"method": "GET", "url": f"Patient/{LINKED}"}}), settings=FOLLOWING
    )
    assert isinstance(decided, Pending)
    assert decided.checks == (compartment_check("Patient", LINKED, "123", ("link",), label="entry 0"),)


def test_following_links_the_patient_compartment_search_of_patients_is_allowed() -> None:
    assert reason("Patient/123/Patient", FOLLOWING) is Reason.ALLOWED_COMPARTMENT_SEARCH


def test_following_links_a_patient_search_by_link_to_the_context_patient_is_allowed() -> None:
    assert reason("Patient?link=Patient/123", FOLLOWING) is Reason.ALLOWED_COMPARTMENT_SEARCH


def test_following_links_a_patient_search_by_link_to_another_patient_is_denied() -> None:
    assert reason("Patient?link=Patient/456", FOLLOWING) is Reason.COMPARTMENT_OTHER_PATIENT


def test_following_links_the_revinclude_of_patients_linking_to_the_context_patient_is_allowed() -> None:
    assert reason("Patient?_id=123&_revinclude=Patient:link", FOLLOWING) is Reason.ALLOWED_COMPARTMENT_SEARCH


def test_following_links_never_opens_writes_to_a_linked_record() -> None:
    body = {"resourceType": "Patient", "id": LINKED, "link": [{"other": {"reference": "Patient/123"}}]}
    decided = decide_body(f"Patient/{LINKED}", "PUT", body, settings=FOLLOWING)
    assert isinstance(decided, Decision) and decided.reason is Reason.COMPARTMENT_OTHER_PATIENT
