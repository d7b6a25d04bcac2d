"""Wire the stages together from a Config and run the gRPC and HTTP listeners."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass

import grpc
import httpx
from envoy.service.auth.v3 import external_auth_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from smartgate.authorizer import Authorizer
from smartgate.authz_service import AuthorizationService
from smartgate.config import Config
from smartgate.decision_log import DecisionLog
from smartgate.health_http import HealthHttpServer
from smartgate.jwks_cache import JwksCache
from smartgate.membership import MembershipLookup
from smartgate.policy import PolicySettings
from smartgate.public_routes import PublicRoutes
from smartgate.response import ResponseBuilder
from smartgate.verifier import TokenVerifier

log = logging.getLogger("smartgate.server")
AUTHORIZATION_SERVICE = "envoy.service.auth.v3.Authorization"


@dataclass
class Components:
    authorizer: Authorizer
    jwks: list[JwksCache]
    http_client: httpx.AsyncClient

    def ready(self) -> bool:
        return all(cache.ready for cache in self.jwks)

    async def load_keys(self) -> None:
        await asyncio.gather(*(cache.refresh() for cache in self.jwks))


def build_components(config: Config) -> Components:
    """Build the decision path. Must be called inside a running event loop's thread."""
    client = httpx.AsyncClient(follow_redirects=False, limits=httpx.Limits(max_connections=100))
    issuers = {}
    caches = []
    for issuer in config.issuers:
        cache = JwksCache(issuer, config.jwks, client)
        issuers[issuer.issuer] = (issuer, cache)
        caches.append(cache)
    verifier = TokenVerifier(issuers, config.tokens, config.fhir.base_url)
    authorizer = Authorizer(
        base_path=config.fhir.base_path,
        public_routes=PublicRoutes(config.fhir.base_path, config.public_routes),
        verifier=verifier,
        policy=PolicySettings(config.fhir.base_url, config.patient_closed_types),
        lookup=MembershipLookup(config.fhir.upstream_url, config.fhir.lookup, client),
        max_token_bytes=config.tokens.max_token_bytes,
    )
    return Components(authorizer, caches, client)


async def _keep_keys_fresh(components: Components, config: Config, health: health_aio.HealthServicer) -> None:
    """Load keys at start with backoff while an IdP is down, then refresh them periodically."""
    delay = 1.0
    while True:
        await components.load_keys()
        ready = components.ready()
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        await health.set("", status)
        await health.set(AUTHORIZATION_SERVICE, status)
        if ready:
            delay = 1.0
            await asyncio.sleep(config.jwks.refresh_interval_seconds)
        else:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)


async def serve(config: Config) -> None:
    components = build_components(config)
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    responses = ResponseBuilder(config.headers, config.realm)
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(
        AuthorizationService(components.authorizer, responses, DecisionLog(config.decision_log)), server
    )
    health = health_aio.HealthServicer()
    await health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    await health.set(AUTHORIZATION_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    if server.add_insecure_port(config.listen.grpc) == 0:
        raise OSError(f"cannot listen on {config.listen.grpc}")
    http = HealthHttpServer(config.listen.http, components.ready)
    await server.start()
    await http.start()
    refresher = asyncio.create_task(_keep_keys_fresh(components, config, health))
    log.info("smartgate listening: grpc %s, http %s", config.listen.grpc, config.listen.http)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await health.enter_graceful_shutdown()
    refresher.cancel()
    await http.stop()
    await server.stop(grace=5)
    await components.http_client.aclose()
