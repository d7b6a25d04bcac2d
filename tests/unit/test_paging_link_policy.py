"""Server-minted paging links (HAPI's ``[base]?_getpages=…``) cannot be bound to a patient. They are
denied for patient-context tokens unless response verification enforces, in which case every
resource of the returned page is checked against the patient and the scopes (issue 3, item 3)."""

from __future__ import annotations

import pytest

from smartgate.core.reasons import Reason
from smartgate.fhir.request import FhirRequest, parse_fhir_request
from smartgate.policy import PolicySettings, decide
from smartgate.policy.decision import Decision

from .policy_helpers import BASE_PATH, FHIR_BASE_URL, decide_path, form_post, token_context

VERIFIED = PolicySettings(fhir_base_url=FHIR_BASE_URL, responses_verified=True)
UNVERIFIED = PolicySettings(fhir_base_url=FHIR_BASE_URL)


def reason(
    path: str, settings: PolicySettings, scope: str = "patient/*.rs", method: str = "GET", patient: str | None = "123"
) -> Reason:
    decided = decide_path(path, scope, patient=patient, method=method, settings=settings)
    assert isinstance(decided, Decision)
    return decided.reason


def test_a_paging_link_is_denied_to_a_patient_token_when_responses_are_not_verified() -> None:
    assert reason("?_getpages=abc", UNVERIFIED) is Reason.INTERACTION_NOT_SUPPORTED


def test_a_paging_link_is_allowed_to_a_patient_token_when_responses_are_verified() -> None:
    assert reason("?_getpages=abc", VERIFIED) is Reason.ALLOWED_PAGING_LINK


@pytest.mark.parametrize(
    "path",
    ["?_getpages=abc&_getpagesoffset=20&_count=10&_format=json&_bundletype=searchset", "?_getpages=abc&_pretty=true"],
)
def test_paging_parameters_may_accompany_the_link(path: str) -> None:
    assert reason(path, VERIFIED) is Reason.ALLOWED_PAGING_LINK


@pytest.mark.parametrize(
    "path",
    [
        "?_getpages=abc&patient=456",  # a search parameter rides along
        "?_getpages=abc&_type=Observation",  # a system search in disguise
        "?_getpages=abc&_getpages=def",  # two links at once
        "?_getpages:missing=abc",  # a modifier
        "?_getpagesoffset=0",  # no link at all
        "?_type=Observation",  # plain system search
    ],
)
def test_anything_more_than_a_bare_paging_link_stays_denied(path: str) -> None:
    assert reason(path, VERIFIED) is Reason.INTERACTION_NOT_SUPPORTED


def test_a_paging_link_is_not_a_post() -> None:
    parsed = parse_fhir_request(form_post(f"{BASE_PATH}/_search", b"_getpages=abc"), BASE_PATH)
    assert isinstance(parsed, FhirRequest)
    decided = decide(parsed, token_context("patient/*.rs"), VERIFIED)
    assert isinstance(decided, Decision) and decided.reason is Reason.INTERACTION_NOT_SUPPORTED


def test_a_paging_link_still_needs_the_patient_claim_of_a_patient_scope() -> None:
    assert reason("?_getpages=abc", VERIFIED, patient=None) is Reason.PATIENT_CONTEXT_MISSING


def test_a_paging_link_for_a_token_without_patient_scopes_follows_the_type_rules() -> None:
    assert reason("?_getpages=abc", VERIFIED, scope="user/Observation.rs", patient=None) is Reason.SCOPE_INSUFFICIENT
    assert reason("?_getpages=abc", VERIFIED, scope="user/*.rs", patient=None) is Reason.ALLOWED_BY_SCOPE
