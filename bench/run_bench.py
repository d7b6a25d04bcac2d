"""smartgate benchmark: Envoy alone, Envoy's jwt_authn, the Python floor and smartgate, under wrk.

One run on loopback. Every setup answers the FHIR route with Envoy's ``direct_response`` so only
authorization is measured (see envoy_setups.py). The busy no-op yardstick (C-busyN: the grpc.aio floor
busy-waiting N µs per Check) places smartgate's throughput on a curve, read as "equivalent busy µs".
Writes results.md, latency.png, busy-yardstick.png and results.json.

Usage: python bench/run_bench.py [--out bench/results] [--duration 5] [--smoke] [--memory-tokens 100000]
       [--setups D,D-uds] [--workloads search_cached]   (a targeted run)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import re
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import envoy_setups
import fhir_bodies
import processes
import report
import tokens
from load import LATENCY, THROUGHPUT, Load, run_wrk, write_requests

from smartgate.config.model import VerificationMode
from smartgate.fhir.compartment import MEMBERSHIP_PARAMS

SETUP_TITLES = {
    "A": "A Envoy alone",
    "B": "B Envoy jwt_authn",
    "C-aio": "C floor (grpc.aio)",
    "C-threaded": "C floor (grpcio threads)",
    **{f"C-busy{us}": f"C busy no-op, {us} µs per Check" for us in report.BUSY_MICROSECONDS},
    "D": "D smartgate 1 worker",
    "E": "E smartgate 2 workers",
    "D-uds": "D smartgate 1 worker, Unix socket",
    "F-off": "F smartgate 1 worker, FHIR stand-in, verification off",
    "F-enforce": "F smartgate 1 worker, FHIR stand-in, verification enforce",
}
# Setups F route to the FHIR stand-in (an Envoy answering at once) instead of answering in the front Envoy,
# so responses pass through ext_proc: the same workloads with response verification off and enforcing.
VERIFICATION_SETUPS: dict[str, VerificationMode] = {"F-off": "off", "F-enforce": "enforce"}
# The busy no-op yardstick (C-busyN) runs beside the floors: smartgate's throughput read as busy µs per Check.
BUSY_SETUPS = [f"C-busy{us}" for us in report.BUSY_MICROSECONDS]
ALL_SETUPS = ["A", "B", "C-aio", "C-threaded", *BUSY_SETUPS, "D", "E", "D-uds", *VERIFICATION_SETUPS]


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    requests: list[tuple[str, str]]
    pool: str | None = None  # token pool algorithm for "pool" requests
    setups: frozenset[str] = frozenset({"D", "E"})  # besides A and C, measured once (they do no per-workload work)
    deny_share: float = 0.0  # the share of requests that must be denied


SEARCH = "/fhir/Observation?patient=123"
WORKLOADS = [
    Workload(
        "search_cached",
        "search bound to the patient, cached token",
        [(SEARCH, "fixed")],
        setups=frozenset({"B", "D", "E", "D-uds", "F-off", "F-enforce"}),
    ),
    Workload(
        "search_fresh_rs256",
        "same, fresh RS256 token per request",
        [(SEARCH, "pool")],
        pool="RS256",
        setups=frozenset({"B", "D", "E"}),
    ),
    Workload(
        "search_fresh_es256",
        "same, fresh ES256 token per request",
        [(SEARCH, "pool")],
        pool="ES256",
        setups=frozenset({"B", "D", "E"}),
    ),
    Workload("read_lookup_warm", "read by id, compartment look-up cached", [("/fhir/Observation/obs-1", "fixed")]),
    Workload(
        "read_lookup_cold",
        "read by id, new id each request (look-up every time)",
        [("/fhir/Observation/obs-{n}", "fixed")],
    ),
    Workload(
        "mix",
        "mix: 4 allows, 4 denies (403 other patient, 403 not in compartment, 401 none, 401 bad)",
        [
            (SEARCH, "fixed"),
            ("/fhir/Observation?patient=456", "fixed"),
            ("/fhir/Observation/obs-1", "fixed"),
            ("/fhir/Observation/nm-1", "fixed"),
            ("/fhir/Patient/123", "fixed"),
            (SEARCH, "none"),
            ("/fhir/Condition?patient=123", "fixed"),
            (SEARCH, "bad"),
        ],
        deny_share=0.5,
    ),
    Workload(
        "read_new_id",
        "read by id, new id each request, answered by the FHIR stand-in (off: look-up every "
        "time; enforce: proven by the response)",
        [("/fhir/Observation/obs-{n}", "fixed")],
        setups=frozenset(VERIFICATION_SETUPS),
    ),
    Workload(
        "uscore_provenance",
        "US Core search: 20 laboratory Observations and their Provenances (_revinclude=Provenance:target, 30 KB)",
        [(fhir_bodies.USCORE_SEARCH, "fixed")],
        setups=frozenset(VERIFICATION_SETUPS),
    ),
]
SMOKE_WORKLOADS = ("search_cached", "search_fresh_es256", "mix", "read_new_id", "uscore_provenance")
SMOKE_SETUPS = ["A", "C-aio", "C-busy100", "D", "D-uds", "F-enforce"]


@dataclass
class Bench:
    out: Path
    workdir: Path
    duration: float
    loads: list[Load]
    workloads: list[Workload]
    setups: list[str]
    pool_size: int
    keys: tokens.BenchKeys = field(default_factory=tokens.new_keys)
    runs: list[dict[str, Any]] = field(default_factory=list)
    pools: dict[str, Path] = field(default_factory=dict)
    fixed_token: str = ""
    audience: str = ""

    def log(self, message: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _token_cache_hits(http_address: str) -> tuple[float, float]:
    """(hits, misses) of smartgate's verified-token cache, from /metrics."""
    with urllib.request.urlopen(f"http://{http_address}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    counts = {"hit": 0.0, "miss": 0.0}
    for result, value in re.findall(
        r'^smartgate_token_cache_requests_total\{result="(hit|miss)"\} (\S+)$', text, re.MULTILINE
    ):
        counts[result] += float(value)
    return counts["hit"], counts["miss"]


def _measure(
    bench: Bench, setup: str, workload: Workload, load: Load, url: str, offset: int, smartgate_http: str | None
) -> dict[str, Any]:
    plan = write_requests(bench.workdir / f"plan-{workload.name}.txt", workload.requests)
    before = _token_cache_hits(smartgate_http) if smartgate_http else None
    figures = run_wrk(
        url,
        load,
        bench.duration,
        plan,
        token=bench.fixed_token,
        tokens_file=bench.pools.get(workload.pool or ""),
        token_offset=offset,
    )
    run = {"setup": setup, "workload": workload.name, "load": load.name, **figures}
    if smartgate_http and before:
        hits, misses = _token_cache_hits(smartgate_http)
        total = (hits - before[0]) + (misses - before[1])
        run["token_cache_hit_ratio"] = round((hits - before[0]) / total, 4) if total else None
    bench.runs.append(run)
    bench.log(
        f"{SETUP_TITLES[setup]:28} {workload.name:20} {load.name:4} {figures['rps']:9.0f} req/s  "
        f"p50 {figures['p50']:6d} µs  p99 {figures['p99']:6d} µs  non-2xx {figures['non_2xx']}"
    )
    return run


def _drive(bench: Bench, setup: str, url: str, smartgate_http: str | None = None) -> None:
    """Warm up, then every applicable workload at every load against one running setup."""
    warm = write_requests(bench.workdir / "plan-warm.txt", [(SEARCH, "fixed")])
    run_wrk(url, THROUGHPUT, 1, warm, token=bench.fixed_token)
    offset = 0
    generic = report.is_generic(setup)
    for workload in bench.workloads:
        if generic and workload.name != "search_cached":
            continue
        if not generic and setup not in workload.setups:
            continue
        for load in bench.loads:
            run = _measure(bench, setup, workload, load, url, offset, smartgate_http)
            offset += run["requests"]


def _run_setup(bench: Bench, setup: str, fhir_upstream: str) -> None:
    envoy_port, admin_port = processes.free_port(), processes.free_port()
    url = f"http://127.0.0.1:{envoy_port}"
    with contextlib.ExitStack() as stack:
        smartgate_http: str | None = None
        if setup == "A":
            config = envoy_setups.no_authz_config(envoy_port, admin_port)
        elif setup == "B":
            config = envoy_setups.jwt_authn_config(
                envoy_port, admin_port, tokens.ISSUER, bench.audience, bench.keys.jwks()
            )
        elif setup.startswith("C-"):
            port = processes.free_port()
            stack.enter_context(processes.floor_server(setup[2:], port, bench.workdir))
            config = envoy_setups.ext_authz_config(envoy_port, admin_port, port)
        else:
            smartgate_http, config = _start_smartgate(bench, stack, setup, fhir_upstream, envoy_port, admin_port)
        stack.enter_context(processes.envoy(config, bench.workdir, f"envoy-{setup}"))
        _wait_for_allow(url, bench.fixed_token)
        _drive(bench, setup, url, smartgate_http)


def _start_smartgate(
    bench: Bench, stack: contextlib.ExitStack, setup: str, fhir_upstream: str, envoy_port: int, admin_port: int
) -> tuple[str, dict[str, Any]]:
    """Start smartgate for setups D, E, D-uds and F; return its HTTP address and the Envoy config in front."""
    workers = 2 if setup == "E" else 1
    grpc_port, http_port = processes.free_port_pair(), processes.free_port()
    socket = str(bench.workdir / "grpc.sock") if setup == "D-uds" else None
    sg_config = processes.smartgate_config(
        grpc_port, http_port, bench.audience, fhir_upstream, tokens.ISSUER, bench.workdir / "jwks.json", socket
    )
    verification = VERIFICATION_SETUPS.get(setup)
    if verification:
        sg_config["response_verification"] = {"mode": verification}
    stack.enter_context(processes.smartgate(sg_config, bench.workdir, workers))
    if verification:
        config = envoy_setups.upstream_config(envoy_port, admin_port, grpc_port, fhir_upstream, verification)
    else:
        config = envoy_setups.ext_authz_config(envoy_port, admin_port, grpc_port, workers, socket)
    return f"127.0.0.1:{http_port}", config


def _wait_for_allow(url: str, token: str, seconds: float = 20) -> None:
    """Envoy health-checks the authz cluster before using it: wait until a request is allowed."""
    deadline = time.monotonic() + seconds
    request = urllib.request.Request(url + SEARCH, headers={"Authorization": f"Bearer {token}"})  # noqa: S310
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), urllib.request.urlopen(request, timeout=2) as answer:  # noqa: S310
            if answer.status == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{url} never allowed the benchmark token")


def _pool_size(duration: float, smoke: bool) -> int:
    # enough distinct tokens for one smartgate process's c1 + c16 runs at ~3000 checks/s
    return 1500 if smoke else min(60_000, int(3000 * duration))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--duration", type=float, default=None, help="seconds per measured run (default 5)")
    parser.add_argument("--smoke", action="store_true", help="tiny runs, fewer setups and workloads (CI)")
    parser.add_argument(
        "--memory-tokens",
        type=int,
        default=None,
        help="distinct tokens for the memory workload (default 100000; smoke 1500; 0 skips)",
    )
    parser.add_argument(
        "--setups",
        default=None,
        help=f"comma-separated setups, for a targeted run (default: all; {','.join(ALL_SETUPS)})",
    )
    parser.add_argument("--workloads", default=None, help="comma-separated workloads to run (default: all)")
    args = parser.parse_args(argv)
    smoke: bool = args.smoke
    duration = args.duration or (1.0 if smoke else 5.0)
    memory_tokens = args.memory_tokens if args.memory_tokens is not None else (1500 if smoke else 100_000)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="smartgate-bench-") as tmp:
        workdir = Path(tmp)
        bench = Bench(
            out=out,
            workdir=workdir,
            duration=duration,
            loads=[LATENCY, THROUGHPUT],
            workloads=[
                w
                for w in WORKLOADS
                if (not smoke or w.name in SMOKE_WORKLOADS)
                and (args.workloads is None or w.name in args.workloads.split(","))
            ],
            setups=args.setups.split(",") if args.setups else (SMOKE_SETUPS if smoke else ALL_SETUPS),
            pool_size=_pool_size(duration, smoke),
        )
        _prepare(bench)
        fhir_port, fhir_admin = processes.free_port(), processes.free_port()
        stand_in = envoy_setups.fhir_stand_in_config(
            fhir_port, fhir_admin, MEMBERSHIP_PARAMS["Observation"], bench.audience
        )
        with processes.envoy(stand_in, workdir, "fhir-stand-in"):
            fhir_upstream = f"http://127.0.0.1:{fhir_port}/fhir"
            for setup in bench.setups:
                bench.log(f"setup {SETUP_TITLES[setup]}")
                _run_setup(bench, setup, fhir_upstream)
            memory = _memory(bench, memory_tokens, fhir_upstream, smoke)
        response_cost = [] if smoke else _response_cost()
        meta = {
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(started)),
            "smoke": smoke,
            "duration_seconds": duration,
            "cpus": _cpus(),
            "python": platform.python_version(),
            "elapsed_seconds": round(time.time() - started, 1),
            "token_pool_size": bench.pool_size,
        }
        raw = {"meta": meta, "runs": bench.runs, "memory": memory, "response_check": response_cost}
        (out / "results.json").write_text(json.dumps(raw, indent=2), encoding="utf-8")
        (out / "results.md").write_text(
            report.markdown(raw, SETUP_TITLES, {w.name: w.title for w in WORKLOADS}), encoding="utf-8"
        )
        report.chart(raw, SETUP_TITLES, out / "latency.png")
        report.yardstick_chart(raw, out / "busy-yardstick.png")
    print(
        f"results written to {out}/results.md, {out}/latency.png, {out}/busy-yardstick.png and {out}/results.json "
        f"({meta['elapsed_seconds']} s)"
    )
    failures = report.failures(raw, {w.name: w.deny_share for w in WORKLOADS})
    for failure in failures:
        print(f"CHECK FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


def _prepare(bench: Bench) -> None:
    bench.audience = "https://bench.smartgate.invalid/fhir"  # smartgate's fhir.base_url (never contacted)
    (bench.workdir / "jwks.json").write_text(json.dumps(bench.keys.jwks()), encoding="utf-8")
    bench.fixed_token = tokens.sign(bench.keys, "ES256", bench.audience)
    for alg in sorted({w.pool for w in bench.workloads if w.pool}):
        began = time.monotonic()
        pool = tokens.token_pool(bench.keys, alg, bench.audience, bench.pool_size)
        bench.pools[alg] = tokens.write_pool(pool, bench.workdir / f"tokens-{alg}.txt")
        bench.log(f"signed {len(pool)} {alg} tokens in {time.monotonic() - began:.1f} s")


def _memory(bench: Bench, count: int, fhir_upstream: str, smoke: bool) -> dict[str, Any] | None:
    if count <= 0:
        return None
    import token_memory

    bench.log(f"memory workload: {count} distinct ES256 tokens through Envoy to smartgate (1 worker)")
    result = token_memory.run(
        bench.workdir,
        bench.keys,
        bench.audience,
        fhir_upstream,
        count,
        cache_size=500 if smoke else None,
        log=bench.log,
    )
    return result


def _response_cost() -> list[dict[str, Any]]:
    import response_check_cost

    return response_check_cost.measure()


def _cpus() -> str:
    with contextlib.suppress(OSError):
        names = re.findall(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        return f"{len(names)} x {names[0]}" if names else "unknown"
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
