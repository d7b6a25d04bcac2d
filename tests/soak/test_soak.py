"""Soak: steady mixed traffic through the real Envoy and ``smartgate serve --workers 2`` for
``SMARTGATE_SOAK_SECONDS`` (40 s by default; ``make soak`` runs 600 s), with token churn and a
signing-key rotation during the run.

Timeline (T = the run's length):
- [0, T/3): the IdP publishes key-1; tokens are signed with key-1.
- T/3: the IdP publishes key-1 and key-2. From T/3 + KEY_SWITCH_GRACE (longer than
  ``jwks.min_refresh_interval_seconds``, so the first key-2 token may trigger a refresh that sees
  key-2) new tokens are signed with key-2, and tokens with key-1 are no longer used.
- 2T/3: the IdP withdraws key-1. smartgate keeps its cached key set until the periodic refresh
  (``jwks.refresh_interval_seconds``), so a key-1 token has no defined outcome until
  RETIRE_SETTLE seconds later; from then on a fresh key-1 token must get 401 token_unknown_key.
  (A key-1 token verified earlier stays in the verified-token cache until its exp, at most
  ``tokens.cache_max_ttl_seconds``: withdrawing a key is not a revocation.)

Asserted: every response has its expected status and reason code (zero wrong decisions), no 5xx
besides the injected FHIR-server faults, nothing that should have been denied reached the FHIR
server, everything allowed did, spoofed x-smart-* headers never reached it, and smartgate's RSS
(supervisor + workers) after warm-up stays flat.
"""

from __future__ import annotations

import base64
import json
import os
import statistics
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.fhir_upstream import RecordingUpstream
from tests.support.stack import gated_fhir

from .process_memory import RssSampler
from .rotating_keys import RotatingKeys
from .traffic import (
    CONTEXT_PATIENT,
    EXPIRED,
    MARKER_HEADER,
    MIX,
    NO_TOKEN,
    OTHER_PATIENT,
    RETIRED_KEY,
    RETIRED_KEY_PROBE,
    SESSION_SCOPE,
    TAMPERED,
    Probe,
)

pytestmark = pytest.mark.soak

SOAK_SECONDS = float(os.environ.get("SMARTGATE_SOAK_SECONDS", "40"))
RATE = float(os.environ.get("SMARTGATE_SOAK_RATE", "60"))  # requests per second, all clients together
CLIENTS = 6
REQUESTS_PER_TOKEN = 5
REFRESH_INTERVAL = 3.0  # jwks.refresh_interval_seconds
MIN_REFRESH_INTERVAL = 1.0  # jwks.min_refresh_interval_seconds
KEY_SWITCH_GRACE = MIN_REFRESH_INTERVAL + 2.0
# The refresher looks every min(refresh_interval, 5) s and refreshes a set older than the interval.
RETIRE_SETTLE = 2 * REFRESH_INTERVAL + 2.0
WARM_UP = max(5.0, min(60.0, SOAK_SECONDS / 6))
RSS_INTERVAL = 2.0 if SOAK_SECONDS <= 120 else 5.0
RSS_MARGIN_MB = 15.0
TOKEN_CACHE_SIZE = int(os.environ.get("SMARTGATE_SOAK_TOKEN_CACHE", "300"))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def tampered(token: str) -> str:
    """The token with its payload rewritten to another patient, the signature left as it was."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["patient"] = OTHER_PATIENT
    return ".".join((header, _b64(json.dumps(claims).encode()), signature))


@dataclass
class Outcome:
    probe: Probe
    status: int
    reason: str | None
    marker: str
    received_smart: dict[str, str] | None
    kid: str | None


@dataclass
class Run:
    base_url: str
    issuer: str
    keys: RotatingKeys
    started: float
    retire_from: float  # monotonic time after which key-1 tokens must be refused
    stop_at: float
    outcomes: list[Outcome] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lagged: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def claims(self, lifetime: int = 600, issued_ago: int = 0) -> dict[str, Any]:
        now = int(time.time()) - issued_ago
        return {
            "iss": self.issuer,
            "aud": self.base_url,
            "iat": now,
            "exp": now + lifetime,
            "jti": uuid.uuid4().hex,
            "sub": "user-1",
            "client_id": "soak-app",
            "scope": SESSION_SCOPE,
            "patient": CONTEXT_PATIENT,
        }


def smartgate_reason(response: httpx.Response) -> str | None:
    """The smartgate reason code of a denial (None when the body is not smartgate's OperationOutcome)."""
    try:
        outcome = response.json()
        diagnostics = outcome["issue"][0]["diagnostics"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    if isinstance(diagnostics, str) and diagnostics.startswith("smartgate: "):
        return diagnostics.removeprefix("smartgate: ")
    return None


def client_loop(run: Run, index: int) -> None:
    interval = CLIENTS / RATE
    next_at = run.started + index * interval / CLIENTS
    token: str | None = None
    token_kid: str | None = None
    uses = 0
    sequence = 0
    queue: list[Probe] = list(MIX[index:])  # clients start at different points of the mix
    with httpx.Client(timeout=15) as client:
        while True:
            now = time.monotonic()
            if now >= run.stop_at:
                return
            if next_at > now:
                time.sleep(next_at - now)
            elif now - next_at > 1.0:  # fell behind: do not burst to catch up
                next_at = now
                with run.lock:
                    run.lagged += 1
            next_at += interval
            if not queue:
                queue = list(MIX)
                if time.monotonic() >= run.retire_from:
                    queue.append(RETIRED_KEY_PROBE)
            probe = queue.pop(0)
            if token is None or uses >= REQUESTS_PER_TOKEN or token_kid != run.keys.signing_kid:
                token, token_kid = run.keys.sign(run.claims())
                uses = 0
            kid: str | None = token_kid
            if probe.auth == NO_TOKEN:
                sent_token, kid = None, None
            elif probe.auth == EXPIRED:
                sent_token, kid = run.keys.sign(run.claims(lifetime=3600, issued_ago=7200))
            elif probe.auth == TAMPERED:
                sent_token = tampered(token)
            elif probe.auth == RETIRED_KEY:
                sent_token, kid = run.keys.sign(run.claims(), kid="key-1")
            else:
                sent_token = token
            if sent_token is token:
                uses += 1
            sequence += 1
            marker = f"c{index}-{sequence}-{uuid.uuid4().hex[:8]}"
            headers = {MARKER_HEADER: marker, **probe.headers}
            if sent_token is not None:
                headers["authorization"] = f"Bearer {sent_token}"
            try:
                response = client.request(probe.method, run.base_url + probe.path, headers=headers, content=probe.body)
            except httpx.HTTPError as exc:
                with run.lock:
                    run.errors.append(f"{probe.name}: {type(exc).__name__}: {exc}")
                continue
            echoed = response.headers.get("x-demo-received-smart")
            outcome = Outcome(
                probe,
                response.status_code,
                smartgate_reason(response),
                marker,
                None if echoed is None else dict(json.loads(echoed)),
                kid,
            )
            with run.lock:
                run.outcomes.append(outcome)


@dataclass
class Verdicts:
    by_status: Counter[int] = field(default_factory=Counter)
    by_probe: Counter[str] = field(default_factory=Counter)
    wrong: list[str] = field(default_factory=list)
    unexpected_5xx: Counter[str] = field(default_factory=Counter)  # by who answered: reason code or "envoy"
    injected_faults: int = 0
    key_2_requests: int = 0


def judge(outcomes: list[Outcome], upstream: RecordingUpstream) -> Verdicts:
    verdicts = Verdicts()
    for outcome in outcomes:
        probe, expected = outcome.probe, outcome.probe.expected
        verdicts.by_status[outcome.status] += 1
        verdicts.by_probe[probe.name] += 1
        if outcome.kid == "key-2" and outcome.status < 400:
            verdicts.key_2_requests += 1
        reached = upstream.saw_header(MARKER_HEADER, outcome.marker)
        where = f"{probe.name} ({probe.method} {probe.path or '/'}, kid {outcome.kid})"
        if not expected.reaches_upstream and reached:
            verdicts.wrong.append(f"{where}: reached the FHIR server although it must be denied before it")
        if outcome.status >= 500 and not (probe.injected_fault and outcome.status == expected.status):
            verdicts.unexpected_5xx[f"{outcome.status} {outcome.reason or 'envoy'}"] += 1
            continue
        if outcome.status != expected.status or outcome.reason != expected.reason:
            verdicts.wrong.append(
                f"{where}: got {outcome.status} {outcome.reason}, expected {expected.status} {expected.reason}"
            )
            continue
        if probe.injected_fault:
            verdicts.injected_faults += 1
        if expected.reaches_upstream and not reached:
            verdicts.wrong.append(f"{where}: answered {outcome.status} but the FHIR server never saw it")
        if (
            probe.name.startswith("search_own")
            and outcome.received_smart is not None
            and (
                outcome.received_smart.get("x-smart-patient") != CONTEXT_PATIENT
                or outcome.received_smart.get("x-smart-scope") != SESSION_SCOPE
            )
        ):
            verdicts.wrong.append(f"{where}: the FHIR server received context headers {outcome.received_smart}")
    return verdicts


def rss_figures(samples: list[tuple[float, float]]) -> tuple[float, float, float, float, float]:
    """(first sample, first after warm-up, mean of the last quarter, max, last) in MB."""
    after_warm_up = [mb for at, mb in samples if at >= WARM_UP]
    last_quarter = [mb for at, mb in samples if at >= 0.75 * SOAK_SECONDS] or after_warm_up[-1:]
    return (
        samples[0][1],
        after_warm_up[0],
        statistics.fmean(last_quarter),
        max(mb for _, mb in samples),
        samples[-1][1],
    )


def test_mixed_traffic_with_token_churn_and_key_rotation_never_decides_wrong(tmp_path: Path) -> None:
    keys = RotatingKeys.start("key-1")
    keys.add("key-2")
    upstream = RecordingUpstream(answers="demo")
    try:
        with gated_fhir(
            tmp_path,
            keys=keys,
            upstream_url=upstream.url,
            workers=2,
            smartgate_args=("--workers", "2"),
            envoy={"response_verification": "enforce"},
            response_verification={"mode": "enforce"},
            tokens={"cache_size": TOKEN_CACHE_SIZE},
            jwks={"refresh_interval_seconds": REFRESH_INTERVAL, "min_refresh_interval_seconds": MIN_REFRESH_INTERVAL},
        ) as fhir:
            sampler = RssSampler(fhir.smartgate.process.pid, RSS_INTERVAL)
            started = time.monotonic()
            run = Run(
                fhir.base_url,
                fhir.idp.issuer,
                keys,
                started,
                retire_from=started + 2 * SOAK_SECONDS / 3 + RETIRE_SETTLE,
                stop_at=started + SOAK_SECONDS,
            )
            sampler.start()
            clients = [threading.Thread(target=client_loop, args=(run, i), daemon=True) for i in range(CLIENTS)]
            for thread in clients:
                thread.start()
            time.sleep(max(0.0, started + SOAK_SECONDS / 3 - time.monotonic()))
            keys.publish("key-1", "key-2")
            time.sleep(KEY_SWITCH_GRACE)
            keys.sign_with("key-2")
            time.sleep(max(0.0, started + 2 * SOAK_SECONDS / 3 - time.monotonic()))
            keys.publish("key-2")
            for thread in clients:
                thread.join(timeout=SOAK_SECONDS + 60)
            elapsed = time.monotonic() - started
            sampler.stop()
            jwks_fetches = fhir.idp.jwks_requests
    finally:
        upstream.close()

    verdicts = judge(run.outcomes, upstream)
    first, warm, last_quarter, peak, end = rss_figures(sampler.samples)
    print(
        f"\nSOAK: seconds={elapsed:.0f} requests={len(run.outcomes)} rate={len(run.outcomes) / elapsed:.1f}/s "
        f"by_outcome={dict(sorted(verdicts.by_status.items()))} wrong={len(verdicts.wrong)} "
        f"unexpected_5xx={sum(verdicts.unexpected_5xx.values())} injected_faults={verdicts.injected_faults} "
        f"rss_mb start/after-warmup/max/end={first:.1f}/{warm:.1f}/{peak:.1f}/{end:.1f} "
        f"(last-quarter mean {last_quarter:.1f})"
    )
    print(
        f"SOAK detail: by_probe={dict(sorted(verdicts.by_probe.items()))} "
        f"unexpected_5xx={dict(verdicts.unexpected_5xx)} client_errors={len(run.errors)} lagged={run.lagged} "
        f"key_2_requests={verdicts.key_2_requests} jwks_fetches={jwks_fetches}"
    )

    assert not run.errors, run.errors[:10]
    assert verdicts.wrong == [], verdicts.wrong[:20]
    assert not verdicts.unexpected_5xx, dict(verdicts.unexpected_5xx)
    exercised = set(verdicts.by_probe)
    assert exercised == {probe.name for probe in (*MIX, RETIRED_KEY_PROBE)}, "a probe was never sent"
    assert verdicts.injected_faults > 0 and verdicts.key_2_requests > 0
    assert last_quarter - warm <= RSS_MARGIN_MB, sampler.samples
