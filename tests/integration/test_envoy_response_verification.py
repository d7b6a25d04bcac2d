"""Response verification through Envoy's ext_proc filter: a response carrying another patient's
resource is blocked in enforce mode and reported in report mode; ordinary responses pass untouched."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from smartgate.dev.demo.upstream import HUGE_PADDING_BYTES, HUGE_TAG, MISBEHAVE_PROVENANCE_TAG, MISBEHAVE_TAG
from tests.support.stack import Stack, start_stack

pytestmark = pytest.mark.integration
LEAKY_SEARCH = f"/Observation?patient=123&_tag={MISBEHAVE_TAG}"


@pytest.fixture(scope="module")
def enforcing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with start_stack(
        tmp_path_factory.mktemp("enforce"),
        {"response_verification": {"mode": "enforce"}},
        {"response_verification": "enforce"},
    ) as started:
        yield started


@pytest.fixture(scope="module")
def reporting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with start_stack(
        tmp_path_factory.mktemp("report"),
        {"response_verification": {"mode": "report"}},
        {"response_verification": "report"},
    ) as started:
        yield started


def test_the_request_side_rules_allow_the_leaky_search(stack: Stack) -> None:
    response = stack.get(LEAKY_SEARCH, stack.token())
    assert response.status_code == 200
    assert "obs-456-a" in response.text  # without verification the foreign record leaks


def test_enforce_mode_blocks_a_response_with_another_patients_resource(enforcing: Stack) -> None:
    response = enforcing.get(LEAKY_SEARCH, enforcing.token())
    assert response.status_code == 403
    assert "obs-456-a" not in response.text and "Brown" not in response.text
    outcome = response.json()
    assert outcome["issue"][0]["details"]["coding"][0]["code"] == "response_foreign_resource"


def test_enforce_mode_logs_and_counts_a_blocked_response(enforcing: Stack) -> None:
    blocked_before = enforcing.metric("smartgate_response_checks_total", mode="enforce", result="blocked")
    clean_before = enforcing.metric("smartgate_response_checks_total", mode="enforce", result="clean")
    timed_before = enforcing.metric("smartgate_response_check_duration_seconds_count")
    request_id = "blocked-response-1"
    assert enforcing.get(LEAKY_SEARCH, enforcing.token(), headers={"x-request-id": request_id}).status_code == 403
    assert enforcing.get("/Observation?patient=123", enforcing.token()).status_code == 200
    assert enforcing.metric("smartgate_response_checks_total", mode="enforce", result="blocked") == blocked_before + 1
    assert enforcing.metric("smartgate_response_checks_total", mode="enforce", result="clean") == clean_before + 1
    assert enforcing.metric("smartgate_response_check_duration_seconds_count") == timed_before + 2
    entries = [json.loads(line) for line in enforcing.decision_log().splitlines()]
    [response_entry] = [e for e in entries if e.get("stage") == "response" and e["request_id"] == request_id]
    assert (response_entry["outcome"], response_entry["reason"]) == ("blocked", "response_foreign_resource")
    assert response_entry["patient"] == "123" and response_entry["findings"]


def test_enforce_mode_passes_ordinary_responses_untouched(enforcing: Stack) -> None:
    plain = enforcing.get("/Observation?patient=123", enforcing.token())
    assert plain.status_code == 200
    assert {e["resource"]["id"] for e in plain.json()["entry"]} == {"obs-123-a", "obs-123-b"}
    assert enforcing.get("/Observation/obs-123-a", enforcing.token()).json()["id"] == "obs-123-a"
    assert enforcing.get("/Patient/123", enforcing.token()).json()["id"] == "123"


def test_enforce_mode_leaves_user_scoped_responses_alone(enforcing: Stack) -> None:
    response = enforcing.get(LEAKY_SEARCH, enforcing.token(scope="user/Observation.rs", patient=None))
    assert response.status_code == 200


def test_report_mode_passes_the_response_but_logs_and_counts_it(reporting: Stack) -> None:
    response = reporting.get(LEAKY_SEARCH, reporting.token())
    assert response.status_code == 200 and "obs-456-a" in response.text
    entries = [json.loads(line) for line in reporting.decision_log().splitlines()]
    assert any(
        e.get("stage") == "response" and e["outcome"] == "reported" and e["reason"] == "response_foreign_resource"
        for e in entries
    )
    assert reporting.metric("smartgate_response_checks_total", mode="report", result="reported") >= 1


def test_a_paging_link_is_denied_to_a_patient_token_without_response_verification(stack: Stack) -> None:
    response = stack.get("?_getpages=page-123", stack.token())
    assert response.status_code == 403
    assert "interaction_not_supported" in response.text


def test_enforce_mode_opens_a_paging_link_and_verifies_its_page(enforcing: Stack) -> None:
    response = enforcing.get("?_getpages=page-123", enforcing.token())
    assert response.status_code == 200
    assert {e["resource"]["id"] for e in response.json()["entry"]} == {"obs-123-a", "obs-123-b"}


def test_enforce_mode_blocks_a_paging_link_to_another_patients_page(enforcing: Stack) -> None:
    response = enforcing.get("?_getpages=page-456", enforcing.token())
    assert response.status_code == 403
    assert "obs-456-a" not in response.text
    assert response.json()["issue"][0]["details"]["coding"][0]["code"] == "response_foreign_resource"


def test_enforce_mode_keeps_denying_a_paging_link_with_search_parameters(enforcing: Stack) -> None:
    response = enforcing.get("?_getpages=page-123&patient=456", enforcing.token())
    assert response.status_code == 403
    assert "interaction_not_supported" in response.text


def test_enforce_mode_refuses_a_response_too_large_to_verify(tmp_path_factory: pytest.TempPathFactory) -> None:
    overrides = {"response_verification": {"mode": "enforce", "max_body_bytes": 200}}
    with start_stack(tmp_path_factory.mktemp("small"), overrides, {"response_verification": "enforce"}) as small:
        single = small.get("/Patient/123", small.token())  # a small resource still passes
        search = small.get("/Observation?patient=123", small.token())  # the searchset is over 200 bytes
    assert single.status_code == 200 and len(single.content) <= 200
    assert search.status_code == 403
    assert "too large to verify" in search.text and "obs-123-a" not in search.text


def test_report_mode_passes_responses_too_large_to_check_and_counts_them(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Past max_body_bytes (the searchset) and past Envoy's own buffer (1 MiB here; the padded searchset is
    1.5 MB): report mode answers 200 with the whole body, and each skip is counted and logged."""
    overrides = {"response_verification": {"mode": "report", "max_body_bytes": 200}}
    envoy = {"response_verification": "report", "max_response_bytes": 200}
    with start_stack(tmp_path_factory.mktemp("report-small"), overrides, envoy) as small:
        before = small.metric("smartgate_response_checks_skipped_total", reason="too_large")
        search = small.get("/Observation?patient=123", small.token())
        # 1.5 MB through Envoy's buffer and ext_proc on a loaded 2-core CI machine: more than the client's 10 s.
        huge = small.get(f"/Observation?patient=123&_tag={HUGE_TAG}", small.token(), timeout=60)
        after = small.metric("smartgate_response_checks_skipped_total", reason="too_large")
        entries = [json.loads(line) for line in small.decision_log().splitlines()]
    assert search.status_code == 200 and {e["resource"]["id"] for e in search.json()["entry"]} == {
        "obs-123-a",
        "obs-123-b",
    }
    assert huge.status_code == 200 and len(huge.content) > HUGE_PADDING_BYTES
    assert huge.json()["total"] == 2  # the whole body, not a cut one
    assert after == before + 2
    skipped = [e for e in entries if e.get("stage") == "response" and e["outcome"] == "skipped"]
    assert len(skipped) == 2 and {e["reason"] for e in skipped} == {"response_unchecked"}
    # Envoy hands over its buffer's worth, or the whole body when it arrived at once: never more.
    assert max(e["bytes"] for e in skipped) <= len(huge.content)


# --- issue 15: Provenance of the matches, includes of compartment types --------------------------------

PROVENANCE_SEARCH = "/Observation?patient=123&_revinclude=Provenance:target"


def _ids(response: httpx.Response) -> set[str]:
    return {e["resource"]["id"] for e in response.json()["entry"]}


@pytest.mark.parametrize("gateway", ["stack", "reporting", "enforcing"])
def test_provenance_revinclude_is_served_in_every_mode(gateway: str, request: pytest.FixtureRequest) -> None:
    running: Stack = request.getfixturevalue(gateway)
    response = running.get(PROVENANCE_SEARCH, running.token())
    assert response.status_code == 200
    assert _ids(response) == {"obs-123-a", "obs-123-b", "prov-123-a"}  # never prov-456-a


def test_provenance_revinclude_still_needs_a_scope_that_reads_provenance(stack: Stack) -> None:
    response = stack.get(PROVENANCE_SEARCH, stack.token(scope="launch/patient patient/Observation.rs"))
    assert response.status_code == 403 and "include_not_permitted" in response.text


def test_enforce_mode_blocks_a_provenance_that_names_another_patient(enforcing: Stack) -> None:
    response = enforcing.get(f"{PROVENANCE_SEARCH}&_tag={MISBEHAVE_PROVENANCE_TAG}", enforcing.token())
    assert response.status_code == 403
    assert response.json()["issue"][0]["details"]["coding"][0]["code"] == "response_foreign_resource"
    assert "prov-names-456" not in response.text


INCLUDE_OF_THE_SUBJECT = "/Observation?performer=Patient/123&_include=Observation:subject"  # obs-456-by-123


def test_an_include_of_a_compartment_type_is_denied_without_enforce_and_names_it(stack: Stack) -> None:
    response = stack.get(INCLUDE_OF_THE_SUBJECT, stack.token())
    assert response.status_code == 403
    assert "include_not_permitted" in response.text and "response_verification.mode: enforce" in response.text


def test_enforce_mode_allows_an_include_of_a_compartment_type_and_verifies_it(enforcing: Stack) -> None:
    own = enforcing.get("/Coverage?patient=123&_include=Coverage:beneficiary", enforcing.token())
    assert own.status_code == 200 and _ids(own) == {"cov-123", "123"}
    foreign = enforcing.get(INCLUDE_OF_THE_SUBJECT, enforcing.token())  # brings in Patient/456
    assert foreign.status_code == 403 and "Brown" not in foreign.text
    assert foreign.json()["issue"][0]["details"]["coding"][0]["code"] == "response_foreign_resource"


@pytest.mark.parametrize("gateway", ["stack", "enforcing"])
def test_an_include_of_a_granted_type_outside_the_compartment_is_served_in_every_mode(
    gateway: str, request: pytest.FixtureRequest
) -> None:
    running: Stack = request.getfixturevalue(gateway)
    response = running.get("/Coverage?patient=123&_include=Coverage:payor:Organization", running.token())
    assert response.status_code == 200 and _ids(response) == {"cov-123", "payer-1"}
