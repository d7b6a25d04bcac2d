"""EXPERIMENT (bench only, not product code): smartgate's real decision pipeline served from
grpcio's thread-pool server instead of grpc.aio. Does it lift smartgate towards the threaded floor?

``serve`` mode (one process): an asyncio loop runs in a dedicated thread and owns everything that
does I/O (build_components, the JWKS load, the httpx client); grpcio's thread pool runs Check.
Each Check first drives ``authorizer.authorize(http)`` to completion in the gRPC thread with
``coro.send(None)`` and no event loop. While it runs, the thread's "running loop" is a probe that
raises ``NeedsLoop`` (a BaseException, so no ``except Exception`` in smartgate swallows it) the
moment the code asks for a loop (a look-up miss or a JWKS refresh creating a future, a
``gather`` of checks). If the coroutine raises NeedsLoop or suspends, it is closed and a NEW
coroutine for the same request runs on the loop (``run_coroutine_threadsafe(...).result()``).

Caveats (why this is an experiment):
- The first attempt may have had side effects before it gave up: a token-cache miss is counted
  twice (metrics and ``cache_misses``), and a coroutine closed while suspended runs its
  ``finally`` blocks in the gRPC thread.
- Without the probe, a plain ``send(None)`` would not suspend on a look-up miss: smartgate would
  raise "no running event loop" inside the coroutine and turn it into a deny (INTERNAL_ERROR or,
  in the verifier's JWKS path, TOKEN_MALFORMED) -- a wrong decision, not a fallback.
- A gRPC thread can still see a future the loop owns (an in-flight look-up or JWKS fetch of the
  same key) and ``asyncio.shield`` it from the wrong thread before suspending; rare, not safe.
- smartgate's caches (ExpiringCache: verified tokens, look-ups, introspection) are read and
  written from many threads; see bench/results/threaded-experiment.md.

``measure`` mode (default): the same harness as run_bench.py (setups C-aio, C-threaded, D and
T = this prototype, workload search_cached, c1 and c16) and prints the table for
bench/results/threaded-experiment.md (the conclusion there is written by hand).

Usage: python bench/threaded_experiment.py [--duration 5] [--threads 16]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Coroutine, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from smartgate.core.http import HttpRequest
from smartgate.core.reasons import Reason
from smartgate.envoy_glue.authz_service import Pipeline, answer, read_check_request
from smartgate.policy.decision import Decision
from smartgate.runtime.worker import Components, build_components
from smartgate.telemetry import metrics

log = logging.getLogger("threaded_experiment")
FALLBACK_TIMEOUT_SECONDS = 15.0


class NeedsLoop(BaseException):
    """The coroutine asked for an event loop: it must run on the real one."""


class _LoopProbe:
    """Stands in as the gRPC thread's running loop; any use of it means "needs the real loop"."""

    def __getattr__(self, name: str) -> Any:
        raise NeedsLoop(name)


_PROBE = _LoopProbe()


def run_without_loop(coroutine: Coroutine[Any, Any, Decision]) -> Decision | None:
    """The coroutine's result if it finishes without suspending or touching a loop, else None
    (the coroutine is then closed)."""
    asyncio.events._set_running_loop(_PROBE)  # type: ignore[arg-type]
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    except NeedsLoop:
        return None  # the coroutine ended with the exception; nothing left to close
    finally:
        asyncio.events._set_running_loop(None)
    coroutine.close()  # it suspended
    return None


class LoopThread:
    """An asyncio loop in a daemon thread: owns the components and all their I/O."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="asyncio-loop", daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, Any], timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


class ThreadedAuthorization(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    """authz_service.AuthorizationService.Check, synchronous, for grpcio's thread pool."""

    def __init__(self, pipeline: Pipeline, loop: LoopThread) -> None:
        self.pipeline = pipeline
        self._loop = loop
        self.fast = 0  # not locked: approximate counts are enough for the report
        self.fallbacks = 0

    def _decide(self, pipeline: Pipeline, http: HttpRequest) -> Decision:
        decision = run_without_loop(pipeline.authorizer.authorize(http))
        if decision is not None:
            self.fast += 1
            return decision
        self.fallbacks += 1
        try:
            result: Decision = self._loop.run(pipeline.authorizer.authorize(http), FALLBACK_TIMEOUT_SECONDS)
        except futures.TimeoutError:
            return Decision(Reason.INTERNAL_ERROR, "the decision timed out; the request is denied")
        return result

    def Check(self, request: external_auth_pb2.CheckRequest, context: Any) -> external_auth_pb2.CheckResponse:  # noqa: N802
        pipeline = self.pipeline
        started = time.perf_counter()
        http, unreadable = read_check_request(request)
        decision = unreadable if unreadable is not None else self._decide(pipeline, http)
        return answer(pipeline, http, decision, started)


async def _build(config: Any) -> Components:
    components = build_components(config)  # inside the loop's thread, as server.py requires
    await components.load_keys()
    return components


def serve(config_path: Path, port: int, threads: int) -> None:
    from smartgate.config.parse import load_config

    warnings.filterwarnings("ignore", message="coroutine .* was never awaited")  # gather stopped by the probe
    config = load_config(config_path)
    metrics.init_process_metrics()
    loop = LoopThread()
    components: Components = loop.run(_build(config), 30)
    if not components.ready():
        raise RuntimeError("the JWKS did not load")
    service = ThreadedAuthorization(components.pipeline, loop)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads))  # as floor_server.py
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(service, server)
    checker = health.HealthServicer()
    checker.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop(2).wait()
    verifier = components.authorizer._verifier
    print(
        json.dumps(
            {
                "fast": service.fast,
                "fallbacks": service.fallbacks,
                "token_cache_hits": verifier.cache_hits,
                "token_cache_misses": verifier.cache_misses,
            }
        ),
        file=sys.stderr,
        flush=True,
    )
    loop.run(components.http_client.aclose(), 5)
    loop.stop()


# --- measuring ---------------------------------------------------------------------------------

SETUPS = {
    "C-aio": "C floor (grpc.aio)",
    "C-threaded": "C floor (grpcio threads, 16)",
    "D": "D smartgate serve, 1 worker (grpc.aio)",
}


def _setups(thread_counts: list[int]) -> dict[str, str]:
    threaded = {f"T{n}": f"T prototype (grpcio {n} threads + loop thread)" for n in thread_counts}
    return {**SETUPS, **threaded}


def _others_running() -> list[str]:
    found = subprocess.run(["pgrep", "-fa", "pytest|wrk"], capture_output=True, text=True, check=False)  # noqa: S607
    return [line for line in found.stdout.splitlines() if line.strip() and "threaded_experiment" not in line]


def wait_until_quiet(say: Callable[[str], None], limit_seconds: float = 1200) -> None:
    deadline = time.monotonic() + limit_seconds
    while others := _others_running():
        if time.monotonic() > deadline:
            raise RuntimeError(f"other heavy processes kept running: {others}")
        say(f"waiting 30 s: {len(others)} other pytest/wrk processes ({others[0][:80]})")
        time.sleep(30)


@contextlib.contextmanager
def _authz_server(setup: str, workdir: Path, audience: str, fhir_upstream: str) -> Iterator[int]:
    import processes
    import tokens

    port = processes.free_port_pair()
    if setup.startswith("C-"):
        with processes.floor_server(setup[2:], port, workdir):
            yield port
        return
    http_port = processes.free_port()
    config = processes.smartgate_config(port, http_port, audience, fhir_upstream, tokens.ISSUER, workdir / "jwks.json")
    if setup == "D":
        with processes.smartgate(config, workdir, 1):
            yield port
        return
    path = workdir / "smartgate-threaded.yaml"
    path.write_text(json.dumps(config), encoding="utf-8")
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "serve",
        "--config",
        str(path),
        "--port",
        str(port),
        "--threads",
        setup[1:],
    ]
    ready = processes._grpc_serving(f"127.0.0.1:{port}")
    with processes.running(command, workdir / f"{setup}.log", ready, "threaded prototype", stdout_to_null=True):
        yield port


def measure(duration: float, thread_counts: list[int], wait: bool = True) -> int:
    import envoy_setups
    import processes
    import tokens
    from load import LATENCY, THROUGHPUT, run_wrk, write_requests
    from run_bench import SEARCH, _wait_for_allow

    from smartgate.fhir.compartment import MEMBERSHIP_PARAMS

    def say(message: str) -> None:
        print(f"[threaded-experiment {time.strftime('%H:%M:%S')}] {message}", flush=True)

    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="smartgate-threaded-") as tmp:
        workdir = Path(tmp)
        keys = tokens.new_keys()
        audience = "https://bench.smartgate.invalid/fhir"
        (workdir / "jwks.json").write_text(json.dumps(keys.jwks()), encoding="utf-8")
        token = tokens.sign(keys, "ES256", audience)
        plan = write_requests(workdir / "plan.txt", [(SEARCH, "fixed")])
        fhir_port, fhir_admin = processes.free_port(), processes.free_port()
        stand_in = envoy_setups.fhir_stand_in_config(fhir_port, fhir_admin, MEMBERSHIP_PARAMS["Observation"])
        with processes.envoy(stand_in, workdir, "fhir-stand-in"):
            for setup, title in _setups(thread_counts).items():
                envoy_port, admin_port = processes.free_port(), processes.free_port()
                url = f"http://127.0.0.1:{envoy_port}"
                with (
                    _authz_server(setup, workdir, audience, f"http://127.0.0.1:{fhir_port}/fhir") as port,
                    processes.envoy(
                        envoy_setups.ext_authz_config(envoy_port, admin_port, port), workdir, f"envoy-{setup}"
                    ),
                ):
                    _wait_for_allow(url, token)
                    run_wrk(url, THROUGHPUT, 1, plan, token=token)  # warm-up, as run_bench.py
                    for load in (LATENCY, THROUGHPUT):
                        if wait:
                            wait_until_quiet(say)
                        figures = run_wrk(url, load, duration, plan, token=token)
                        run = {
                            "setup": setup,
                            "title": title,
                            "load": load.name,
                            "rps": round(figures["rps"]),
                            "p50_ms": figures["p50"] / 1000,
                            "p99_ms": figures["p99"] / 1000,
                            "non_2xx": figures["non_2xx"],
                            "socket_errors": figures["socket_errors"],
                        }
                        runs.append(run)
                        say(
                            f"{title:44} {load.name:4} {run['rps']:6d} req/s  p50 {run['p50_ms']:6.2f} ms  "
                            f"p99 {run['p99_ms']:6.2f} ms  non-2xx {run['non_2xx']}"
                        )
        for count in thread_counts:
            threaded_log = (workdir / f"T{count}.log").read_text(encoding="utf-8", errors="replace")
            counters = next((x for x in reversed(threaded_log.splitlines()) if x.startswith("{")), "{}")
            say(f"T{count} counters at shutdown: {counters}")
    table = _table(runs)
    print(table)
    bad = [r for r in runs if r["non_2xx"] or r["socket_errors"]]
    return 1 if bad else 0


def _table(runs: list[dict[str, Any]]) -> str:
    lines = ["| setup | load | req/s | p50 ms | p99 ms | non-2xx |", "|---|---|---:|---:|---:|---:|"]
    lines += [
        f"| {r['title']} | {r['load']} | {r['rps']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['non_2xx']} |"
        for r in runs
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode")
    serving = sub.add_parser("serve", help="run the threaded prototype (used by measure)")
    serving.add_argument("--config", type=Path, required=True)
    serving.add_argument("--port", type=int, required=True)
    serving.add_argument("--threads", type=int, default=16)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--threads", type=int, nargs="+", default=[16], help="grpcio thread pool sizes for T")
    parser.add_argument("--no-wait", action="store_true", help="debug runs: do not wait for a quiet machine")
    args = parser.parse_args()
    if args.mode == "serve":
        logging.basicConfig(level=logging.WARNING)
        serve(args.config, args.port, args.threads)
        return 0
    return measure(args.duration, args.threads, wait=not args.no_wait)


if __name__ == "__main__":
    sys.exit(main())
