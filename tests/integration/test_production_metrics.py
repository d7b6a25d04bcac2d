"""Prometheus metrics after a scripted run of mixed traffic through the real Envoy: every family is
on ``/metrics`` with exactly the numbers the traffic implies, and no label value carries a patient
id, a token or a path."""

from __future__ import annotations

import platform
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from smartgate import __version__
from smartgate.core.reasons import Reason
from tests.support.idp import IdentityProvider, base_claims, sign
from tests.support.metrics import Metrics, decision_counts
from tests.support.stack import GatedFhir, gated_fhir

pytestmark = pytest.mark.integration

OPAQUE_ISSUER = "https://opaque.example/as"
ACTIVE_OPAQUE = "opaque-active-7f3c9e"
INACTIVE_OPAQUE = "opaque-revoked-a41b"

# (path, token name, status the client must see). Token names are resolved by _tokens().
SCRIPT: list[tuple[str, str | None, int]] = [
    ("/metadata", None, 200),
    ("/Observation?patient=123", None, 401),
    ("/Observation?patient=123", None, 401),
    ("/Observation?patient=123", "valid", 200),  # token cache miss
    ("/Observation?subject=Patient/123", "valid", 200),  # hit
    ("/Observation?patient=Patient/123", "valid", 200),  # hit
    ("/Observation?patient=456", "valid", 403),  # hit
    ("/Observation/obs-123-a", "valid", 200),  # hit; look-up: member, cache miss
    ("/Observation/obs-123-a", "valid", 200),  # hit; look-up: member, cache hit
    ("/Observation/obs-456-a", "valid", 403),  # hit; look-up: not_member
    ("/Observation/fault-injection", "valid", 503),  # hit; look-up: error
    ("/Observation?patient=123", "forged", 401),  # miss (failures are not cached)
    ("/Observation?patient=123", "forged", 401),  # miss
    ("/Observation?patient=123", "unknown_kid_1", 401),  # miss; JWKS refetched: success
    ("/Observation?patient=123", "unknown_kid_2", 401),  # miss; JWKS refetched: failure (IdP 500)
    ("/Observation?patient=123", "opaque_active", 200),  # miss; introspection: active
    ("/Observation?patient=123", "opaque_active", 200),  # miss; introspection: cache_hit
    ("/Observation?patient=123", "opaque_inactive", 401),  # miss; introspection: inactive
]

EXPECTED_DECISIONS = {
    ("allow", "200", "allowed_public_route"): 1,
    ("deny", "401", "token_missing"): 2,
    ("allow", "200", "allowed_compartment_search"): 5,
    ("deny", "403", "compartment_other_patient"): 1,
    ("allow", "200", "allowed_compartment_member"): 2,
    ("deny", "403", "not_in_compartment"): 1,
    ("error", "503", "lookup_failed"): 1,
    ("deny", "401", "token_bad_signature"): 2,
    ("deny", "401", "token_unknown_key"): 2,
    ("deny", "401", "token_inactive"): 1,
}


@dataclass
class Run:
    gated: GatedFhir
    metrics: Metrics
    tokens: dict[str, str]
    statuses: list[int]
    seconds: float  # from smartgate's start to the scrape


def _issuers(idp: IdentityProvider) -> list[dict[str, Any]]:
    return [
        {"issuer": idp.issuer},
        {
            "issuer": OPAQUE_ISSUER,
            "introspection": {
                "endpoint": f"{idp.issuer}/introspect",
                "client_id": "smartgate",
                "client_secret_env": "SMARTGATE_TEST_INTROSPECTION_SECRET",
            },
        },
    ]


def _tokens(gated: GatedFhir) -> dict[str, str]:
    claims = {
        **base_claims(gated.idp.issuer, gated.base_url),
        "sub": "user-1",
        "client_id": "app-1",
        "scope": "launch/patient patient/*.rs",
        "patient": "123",
    }
    intruder = ec.generate_private_key(ec.SECP256R1())
    return {
        "valid": gated.token(),
        "forged": jwt.encode(claims, intruder, algorithm="ES256", headers={"kid": "ec-1", "typ": "at+jwt"}),
        "unknown_kid_1": sign(gated.keys, claims, kid="rotated-1"),
        "unknown_kid_2": sign(gated.keys, claims, kid="rotated-2"),
        "opaque_active": ACTIVE_OPAQUE,
        "opaque_inactive": INACTIVE_OPAQUE,
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    workdir = tmp_path_factory.mktemp("metrics")
    introspection = {
        ACTIVE_OPAQUE: {
            "active": True,
            "scope": "launch/patient patient/Observation.rs",
            "patient": "123",
            "client_id": "opaque-app",
            "sub": "user-2",
            "exp": int(time.time()) + 600,
        }
    }
    started = time.monotonic()
    with gated_fhir(
        workdir,
        issuers=_issuers,
        introspection=introspection,
        smartgate_env={"SMARTGATE_TEST_INTROSPECTION_SECRET": "s3cret"},
        jwks={"min_refresh_interval_seconds": 0.001},
    ) as gated:
        tokens = _tokens(gated)
        statuses = []
        for path, token_name, _ in SCRIPT:
            gated.idp.fail_jwks = token_name == "unknown_kid_2"
            statuses.append(gated.get(path, tokens[token_name] if token_name else None).status_code)
        gated.idp.fail_jwks = False
        yield Run(gated, gated.smartgate.metrics(), tokens, statuses, time.monotonic() - started)


def test_the_scripted_traffic_got_the_expected_answers_through_envoy(run: Run) -> None:
    assert run.statuses == [status for _, _, status in SCRIPT]


def test_every_family_is_exposed_with_its_type(run: Run) -> None:
    assert {
        name: run.metrics.types.get(name)
        for name in (
            "smartgate_decisions",
            "smartgate_decision_duration_seconds",
            "smartgate_token_cache_requests",
            "smartgate_jwks_fetches",
            "smartgate_jwks_age_seconds",
            "smartgate_lookups",
            "smartgate_lookup_duration_seconds",
            "smartgate_introspection_requests",
            "smartgate_ready",
            "smartgate_build_info",
        )
    } == {
        "smartgate_decisions": "counter",
        "smartgate_decision_duration_seconds": "histogram",
        "smartgate_token_cache_requests": "counter",
        "smartgate_jwks_fetches": "counter",
        "smartgate_jwks_age_seconds": "gauge",
        "smartgate_lookups": "counter",
        "smartgate_lookup_duration_seconds": "histogram",
        "smartgate_introspection_requests": "counter",
        "smartgate_ready": "gauge",
        "smartgate_build_info": "gauge",
    }


def test_decisions_are_counted_by_outcome_status_and_reason(run: Run) -> None:
    assert decision_counts(run.metrics) == EXPECTED_DECISIONS


def test_decisions_agree_with_the_decision_log(run: Run) -> None:
    logged: dict[tuple[str, str, str], int] = {}
    for entry in run.gated.smartgate.decisions():
        key = (entry["outcome"], str(entry["status"]), entry["reason"])
        logged[key] = logged.get(key, 0) + 1
    assert logged == EXPECTED_DECISIONS


def test_decision_latency_histogram_has_sub_millisecond_buckets(run: Run) -> None:
    buckets = run.metrics.buckets("smartgate_decision_duration_seconds")
    assert len([bound for bound in buckets if bound < 0.001]) >= 4
    assert {0.0001, 0.00025, 0.0005, 0.001} <= set(buckets)
    counts = [buckets[bound] for bound in sorted(buckets)]
    assert counts == sorted(counts)  # cumulative
    assert buckets[float("inf")] == len(SCRIPT)
    assert run.metrics.value("smartgate_decision_duration_seconds_count") == len(SCRIPT)
    assert buckets[0.001] >= 1  # at least the public route and the missing tokens took under 1 ms
    assert 0 < run.metrics.value("smartgate_decision_duration_seconds_sum") < 10


def test_token_cache_hits_and_misses(run: Run) -> None:
    assert run.metrics.series("smartgate_token_cache_requests_total") == {
        frozenset({("result", "hit")}): 7,
        frozenset({("result", "miss")}): 8,
    }


def test_jwks_fetches_by_issuer_and_result_match_what_the_idp_served(run: Run) -> None:
    issuer = run.gated.idp.issuer
    assert run.metrics.series("smartgate_jwks_fetches_total") == {
        frozenset({("issuer", issuer), ("result", "success")}): 2,
        frozenset({("issuer", issuer), ("result", "failure")}): 1,
    }
    assert run.gated.idp.jwks_requests == 3


def test_jwks_age_is_the_time_since_the_last_good_key_set(run: Run) -> None:
    ages = run.metrics.series("smartgate_jwks_age_seconds")
    assert set(ages) == {frozenset({("issuer", run.gated.idp.issuer)})}
    assert 0 <= next(iter(ages.values())) <= run.seconds


def test_lookups_by_result_and_cache_and_their_latency(run: Run) -> None:
    assert run.metrics.series("smartgate_lookups_total") == {
        frozenset({("result", "member"), ("cache", "miss")}): 1,
        frozenset({("result", "member"), ("cache", "hit")}): 1,
        frozenset({("result", "not_member"), ("cache", "miss")}): 1,
        frozenset({("result", "error"), ("cache", "miss")}): 1,
    }
    # Only the three that asked the FHIR server are timed; the cache hit is not.
    assert run.metrics.value("smartgate_lookup_duration_seconds_count") == 3
    buckets = run.metrics.buckets("smartgate_lookup_duration_seconds")
    assert buckets[float("inf")] == 3
    assert 0 < run.metrics.value("smartgate_lookup_duration_seconds_sum") < 6


def test_introspection_calls_by_result(run: Run) -> None:
    assert run.metrics.series("smartgate_introspection_requests_total") == {
        frozenset({("result", "active")}): 1,
        frozenset({("result", "cache_hit")}): 1,
        frozenset({("result", "inactive")}): 1,
    }
    calls = run.gated.idp.introspection_requests
    assert [call["token"] for call in calls] == [ACTIVE_OPAQUE, INACTIVE_OPAQUE]
    assert all(call["authorization"].startswith("Basic ") for call in calls)  # client_secret_basic


def test_ready_and_build_info(run: Run) -> None:
    assert run.metrics.series("smartgate_ready") == {frozenset(): 1}
    assert run.metrics.series("smartgate_build_info") == {
        frozenset({("version", __version__), ("python", platform.python_version())}): 1,
    }


def test_label_values_are_bounded_never_a_patient_token_or_path(run: Run) -> None:
    reasons = {reason.code for reason in Reason}
    bounded: dict[str, set[str] | re.Pattern[str]] = {
        "outcome": {"allow", "deny", "error"},
        "status": re.compile(r"^[1-5][0-9][0-9]\Z"),
        "reason": reasons,
        "result": {
            "hit",
            "miss",
            "success",
            "failure",
            "member",
            "not_member",
            "error",
            "active",
            "inactive",
            "cache_hit",
        },
        "cache": {"hit", "miss"},
        "log": {"decision", "audit"},  # smartgate_decision_log_dropped_total (issue 16)
        "issuer": {run.gated.idp.issuer, OPAQUE_ISSUER},
        "le": re.compile(r"^([0-9.]+(e[+-][0-9]+)?|\+Inf)\Z"),
        "version": {__version__},
        "python": {platform.python_version()},
    }
    smartgate_labels = [labels for name, labels in run.metrics.rows if name.startswith("smartgate_")]
    assert smartgate_labels
    for labels in smartgate_labels:
        for name, value in labels.items():
            rule = bounded.get(name)
            assert rule is not None, f"unexpected label {name}={value!r}"
            ok = rule.match(value) is not None if isinstance(rule, re.Pattern) else value in rule
            assert ok, f"label {name}={value!r} is not a bounded value"
    smartgate_text = "\n".join(line for line in run.metrics.raw.splitlines() if "smartgate_" in line)
    for secret in [*run.tokens.values(), "s3cret"]:
        assert secret not in smartgate_text
    for fragment in (
        "obs-123",
        "obs-456",
        "fault-injection",
        "Patient/",
        "/fhir",
        "Observation",
        "patient=",
        '"123"',
        '"456"',
    ):
        assert fragment not in smartgate_text


def test_the_readme_documents_every_family_exposed_and_every_reason_code(run: Run) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    exposed = {
        f"{name}_total" if kind == "counter" else name
        for name, kind in run.metrics.types.items()
        if name.startswith("smartgate_") and not name.endswith("_created")
    }
    assert len(exposed) >= 10
    assert sorted(name for name in exposed if f"`{name}`" not in readme) == []
    assert sorted(reason.code for reason in Reason if f"`{reason.code}`" not in readme) == []
