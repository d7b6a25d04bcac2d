"""``smartgate serve`` with ``workers > 1``: N worker processes, one gRPC port each, and the
HTTP listener here, with the workers' metrics added up.

A dead worker is restarted after a back-off that doubles while it keeps crashing soon after
start; after too many such crashes in a row the supervisor stops every worker and exits with
``EXIT_CRASH_LOOP``, so that Kubernetes restarts the pod (see ``runtime.restart_policy``).

Must not import ``smartgate.telemetry.metrics``: a metric created in this process would join the
multiprocess aggregates (an unset readiness gauge here would read as "not ready").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from smartgate.config.model import Config, grpc_address
from smartgate.config.parse import ConfigError, load_config
from smartgate.runtime import metric_files
from smartgate.runtime.http_listener import HttpListener, Route
from smartgate.runtime.restart_policy import RestartPolicy, WorkerRestarts
from smartgate.runtime.routes import http_routes
from smartgate.runtime.smart_configuration import SmartConfiguration

log = logging.getLogger("smartgate.supervisor")

EXIT_CRASH_LOOP = 70  # sysexits EX_SOFTWARE: a worker kept crashing soon after start
WATCH_INTERVAL_SECONDS = 0.5


async def worker_serving(address: str, timeout: float = 0.5) -> bool:
    """Ask one worker's grpc.health.v1 service whether it is SERVING."""
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
    except grpc.RpcError:
        return False
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


class Supervisor:
    """Workers read the last config the supervisor accepted (a private copy), never the operator's file
    directly: a worker restarted after a rejected reload starts with the config the others run."""

    def __init__(
        self,
        config_path: str,
        workers: int,
        accepted_copy: str,
        *,
        metrics_dir: str | None = None,
        restart_policy: RestartPolicy | None = None,
    ) -> None:
        self._config_path = config_path
        self._accepted_copy = accepted_copy
        self._workers = workers
        self._metrics_dir = metrics_dir or os.environ["PROMETHEUS_MULTIPROC_DIR"]
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        policy = restart_policy or RestartPolicy()
        self._restarts = {index: WorkerRestarts(policy) for index in range(workers)}
        self._restart_due: dict[int, float] = {}  # worker index -> monotonic time of its restart
        self._stop = asyncio.Event()
        self._gave_up = False
        self._stopping = False
        self._smart: SmartConfiguration | None = None
        self._client: httpx.AsyncClient | None = None
        self._config = self._accept()  # a ConfigError here stops start-up, as it does without workers

    def _spawn(self, index: int) -> None:
        command = [
            sys.executable,
            "-m",
            "smartgate",
            "serve",
            "--config",
            self._accepted_copy,
            "--worker-index",
            str(index),
            "--no-http",
        ]
        self._children[index] = subprocess.Popen(command)  # noqa: S603 - our own interpreter and module
        self._restarts[index].started(time.monotonic())

    async def _watch(self) -> None:
        while not self._stopping:
            now = time.monotonic()
            for index, child in list(self._children.items()):
                if self._stopping:
                    break
                due = self._restart_due.get(index)
                if due is not None:
                    if now >= due:
                        del self._restart_due[index]
                        self._spawn(index)
                elif child.poll() is not None:
                    self._worker_died(index, child, now)
            await asyncio.sleep(WATCH_INTERVAL_SECONDS)

    def _worker_died(self, index: int, child: subprocess.Popen[bytes], now: float) -> None:
        try:
            metric_files.retire_process(self._metrics_dir, child.pid)
        except (OSError, RuntimeError):  # a damaged metric file must not stop the restarts
            log.exception("could not tidy the metric files of worker %d (pid %d)", index, child.pid)
        delay = self._restarts[index].crashed(now)
        if delay is None:
            log.error(
                "worker %d exited with %s, %d quick crashes in a row; stopping all workers so that the "
                "pod is restarted",
                index,
                child.returncode,
                self._restarts[index].quick_crashes,
            )
            self._gave_up = self._stopping = True  # no more restarts, not even ones already due
            self._stop.set()
            return
        log.error("worker %d exited with %s; restarting in %.1fs", index, child.returncode, delay)
        self._restart_due[index] = now + delay

    async def _all_serving(self) -> bool:
        if self._config.tls is not None:  # no client certificate here: liveness is all we can see
            return True
        addresses = [grpc_address(self._config, index) for index in range(self._workers)]
        return all(await asyncio.gather(*(worker_serving(address) for address in addresses)))

    def _alive(self) -> int:
        return sum(1 for child in self._children.values() if child.poll() is None)

    def _routes(self) -> dict[str, Route]:
        async def alive() -> bool:
            return self._alive() > 0

        async def ready() -> bool:
            return self._alive() == self._workers and await self._all_serving()

        return http_routes(
            ready=ready,
            alive=alive,
            smart=lambda: self._smart,
            render_metrics=lambda: metric_files.render(self._metrics_dir),
        )

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT (exit status 0) or a crash loop (``EXIT_CRASH_LOOP``)."""
        for index in range(self._workers):
            self._spawn(index)
        async with httpx.AsyncClient() as client:
            self._client = client
            self._smart = (
                SmartConfiguration(self._config.smart_configuration, client)
                if self._config.smart_configuration
                else None
            )
            http = HttpListener(self._config.listen.http, self._routes())
            await http.start()
            watcher = asyncio.create_task(self._watch())
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGTERM, self._stop.set)
            loop.add_signal_handler(signal.SIGINT, self._stop.set)
            loop.add_signal_handler(signal.SIGHUP, self._reload)
            if getattr(sys, "_smartgate_early_hangup", False):
                self._reload()
            log.info("smartgate supervisor: %d workers, http %s", self._workers, self._config.listen.http)
            await self._stop.wait()
            self._stopping = True
            watcher.cancel()
            await http.stop()
            await asyncio.to_thread(self._stop_children)
        return EXIT_CRASH_LOOP if self._gave_up else 0

    def _accept(self) -> Config:
        """Copy the operator's file once, validate that copy, and only then make it the workers' config:
        what the workers read is exactly what was validated, even if the file changes meanwhile."""
        staged = f"{self._accepted_copy}.new"
        shutil.copyfile(self._config_path, staged)
        try:
            config = load_config(staged)
        except ConfigError:
            os.unlink(staged)
            raise
        os.replace(staged, self._accepted_copy)
        return config

    def _reload(self) -> None:
        """SIGHUP: check the operator's file here; only a valid one reaches the workers (as the new copy)."""
        try:
            config = self._accept()
        except ConfigError as exc:
            log.error("config reload rejected, keeping the current config: %s", exc)
            return
        self._config = config
        if self._client is not None:
            self._smart = (
                SmartConfiguration(config.smart_configuration, self._client) if config.smart_configuration else None
            )
        log.info("config accepted by the supervisor; reloading %d workers", len(self._children))
        for child in self._children.values():
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGHUP)

    def _stop_children(self) -> None:
        for child in self._children.values():
            with contextlib.suppress(ProcessLookupError):
                child.terminate()
        for child in self._children.values():
            try:
                child.wait(timeout=self._config.shutdown_grace_seconds + 5)
            except subprocess.TimeoutExpired:
                child.kill()


def run_supervisor(config_path: str, workers: int, restart_policy: RestartPolicy | None = None) -> None:
    """Run N workers. Sets PROMETHEUS_MULTIPROC_DIR for them (and this process) first.
    Exits the process with ``EXIT_CRASH_LOOP`` when it gave up on a crash-looping worker."""
    directory = tempfile.mkdtemp(prefix="smartgate-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    accepted = tempfile.mkdtemp(prefix="smartgate-config-")
    exit_status = 0
    try:
        with contextlib.suppress(KeyboardInterrupt):
            supervisor = Supervisor(
                config_path,
                workers,
                os.path.join(accepted, "accepted.yaml"),
                metrics_dir=directory,
                restart_policy=restart_policy,
            )
            exit_status = asyncio.run(supervisor.run())
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        shutil.rmtree(accepted, ignore_errors=True)
    if exit_status:
        sys.exit(exit_status)
