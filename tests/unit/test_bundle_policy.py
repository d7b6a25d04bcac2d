"""Batch and transaction Bundles POSTed to the base (issue 3, item 2): every entry is checked as
its own request; one denied entry denies the whole Bundle and the reason names the entry.

Unless a test says otherwise the token has patient context 123 and the scope ``patient/*.cruds``.
"""

from __future__ import annotations

from typing import Any

import pytest

from smartgate.core.reasons import Reason
from smartgate.fhir.request import Interaction
from smartgate.policy import PolicySettings
from smartgate.policy.decision import Decision
from smartgate.policy.plan import MembershipCheck, Pending, VersionCheck
from tests.unit.policy_helpers import FHIR_BASE_URL, SETTINGS, body_request, decide_body

OWN_OBSERVATION = {
    "resourceType": "Observation",
    "status": "final",
    "code": {"text": "x"},
    "subject": {"reference": "Patient/123"},
}
FOREIGN_OBSERVATION = {**OWN_OBSERVATION, "subject": {"reference": "Patient/456"}}
OWN_SEARCH = {"request": {"method": "GET", "url": "Observation?patient=123"}}


def bundle(*entries: dict[str, Any], kind: str = "batch") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def entry(method: str, url: str, resource: dict[str, Any] | None = None, **request: Any) -> dict[str, Any]:
    built: dict[str, Any] = {"request": {"method": method, "url": url, **request}}
    if resource is not None:
        built["resource"] = resource
    return built


def post(body: Any, scope: str = "patient/*.cruds", **kwargs: Any) -> Decision | Pending:
    return decide_body("", "POST", body, scope, **kwargs)


def decided(body: Any, scope: str = "patient/*.cruds", **kwargs: Any) -> Decision:
    outcome = post(body, scope, **kwargs)
    assert isinstance(outcome, Decision), outcome
    return outcome


def nested(depth: int) -> bytes:
    return b'{"resourceType": "Bundle", "type": "batch", "entry": ' + b"[" * depth + b"]" * depth + b"}"


def test_a_post_to_the_base_is_a_bundle_interaction() -> None:
    assert body_request("", "POST", bundle()).interaction is Interaction.BATCH


# --- allowed Bundles ---------------------------------------------------------------------------------------


def test_batch_whose_entries_are_all_allowed_is_allowed() -> None:
    assert decided(bundle(OWN_SEARCH, entry("POST", "Observation", OWN_OBSERVATION))).reason is Reason.ALLOWED_BUNDLE


def test_transaction_whose_entries_are_all_allowed_is_allowed() -> None:
    outcome = decided(bundle(OWN_SEARCH, entry("POST", "Observation", OWN_OBSERVATION), kind="transaction"))
    assert outcome.reason is Reason.ALLOWED_BUNDLE


def test_empty_batch_is_allowed() -> None:
    assert decided(bundle()).reason is Reason.ALLOWED_BUNDLE


def test_entry_urls_absolute_on_our_base_are_checked_like_relative_ones() -> None:
    own = entry("GET", f"{FHIR_BASE_URL}/Observation?patient=123")
    assert decided(bundle(own)).reason is Reason.ALLOWED_BUNDLE


def test_entries_needing_lookups_make_the_bundle_wait_for_all_of_them_labelled_by_entry() -> None:
    outcome = post(bundle(OWN_SEARCH, entry("GET", "Observation/abc"), entry("DELETE", "Condition/c1")))
    assert isinstance(outcome, Pending), outcome
    assert outcome.allow.reason is Reason.ALLOWED_BUNDLE
    assert [(type(check), check.resource_id, check.label) for check in outcome.checks] == [
        (MembershipCheck, "abc", "entry 1"),
        (MembershipCheck, "c1", "entry 2"),
    ]


def test_vread_entry_carries_its_version_check() -> None:
    outcome = post(bundle(entry("GET", "Observation/abc/_history/2")))
    assert isinstance(outcome, Pending), outcome
    assert VersionCheck("Observation", "abc", "2", "123", "entry 0") in outcome.checks


def test_update_entry_carries_an_upsert_lookup() -> None:
    outcome = post(bundle(entry("PUT", "Observation/abc", {**OWN_OBSERVATION, "id": "abc"})))
    assert isinstance(outcome, Pending), outcome
    (check,) = outcome.checks
    assert isinstance(check, MembershipCheck) and check.absent_ok and check.label == "entry 0"


def test_bundle_under_user_scopes_is_allowed_by_its_entries_scopes() -> None:
    body = bundle(entry("GET", "Observation?patient=456"), entry("POST", "Observation", FOREIGN_OBSERVATION))
    assert decided(body, "user/Observation.crs", patient=None).reason is Reason.ALLOWED_BUNDLE


# --- one denied entry denies the whole Bundle, naming the entry ------------------------------------------


@pytest.mark.parametrize(
    ("denied", "inner"),
    [
        (entry("GET", "Observation?patient=456"), Reason.COMPARTMENT_OTHER_PATIENT),
        (entry("HEAD", "Observation?code=x"), Reason.COMPARTMENT_UNBOUND),
        (entry("GET", "Patient/456/$everything"), Reason.COMPARTMENT_OTHER_PATIENT),
        (entry("GET", "_history"), Reason.INTERACTION_NOT_SUPPORTED),
        (entry("POST", "Observation", FOREIGN_OBSERVATION), Reason.COMPARTMENT_OTHER_PATIENT),
        (entry("PUT", "Observation/abc", {**FOREIGN_OBSERVATION, "id": "abc"}), Reason.COMPARTMENT_OTHER_PATIENT),
        (
            entry(
                "PATCH",
                "Observation/abc",
                {
                    "resourceType": "Parameters",
                    "parameter": [
                        {
                            "name": "operation",
                            "part": [
                                {"name": "type", "valueCode": "delete"},
                                {"name": "path", "valueString": "Observation.subject"},
                            ],
                        }
                    ],
                },
            ),
            Reason.COMPARTMENT_AMBIGUOUS,
        ),
        (entry("DELETE", "Patient/456"), Reason.COMPARTMENT_OTHER_PATIENT),
        (entry("DELETE", "Observation?identifier=x|1"), Reason.CONDITIONAL_NOT_PERMITTED),
        (entry("PUT", "Observation?identifier=x|1", OWN_OBSERVATION), Reason.CONDITIONAL_NOT_PERMITTED),
        (entry("POST", "Observation", OWN_OBSERVATION, ifNoneExist="identifier=x|1"), Reason.CONDITIONAL_NOT_PERMITTED),
        (entry("POST", "Task", {"resourceType": "Task"}), Reason.SCOPE_INSUFFICIENT),
    ],
)
def test_each_entry_is_checked_as_its_own_request_and_one_denial_denies_the_bundle(
    denied: dict[str, Any], inner: Reason
) -> None:
    outcome = decided(bundle(OWN_SEARCH, denied, OWN_SEARCH))
    assert outcome.reason is Reason.BUNDLE_ENTRY_DENIED
    assert outcome.message.startswith("entry 1:")
    assert f"({inner.code})" in outcome.message


def test_a_denied_entry_in_a_transaction_denies_the_transaction() -> None:
    outcome = decided(bundle(OWN_SEARCH, OWN_SEARCH, entry("GET", "Observation?patient=456"), kind="transaction"))
    assert (outcome.reason, outcome.message.split(":")[0]) == (Reason.BUNDLE_ENTRY_DENIED, "entry 2")


def test_a_denied_entry_denies_even_when_other_entries_need_lookups() -> None:
    outcome = decided(bundle(entry("GET", "Observation/abc"), entry("GET", "Observation?patient=456")))
    assert (outcome.reason, outcome.message.split(":")[0]) == (Reason.BUNDLE_ENTRY_DENIED, "entry 1")


def test_an_invalid_entry_body_keeps_its_reason_and_names_the_entry() -> None:
    outcome = decided(bundle(OWN_SEARCH, entry("POST", "Observation", {"resourceType": "Condition"})))
    assert (outcome.reason, outcome.message.split(":")[0]) == (Reason.BODY_INVALID, "entry 1")


def test_an_entry_url_that_is_not_a_fhir_request_keeps_its_reason_and_names_the_entry() -> None:
    outcome = decided(bundle(entry("GET", "NotAType/1")))
    assert (outcome.reason, outcome.message.split(":")[0]) == (Reason.UNKNOWN_RESOURCE_TYPE, "entry 0")


def test_entry_read_scope_does_not_grant_an_entry_write() -> None:
    outcome = decided(bundle(entry("POST", "Observation", OWN_OBSERVATION)), "patient/*.rs")
    assert outcome.reason is Reason.BUNDLE_ENTRY_DENIED
    assert f"({Reason.SCOPE_INSUFFICIENT.code})" in outcome.message


# --- what a Bundle must be --------------------------------------------------------------------------------------


def test_a_post_to_the_base_that_is_not_a_bundle_is_invalid() -> None:
    assert decided(OWN_OBSERVATION).reason is Reason.BODY_INVALID


@pytest.mark.parametrize(
    "kind", ["collection", "searchset", "document", "message", "history", "transaction-response", None]
)
def test_only_batch_and_transaction_bundles_are_processed(kind: str | None) -> None:
    assert decided({"resourceType": "Bundle", "type": kind, "entry": [OWN_SEARCH]}).reason is Reason.BODY_INVALID


@pytest.mark.parametrize("body", [None, b"", b"not json", b"[]", b'"Bundle"'])
def test_a_bundle_body_must_be_a_json_object(body: bytes | None) -> None:
    assert decided(body).reason is Reason.BODY_INVALID


@pytest.mark.parametrize("content_type", ["application/fhir+xml", "application/x-www-form-urlencoded"])
def test_a_bundle_must_be_fhir_json(content_type: str) -> None:
    assert decided(bundle(OWN_SEARCH), content_type=content_type).reason is Reason.BODY_INVALID


@pytest.mark.parametrize("entries", [{"request": {}}, ["x"], "entry"])
def test_bundle_entry_must_be_a_list_of_objects(entries: Any) -> None:
    body = {"resourceType": "Bundle", "type": "batch", "entry": entries}
    assert decided(body).reason is Reason.BODY_INVALID


def test_a_bundle_with_more_entries_than_the_limit_is_invalid() -> None:
    settings = PolicySettings(fhir_base_url=FHIR_BASE_URL, max_bundle_entries=2)
    assert decided(bundle(OWN_SEARCH, OWN_SEARCH, OWN_SEARCH), settings=settings).reason is Reason.BODY_INVALID


def test_a_bundle_with_as_many_entries_as_the_limit_is_checked() -> None:
    settings = PolicySettings(fhir_base_url=FHIR_BASE_URL, max_bundle_entries=2)
    assert decided(bundle(OWN_SEARCH, OWN_SEARCH), settings=settings).reason is Reason.ALLOWED_BUNDLE


def test_the_default_entry_limit_is_applied() -> None:
    too_many = bundle(*[OWN_SEARCH] * (SETTINGS.max_bundle_entries + 1))
    assert decided(too_many).reason is Reason.BODY_INVALID


def test_an_entry_without_a_request_is_invalid() -> None:
    outcome = decided(bundle(OWN_SEARCH, {"resource": OWN_OBSERVATION}))
    assert (outcome.reason, outcome.message.split(":")[0]) == (Reason.BODY_INVALID, "entry 1")


@pytest.mark.parametrize(
    "request_part",
    [
        {"method": "GET"},
        {"url": "Observation?patient=123"},
        {"method": "TRACE", "url": "Observation?patient=123"},
        {"method": "GET", "url": ""},
        {"method": "get", "url": "Observation?patient=123"},
    ],
)
def test_an_entry_request_needs_a_known_method_and_a_url(request_part: dict[str, Any]) -> None:
    assert decided(bundle({"request": request_part})).reason is Reason.BODY_INVALID


@pytest.mark.parametrize(
    "url",
    [
        "https://other.example.org/r4/Observation?patient=123",
        "/r4/Observation?patient=123",
        "http://fhir.example.org/r4/Observation?patient=123",
    ],
)
def test_an_entry_url_must_be_relative_to_this_fhir_server(url: str) -> None:
    assert decided(bundle(entry("GET", url))).reason is Reason.BODY_INVALID


@pytest.mark.parametrize("url", [f"{FHIR_BASE_URL}/", "?_format=json"])
def test_a_nested_bundle_in_an_entry_is_invalid(url: str) -> None:
    outcome = decided(bundle(entry("POST", url, bundle(OWN_SEARCH))))
    assert (outcome.reason, outcome.message) == (Reason.BODY_INVALID, "entry 0: nested Bundles are not accepted")


@pytest.mark.parametrize("method", ["GET", "HEAD", "DELETE"])
def test_an_entry_whose_method_takes_no_body_may_not_carry_a_resource(method: str) -> None:
    """Found by the fuzzer: a GET entry carrying another patient's resource was allowed (a conforming
    server ignores it, but the entry is malformed and a lenient server could act on it)."""
    outcome = decided(bundle(entry(method, "Observation/123-o1", FOREIGN_OBSERVATION)))
    assert (outcome.reason, outcome.message.split(":")[0]) == (Reason.BODY_INVALID, "entry 0")


def test_an_entry_whose_method_takes_no_body_may_not_carry_even_the_patients_own_resource() -> None:
    assert decided(bundle(entry("GET", "Observation?patient=123", OWN_OBSERVATION))).reason is Reason.BODY_INVALID


def test_a_binary_wrapped_patch_entry_is_invalid() -> None:
    binary = {"resourceType": "Binary", "contentType": "application/json-patch+json", "data": "W10="}
    assert decided(bundle(entry("PATCH", "Observation/abc", binary))).reason is Reason.BODY_INVALID


def test_a_bundle_nested_too_deeply_for_the_json_parser_is_invalid() -> None:
    # regression: RecursionError from json.loads in bundle_policy._bundle is a body_invalid deny
    assert decided(nested(10_000)).reason is Reason.BODY_INVALID


def test_an_entry_resource_nested_too_deeply_is_invalid() -> None:
    deep: Any = []
    for _ in range(100):
        deep = [deep]
    outcome = decided(bundle(entry("POST", "Observation", {**OWN_OBSERVATION, "extension": deep})))
    assert (outcome.reason, outcome.message.split(":")[0]) == (Reason.BODY_INVALID, "entry 0")
