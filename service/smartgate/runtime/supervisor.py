"""``smartgate serve`` with ``workers > 1``: N worker processes, one gRPC port each, and the
HTTP listener here, with the workers' metrics added up.

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

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

from smartgate.config.model import Config, ConfigError, grpc_address, load_config
from smartgate.runtime.http_listener import HttpListener, Response, Route, text
from smartgate.runtime.smart_configuration import CORS_HEADERS, SmartConfiguration

log = logging.getLogger("smartgate.supervisor")


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


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

    def __init__(self, config_path: str, workers: int, accepted_copy: str) -> None:
        self._config_path = config_path
        self._accepted_copy = accepted_copy
        self._workers = workers
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._stopping = False
        self._smart: SmartConfiguration | None = None
        self._client: httpx.AsyncClient | None = None
        self._config = self._accept()  # a ConfigError here stops start-up, as it does without workers

    def _spawn(self, index: int) -> None:
        command = [sys.executable, "-m", "smartgate", "serve", "--config", self._accepted_copy,
                   "--worker-index", str(index), "--no-http"]
        self._children[index] = subprocess.Popen(command)  # noqa: S603 - our own interpreter and module

    async def _watch(self) -> None:
        while not self._stopping:
            for index, child in list(self._children.items()):
                if child.poll() is not None and not self._stopping:
                    log.error("worker %d exited with %s; restarting", index, child.returncode)
                    multiprocess.mark_process_dead(child.pid)  # type: ignore[no-untyped-call]
                    await asyncio.sleep(1)
                    self._spawn(index)
            await asyncio.sleep(0.5)

    async def _all_serving(self) -> bool:
        if self._config.tls is not None:  # no client certificate here: liveness is all we can see
            return True
        addresses = [grpc_address(self._config, index) for index in range(self._workers)]
        return all(await asyncio.gather(*(worker_serving(address) for address in addresses)))

    def _alive(self) -> int:
        return sum(1 for child in self._children.values() if child.poll() is None)

    def _routes(self) -> dict[str, Route]:
        async def healthz() -> Response:
            return text("200 OK", "ok\n") if self._alive() else text("503 Service Unavailable", "no workers\n")

        async def readyz() -> Response:
            ready = self._alive() == self._workers and await self._all_serving()
            return text("200 OK", "ready\n") if ready else text("503 Service Unavailable", "not ready\n")

        async def metrics_page() -> Response:
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest(_registry()), {}

        routes: dict[str, Route] = {"/healthz": healthz, "/readyz": readyz, "/metrics": metrics_page}
        if self._smart is not None:
            async def smart_configuration() -> Response:
                smart = self._smart
                if smart is None:
                    return "404 Not Found", "application/json", b'{"error":"not configured"}', {}
                document = await smart.document()
                if document is None:
                    return "503 Service Unavailable", "application/json", b'{"error":"discovery unavailable"}', {}
                return "200 OK", "application/json", SmartConfiguration.encode(document), dict(CORS_HEADERS)

            routes["/.well-known/smart-configuration"] = smart_configuration
        return routes

    async def run(self) -> None:
        for index in range(self._workers):
            self._spawn(index)
        async with httpx.AsyncClient() as client:
            self._client = client
            self._smart = (SmartConfiguration(self._config.smart_configuration, client)
                           if self._config.smart_configuration else None)
            http = HttpListener(self._config.listen.http, self._routes())
            await http.start()
            watcher = asyncio.create_task(self._watch())
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGTERM, stop.set)
            loop.add_signal_handler(signal.SIGINT, stop.set)
            loop.add_signal_handler(signal.SIGHUP, self._reload)
            if getattr(sys, "_smartgate_early_hangup", False):
                self._reload()
            log.info("smartgate supervisor: %d workers, http %s", self._workers, self._config.listen.http)
            await stop.wait()
            self._stopping = True
            watcher.cancel()
            await http.stop()
            await asyncio.to_thread(self._stop_children)

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
            self._smart = (SmartConfiguration(config.smart_configuration, self._client)
                           if config.smart_configuration else None)
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


def run_supervisor(config_path: str, workers: int) -> None:
    """Run N workers. Sets PROMETHEUS_MULTIPROC_DIR for them (and this process) first."""
    directory = tempfile.mkdtemp(prefix="smartgate-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    accepted = tempfile.mkdtemp(prefix="smartgate-config-")
    try:
        with contextlib.suppress(KeyboardInterrupt):
            supervisor = Supervisor(config_path, workers, os.path.join(accepted, "accepted.yaml"))
            asyncio.run(supervisor.run())
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        shutil.rmtree(accepted, ignore_errors=True)
