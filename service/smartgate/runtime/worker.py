"""Wire the stages together from a Config and run them.

One worker process runs the gRPC server (Authorization + grpc.health.v1), keeps the keys
fresh, and reloads the config on SIGHUP. With ``workers > 1`` a supervisor starts N worker
processes, each on its own port (``listen.grpc`` port + index, listed by Envoy as separate
endpoints so it balances requests, not connections), and serves the HTTP listener itself
with the workers' metrics added up (prometheus-client multiprocess mode).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
from envoy.service.auth.v3 import external_auth_pb2_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from smartgate.config.checks import UNIX_PREFIX
from smartgate.config.model import Config, TlsConfig, grpc_address
from smartgate.config.parse import ConfigError, load_config
from smartgate.envoy_glue.authz_service import AuthorizationService, Pipeline
from smartgate.envoy_glue.check_response import ResponseBuilder
from smartgate.envoy_glue.ext_proc import ResponseVerifier
from smartgate.fhir.compartment import bound_types
from smartgate.pipeline.audit_event import AuditEventLog
from smartgate.pipeline.authorizer import Authorizer
from smartgate.pipeline.decision_log import DecisionLog
from smartgate.pipeline.fhir_lookup import MembershipLookup
from smartgate.pipeline.public_routes import PublicRoutes
from smartgate.policy import PolicySettings
from smartgate.runtime.http_listener import HttpListener, Route
from smartgate.runtime.routes import http_routes
from smartgate.runtime.smart_configuration import SmartConfiguration
from smartgate.telemetry import metrics
from smartgate.tokens.dpop import DpopVerifier, ReplayCache
from smartgate.tokens.introspection import Introspector
from smartgate.tokens.jwks import JwksCache
from smartgate.tokens.sender_constraint import SenderConstraints
from smartgate.tokens.verifier import TokenVerifier

log = logging.getLogger("smartgate.server")
AUTHORIZATION_SERVICE = "envoy.service.auth.v3.Authorization"


@dataclass
class Components:
    pipeline: Pipeline
    jwks: list[JwksCache]
    http_client: httpx.AsyncClient

    def ready(self) -> bool:
        return all(cache.ready for cache in self.jwks)

    async def load_keys(self) -> None:
        await asyncio.gather(
            *(
                cache.refresh()
                for cache in self.jwks
                if not cache.issuer.introspection or cache.issuer.jwks_uri or cache.issuer.jwks_file
            )
        )

    @property
    def authorizer(self) -> Authorizer:
        return self.pipeline.authorizer

    @property
    def replay_cache(self) -> ReplayCache | None:
        dpop = self.authorizer.sender_constraints.dpop
        return dpop.replay_cache if dpop is not None else None

    async def close(self) -> None:
        """Release what these components opened: the HTTP client and the decision-log and
        audit files (a reload builds new ones; without this each reload leaked two handles)."""
        await self.http_client.aclose()
        # Closing a log writes out its queue and may wait on a stalled stream: never on the event loop.
        await asyncio.to_thread(self.pipeline.decision_log.close)
        await asyncio.to_thread(self.pipeline.audit_log.close)


def build_components(config: Config, replay_cache: ReplayCache | None = None) -> Components:
    """Build the decision path. Must be called inside a running event loop's thread. ``replay_cache``: the
    DPoP replay cache of the components being replaced (a reload), shared from now on."""
    client = httpx.AsyncClient(follow_redirects=False, limits=httpx.Limits(max_connections=100))
    issuers = {}
    caches = []
    for issuer in config.issuers:
        cache = JwksCache(issuer, config.jwks, client)
        issuers[issuer.issuer] = (issuer, cache)
        caches.append(cache)
    introspector = Introspector(list(config.issuers), client, config.fhir.base_url)
    verifier = TokenVerifier(issuers, config.tokens, config.fhir.base_url, introspector=introspector)
    authorizer = Authorizer(
        base_path=config.fhir.base_path,
        public_routes=PublicRoutes(config.fhir.base_path, config.public_routes),
        verifier=verifier,
        policy=policy_settings(config),
        lookup=MembershipLookup(config.fhir.upstream_url, config.fhir.lookup, client),
        max_token_bytes=config.tokens.max_token_bytes,
        sender_constraints=sender_constraints(config, replay_cache),
    )
    pipeline = Pipeline(
        authorizer=authorizer,
        responses=ResponseBuilder(
            config.headers,
            config.realm,
            hand_over_context=config.response_verification.mode != "off",
            dpop_algs=dpop_algorithms(config),
        ),
        decision_log=DecisionLog(config.decision_log),
        audit_log=AuditEventLog(config.audit.destination, config.fhir.base_url, config.audit.source_observer),
        dry_run=config.mode == "dry_run",
    )
    # Caches of issuers verified only by introspection never need keys.
    needed = [c for c in caches if c.issuer.introspection is None or c.issuer.jwks_uri or c.issuer.jwks_file]
    return Components(pipeline, needed, client)


def policy_settings(config: Config) -> PolicySettings:
    """The policy's view of the config: what the rules need, nothing they could do I/O with."""
    return PolicySettings(
        config.fhir.base_url,
        config.patient_closed_types,
        config.operations,
        responses_verified=config.response_verification.mode == "enforce",
        # dry_run logs what the look-up would decide: its allows hand nothing over
        reads_proven_by_response=config.mode != "dry_run",
        search_narrowing=config.search_narrowing,
        extra_binding_params=config.compartment.extra_binding_params,
        follow_patient_links=config.compartment.follow_patient_links,
    )


def dpop_algorithms(config: Config) -> tuple[str, ...]:
    """The DPoP proof algorithms accepted, or () when DPoP is off."""
    return config.dpop.algorithms if config.dpop.enabled else ()


def sender_constraints(config: Config, replay_cache: ReplayCache | None = None) -> SenderConstraints:
    """The binding rules: each worker has its own DPoP replay cache (README, "Sender-constrained tokens")."""
    dpop = (
        DpopVerifier(config.dpop, config.tokens.clock_skew_seconds, replay_cache=replay_cache)
        if config.dpop.enabled
        else None
    )
    required = frozenset(issuer.issuer for issuer in config.issuers if issuer.sender_constraint == "required")
    return SenderConstraints(config.fhir.base_url, required, dpop)


SOCKET_MODE = 0o660


def _let_the_group_connect(address: str) -> None:
    """A Unix socket is created under the umask (0755: only its owner may connect). Envoy runs as another
    user in the pod and shares the socket's group (the chart's fsGroup): owner and group read-write,
    nobody else."""
    if address.startswith(UNIX_PREFIX):
        Path(address.removeprefix(UNIX_PREFIX)).chmod(SOCKET_MODE)


def _credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(Path(tls.key_file).read_bytes(), Path(tls.cert_file).read_bytes())],
        root_certificates=Path(tls.client_ca_file).read_bytes() if tls.client_ca_file else None,
        require_client_auth=tls.client_ca_file is not None,
    )


def _response_stage(config: Config) -> tuple[object, ...]:
    """The settings the response verifier (built once, at start) and Envoy's ext_proc filter depend on."""
    # patient_closed_types is left out: a type closed or opened by a reload is decided by the new policy at
    # the request, and a verifier with the old list can only refuse more (it reads a closed type as foreign).
    return (config.response_verification, config.compartment, config.fhir.base_url, config.fhir.upstream_url)


class Worker:
    """One process's gRPC server, key refresher and config reloader."""

    def __init__(self, config: Config, config_path: str | None, worker_index: int, serve_http: bool) -> None:
        self.config = config
        self._config_path = config_path
        self._reload_lock = asyncio.Lock()  # one reload at a time: each swaps out the components it read
        self._index = worker_index
        self._serve_http = serve_http
        self._health = health_aio.HealthServicer()
        self.components = build_components(config)
        self._service = AuthorizationService(self.components.pipeline)
        self._smart = self._smart_configuration()

    def _smart_configuration(self) -> SmartConfiguration | None:
        """Built on the current components' HTTP client, so rebuilt on each reload (the old
        client is closed once the reload's grace period is over)."""
        settings = self.config.smart_configuration
        return (
            SmartConfiguration(settings, self.components.http_client, dpop_algs=dpop_algorithms(self.config))
            if settings
            else None
        )

    def _http_routes(self) -> dict[str, Route]:
        async def ready() -> bool:
            return self.components.ready()

        return http_routes(ready=ready, render_metrics=metrics.render_metrics, smart=lambda: self._smart)

    async def _set_serving(self, ready: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        await self._health.set("", status)
        await self._health.set(AUTHORIZATION_SERVICE, status)
        metrics.READY.set(1 if ready else 0)

    async def _keep_keys_fresh(self) -> None:
        """Load keys with backoff while an IdP is down, refresh them when they are older than
        the refresh interval, and keep the readiness and key-age gauges current."""
        delay = 1.0
        while True:
            components = self.components
            interval = self.config.jwks.refresh_interval_seconds
            stale = [cache for cache in components.jwks if not cache.ready or _age(cache) >= interval]
            if stale:
                await asyncio.gather(*(cache.refresh() for cache in stale))
            ready = components.ready()
            await self._set_serving(ready)
            for cache in components.jwks:
                metrics.observe_jwks_age(cache.issuer.issuer, cache.last_success_wall_time)
            if ready:
                delay = 1.0
                await asyncio.sleep(min(interval, 5.0))
            else:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def reload(self) -> None:
        if self._config_path is None:
            return
        async with self._reload_lock:
            old = await self._swap_in_reloaded_config()
        if old is not None:
            await asyncio.sleep(self.config.shutdown_grace_seconds)
            await old.close()

    async def _swap_in_reloaded_config(self) -> Components | None:
        """Load, check and swap in the config file; the replaced components, or None when it was rejected."""
        assert self._config_path is not None
        try:
            new_config = load_config(self._config_path)
        except ConfigError as exc:
            log.error("config reload rejected, keeping the current config: %s", exc)
            return None
        if _response_stage(new_config) != _response_stage(self.config):
            # The response verifier and Envoy's ext_proc filter were built from these: a policy that trusts
            # responses to be checked (enforce) must never run in front of a verifier that does not.
            log.error(
                "config reload rejected, keeping the current config: response_verification, compartment "
                "and the fhir addresses change only on restart"
            )
            return None
        if new_config.listen != self.config.listen or new_config.workers != self.config.workers:
            log.warning("listen addresses and workers change only on restart")
        old = self.components
        fresh = build_components(new_config, replay_cache=old.replay_cache)  # jtis stay refused across it
        await fresh.load_keys()
        if not fresh.ready():
            log.error("config reload rejected: the new issuers' keys are unavailable")
            await fresh.close()
            return None
        self.config, self.components = new_config, fresh
        self._service.pipeline = fresh.pipeline  # atomic swap: each Check uses one pipeline
        self._smart = self._smart_configuration()
        log.info("config reloaded")
        return old

    async def run(self) -> None:
        config = self.config
        metrics.init_process_metrics()
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(self._service, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        verification = config.response_verification
        if verification.mode != "off":
            external_processor_pb2_grpc.add_ExternalProcessorServicer_to_server(
                ResponseVerifier(
                    verification.mode,
                    verification.max_body_bytes,
                    config.fhir.base_url,
                    config.patient_closed_types,
                    lambda entry: self.components.pipeline.decision_log.write(entry),
                    follow_patient_links=config.compartment.follow_patient_links,
                    membership=bound_types(config.compartment.extra_binding_params).membership,
                    upstream_base_url=config.fhir.upstream_url,
                ),
                server,
            )
        await self._set_serving(False)
        address = grpc_address(config, self._index)
        port = (
            server.add_secure_port(address, _credentials(config.tls))
            if config.tls
            else server.add_insecure_port(address)
        )
        if port == 0:
            raise OSError(f"cannot listen on {address}")
        _let_the_group_connect(address)
        http: HttpListener | None = None
        if self._serve_http:
            http = HttpListener(config.listen.http, self._http_routes())
            await http.start()
        await server.start()
        refresher = asyncio.create_task(self._keep_keys_fresh())
        log.info(
            "smartgate worker %d listening: grpc %s%s",
            self._index,
            address,
            f", http {config.listen.http}" if http else "",
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        reloads: set[asyncio.Task[None]] = set()

        def start_reload() -> None:
            task = asyncio.ensure_future(self.reload())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, start_reload)
        if getattr(sys, "_smartgate_early_hangup", False):  # a SIGHUP came during start-up: honour it now
            sys._smartgate_early_hangup = False  # type: ignore[attr-defined]
            start_reload()
        await stop.wait()
        log.info("shutting down: finishing in-flight checks (grace %.1fs)", config.shutdown_grace_seconds)
        await self._health.enter_graceful_shutdown()
        refresher.cancel()
        if http is not None:
            await http.stop()
        await server.stop(grace=config.shutdown_grace_seconds)
        await self.components.close()


def _age(cache: JwksCache) -> float:
    return time.time() - (cache.last_success_wall_time or 0.0)


async def serve(config: Config, config_path: str | None = None, worker_index: int = 0, serve_http: bool = True) -> None:
    await Worker(config, config_path, worker_index, serve_http).run()


def run_worker(config: Config, config_path: str | None, worker_index: int, serve_http: bool) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(config, config_path, worker_index, serve_http))
