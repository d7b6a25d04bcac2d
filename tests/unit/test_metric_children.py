"""Metric label children are resolved once and kept, so a Check does not pay ``.labels(...)`` per
counter; the exposed series are the same as before."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from smartgate.core.reasons import Reason
from smartgate.telemetry import metrics


def decisions(reason: Reason) -> float:
    outcome, status, code = metrics.decision_labels(reason)
    labels = {"outcome": outcome, "status": status, "reason": code}
    return REGISTRY.get_sample_value("smartgate_decisions_total", labels) or 0.0


def test_a_reasons_decision_counter_is_resolved_once() -> None:
    assert (
        metrics.DECISIONS_BY_REASON[Reason.SCOPE_INSUFFICIENT] is metrics.DECISIONS_BY_REASON[Reason.SCOPE_INSUFFICIENT]
    )


def test_the_resolved_child_counts_in_the_series_of_its_outcome_status_and_reason() -> None:
    before = decisions(Reason.ALLOWED_COMPARTMENT_SEARCH)
    metrics.DECISIONS_BY_REASON[Reason.ALLOWED_COMPARTMENT_SEARCH].inc()
    assert decisions(Reason.ALLOWED_COMPARTMENT_SEARCH) - before == 1


@pytest.mark.parametrize(
    ("reason", "labels"),
    [
        (Reason.ALLOWED_COMPARTMENT_SEARCH, ("allow", "200", "allowed_compartment_search")),
        (Reason.TOKEN_MISSING, ("deny", "401", "token_missing")),
        (Reason.SCOPE_INSUFFICIENT, ("deny", "403", "scope_insufficient")),
        (Reason.INTERNAL_ERROR, ("error", str(Reason.INTERNAL_ERROR.http_status), "internal_error")),
    ],
)
def test_decision_labels_follow_from_the_reason(reason: Reason, labels: tuple[str, str, str]) -> None:
    assert metrics.decision_labels(reason) == labels


def test_token_cache_results_are_resolved_once_and_count() -> None:
    hit = metrics.TOKEN_CACHE_BY_RESULT["hit"]
    assert metrics.TOKEN_CACHE_BY_RESULT["hit"] is hit
    before = REGISTRY.get_sample_value("smartgate_token_cache_requests_total", {"result": "hit"}) or 0.0
    hit.inc()
    assert REGISTRY.get_sample_value("smartgate_token_cache_requests_total", {"result": "hit"}) == before + 1


def test_a_label_value_never_used_is_never_exposed() -> None:
    assert REGISTRY.get_sample_value("smartgate_decision_log_dropped_total", {"log": "never-used"}) is None
