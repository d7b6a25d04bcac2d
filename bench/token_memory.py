"""Memory under token churn: N distinct valid tokens through Envoy to smartgate (1 worker).

smartgate's RSS is read from /proc at start, after warm-up, when the verified-token cache is full
(``tokens.cache_size`` distinct tokens verified) and at the end; the checks are that RSS stays under
the configured cache bound (entries x measured bytes per entry) plus 100 MB, and that it does not grow
once the cache is full. Called by run_bench.py; alone:
python bench/token_memory.py [--tokens 100000]
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import envoy_setups
import processes
import tokens
from load import THROUGHPUT, Load, parse_output, write_requests, wrk_command

from smartgate.config.model import TokenPolicy
from smartgate.config.parse import parse_config
from smartgate.core.expiring_cache import ExpiringCache
from smartgate.core.reasons import Reason
from smartgate.envoy_glue.check_response import ResponseBuilder
from smartgate.policy.decision import Decision
from smartgate.tokens.context import TokenContext, context_from_claims

MB = 1024 * 1024
HEADROOM = 100 * MB
GROWTH_TOLERANCE = 10 * MB  # allocator noise once the cache is full


def _rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def bytes_per_entry(sample_token: str, audience: str, jwks_file: Path, entries: int = 4000) -> int:
    """What one verified-token cache entry costs: the token string (the key), its TokenContext and the
    allow answer the response builder keeps in the context's memo after the token's first allow. The
    larger of what Python's allocator traced and what the process's RSS grew by: protobuf messages live in
    the C library's arenas, which tracemalloc does not see."""
    config = parse_config(
        {
            "fhir": {"base_url": audience, "upstream_url": "http://127.0.0.1:9/fhir"},
            "issuers": [{"issuer": tokens.ISSUER, "jwks_file": str(jwks_file)}],
        }
    )
    issuer = config.issuers[0]
    responses = ResponseBuilder(config.headers, config.realm)
    cache: ExpiringCache[TokenContext] = ExpiringCache(entries)
    gc.collect()
    rss_before = _rss_bytes()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(entries):
        claims = tokens.claims(audience)
        context = context_from_claims(claims, issuer.claims, audience, issuer.dotted_scopes)
        assert isinstance(context, TokenContext)
        key = sample_token[:-8] + f"{i:08d}"  # a distinct string of the same length
        cache.put(key, context, time.time() + 300)
        responses.build(Decision(Reason.ALLOWED_COMPARTMENT_SEARCH, "allowed", context))
    traced = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    gc.collect()
    grown = _rss_bytes() - rss_before
    return int(max(traced, grown) / entries)


def _misses(http_address: str) -> float:
    with urllib.request.urlopen(f"http://{http_address}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    found = re.search(r'^smartgate_token_cache_requests_total\{result="miss"\} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def run(
    workdir: Path,
    keys: tokens.BenchKeys,
    audience: str,
    fhir_upstream: str,
    count: int,
    cache_size: int | None = None,
    log: Callable[[str], None] = print,
    load: Load = THROUGHPUT,
) -> dict[str, Any]:
    began = time.monotonic()
    pool = tokens.token_pool(keys, "ES256", audience, count)
    pool_file = tokens.write_pool(pool, workdir / "tokens-memory.txt")
    log(f"signed {count} ES256 tokens in {time.monotonic() - began:.1f} s")
    jwks_file = workdir / "jwks.json"
    jwks_file.write_text(json.dumps(keys.jwks()), encoding="utf-8")
    grpc_port, http_port, envoy_port, admin_port = (
        processes.free_port_pair(),
        processes.free_port(),
        processes.free_port(),
        processes.free_port(),
    )
    config = processes.smartgate_config(grpc_port, http_port, audience, fhir_upstream, tokens.ISSUER, jwks_file)
    bound_entries = cache_size or TokenPolicy().cache_size
    if cache_size is not None:
        config["tokens"] = {"cache_size": cache_size}
    per_entry = bytes_per_entry(pool[0], audience, jwks_file)
    bound = bound_entries * per_entry
    http = f"127.0.0.1:{http_port}"
    samples: list[tuple[float, float, int]] = []  # (seconds, tokens verified, rss)
    with contextlib.ExitStack() as stack:
        gate = stack.enter_context(processes.smartgate(config, workdir, workers=1))
        stack.enter_context(
            processes.envoy(envoy_setups.ext_authz_config(envoy_port, admin_port, grpc_port), workdir, "envoy-memory")
        )
        time.sleep(2.5)  # the first health check
        rss_start = processes.rss_bytes(gate.pid)
        plan = write_requests(workdir / "plan-memory.txt", [("/fhir/Observation?patient=123", "pool")])
        command, env = wrk_command(f"http://127.0.0.1:{envoy_port}", load, 3600, plan, tokens_file=pool_file)
        wrk = subprocess.Popen(  # noqa: S603 - wrk with arguments we built
            command,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started = time.monotonic()
        try:
            base = _misses(http)
            while True:
                verified = _misses(http) - base
                samples.append((time.monotonic() - started, verified, processes.rss_bytes(gate.pid)))
                if verified >= count or wrk.poll() is not None or time.monotonic() - started > 900:
                    break
                time.sleep(0.25)
        finally:
            wrk.send_signal(signal.SIGINT)  # wrk prints its summary on SIGINT
            stdout, _ = wrk.communicate(timeout=30)
        figures = parse_output(stdout)
    warm_mark = min(1000, count // 10)
    rss_warm = next((rss for _, v, rss in samples if v >= warm_mark), samples[-1][2])
    rss_full = next((rss for _, v, rss in samples if v >= bound_entries), samples[-1][2])
    after_full = [rss for _, v, rss in samples if v >= bound_entries]
    rss_end = samples[-1][2]
    rss_peak = max(rss for _, _, rss in samples)
    growth = (max(after_full) - rss_full) if after_full else 0
    result = {
        "tokens_sent": int(samples[-1][1]),
        "tokens_planned": count,
        "cache_size": bound_entries,
        "bytes_per_entry": per_entry,
        "cache_bound_bytes": bound,
        "rss_start": rss_start,
        "rss_warm": rss_warm,
        "rss_full": rss_full,
        "rss_end": rss_end,
        "rss_peak": rss_peak,
        "growth_after_full": growth,
        "rps": figures["rps"],
        "non_2xx": figures["non_2xx"],
        "rss_under_bound": rss_peak < bound + HEADROOM,
        "no_growth_after_full": growth <= GROWTH_TOLERANCE,
        "samples": [{"t": round(t, 2), "tokens": int(v), "rss": rss} for t, v, rss in samples],
    }
    log(
        f"memory: RSS start {rss_start / MB:.0f} MB, warm {rss_warm / MB:.0f} MB, cache full {rss_full / MB:.0f} MB, "
        f"end {rss_end / MB:.0f} MB (peak {rss_peak / MB:.0f} MB); bound {bound / MB:.1f} MB + 100 MB; "
        f"{result['tokens_sent']} tokens at {figures['rps']:.0f}/s"
    )
    return result


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=100_000)
    args = parser.parse_args()
    from smartgate.fhir.compartment import MEMBERSHIP_PARAMS

    with tempfile.TemporaryDirectory(prefix="smartgate-memory-") as tmp:
        workdir = Path(tmp)
        fhir_port, fhir_admin = processes.free_port(), processes.free_port()
        stand_in = envoy_setups.fhir_stand_in_config(fhir_port, fhir_admin, MEMBERSHIP_PARAMS["Observation"])
        with processes.envoy(stand_in, workdir, "fhir-stand-in"):
            result = run(
                workdir,
                tokens.new_keys(),
                "https://bench.smartgate.invalid/fhir",
                f"http://127.0.0.1:{fhir_port}/fhir",
                args.tokens,
            )
    result.pop("samples")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
