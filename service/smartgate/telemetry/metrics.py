"""Prometheus metrics, named by Prometheus conventions under ``smartgate_``.

Label values are bounded: outcomes, statuses, reason codes, configured issuers and fixed
result words. Never a patient id, a token or a raw path. With several worker processes
``PROMETHEUS_MULTIPROC_DIR`` is set by the supervisor before this module is imported, and
prometheus-client's multiprocess mode adds the workers' numbers up.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from smartgate import __version__
from smartgate.core.reasons import Reason

# Fine enough for sub-millisecond decisions, wide enough for look-ups and JWKS fetches.
LATENCY_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.00075,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)

DECISIONS = Counter(
    "smartgate_decisions",
    "Authorization decisions by outcome, HTTP status and reason code.",
    ["outcome", "status", "reason"],
)
DECISION_SECONDS = Histogram(
    "smartgate_decision_duration_seconds", "Time to decide one Check request.", buckets=LATENCY_BUCKETS
)
TOKEN_CACHE = Counter(
    "smartgate_token_cache_requests", "Verified-token cache look-ups by result (hit, miss).", ["result"]
)
JWKS_FETCHES = Counter(
    "smartgate_jwks_fetches", "JWKS fetches by issuer and result (success, failure).", ["issuer", "result"]
)
JWKS_AGE = Gauge(
    "smartgate_jwks_age_seconds",
    "Seconds since the issuer's key set was last fetched successfully.",
    ["issuer"],
    multiprocess_mode="livemax",
)
INTROSPECTIONS = Counter(
    "smartgate_introspection_requests",
    "RFC 7662 introspection calls by result (active, inactive, error, cache_hit).",
    ["result"],
)
LOOKUPS = Counter(
    "smartgate_lookups",
    "Compartment membership look-ups by result (member, not_member, error) and cache use.",
    ["result", "cache"],
)
LOOKUP_SECONDS = Histogram(
    "smartgate_lookup_duration_seconds",
    "Time of compartment look-ups against the FHIR server.",
    buckets=LATENCY_BUCKETS,
)
RESPONSE_CHECKS = Counter(
    "smartgate_response_checks",
    "Response verifications by mode and result (clean, blocked, reported, skipped).",
    ["mode", "result"],
)
RESPONSE_CHECKS_SKIPPED = Counter(
    "smartgate_response_checks_skipped",
    "Responses report mode let through unchecked, by reason (too_large: past max_body_bytes or Envoy's buffer).",
    ["reason"],
)
RESPONSE_CHECK_SECONDS = Histogram(
    "smartgate_response_check_duration_seconds",
    "Time to verify one buffered response body.",
    buckets=LATENCY_BUCKETS,
)
DPOP_REPLAY_CACHE_ENTRIES = Gauge(
    "smartgate_dpop_replay_cache_entries",
    "DPoP proof jti values remembered against replay (sum over workers; each worker has its own cache).",
    multiprocess_mode="livesum",
)
DECISION_LOG_DROPPED = Counter(
    "smartgate_decision_log_dropped",
    "Decision-log and audit lines dropped because the writer's queue was full (the stream was too slow), by log.",
    ["log"],
)
READY = Gauge("smartgate_ready", "1 when every issuer has a usable key set.", multiprocess_mode="livemin")
BUILD_INFO = Gauge("smartgate_build_info", "Build information.", ["version", "python"], multiprocess_mode="max")


K = TypeVar("K", bound=Hashable)


class Children(Generic[K]):
    """A labelled metric's children, each resolved on first use and then kept.

    ``metric.labels(...)`` takes a lock, builds a tuple and looks it up on every call; on the Check
    path that is paid per decision. Resolved lazily, so a label value never used is never exposed
    (and a worker process creates its own children after it starts)."""

    __slots__ = ("_children", "_labels", "_metric")

    def __init__(self, metric: Counter, labels: Callable[[K], tuple[str, ...]]) -> None:
        self._metric = metric
        self._labels = labels
        self._children: dict[K, Counter] = {}

    def __getitem__(self, key: K) -> Counter:
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._metric.labels(*self._labels(key))
        return child


def decision_labels(reason: Reason) -> tuple[str, str, str]:
    """(outcome, status, reason) of ``smartgate_decisions``: everything follows from the reason code."""
    outcome = "allow" if reason.allows else ("error" if reason.http_status >= 500 else "deny")
    return outcome, str(reason.http_status), reason.code


DECISIONS_BY_REASON: Children[Reason] = Children(DECISIONS, decision_labels)
TOKEN_CACHE_BY_RESULT: Children[str] = Children(TOKEN_CACHE, lambda result: (result,))
LOG_LINES_DROPPED: Children[str] = Children(DECISION_LOG_DROPPED, lambda log: (log,))


def init_process_metrics() -> None:
    BUILD_INFO.labels(__version__, platform.python_version()).set(1)
    READY.set(0)


def observe_jwks_age(issuer: str, last_success_wall_time: float | None) -> None:
    if last_success_wall_time is not None:
        JWKS_AGE.labels(issuer).set(max(0.0, time.time() - last_success_wall_time))


def render_metrics() -> tuple[bytes, str]:
    """The exposition text: this process's registry, or every worker's when in multiprocess mode."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
