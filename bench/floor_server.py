"""The Python floor: an ext_authz server that answers OK at once, with no work at all.

Two flavours, run as their own process like smartgate: ``aio`` (grpc.aio, as smartgate) and
``threaded`` (grpcio's thread-pool server). Both also serve grpc.health.v1, because the rendered
Envoy config health-checks the authorization cluster.

Usage: python bench/floor_server.py --kind aio|threaded --port PORT
"""

from __future__ import annotations

import argparse
import asyncio
from concurrent import futures
from typing import Any

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.rpc import code_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

_OK = external_auth_pb2.CheckResponse(
    status=status_pb2.Status(code=code_pb2.OK), ok_response=external_auth_pb2.OkHttpResponse()
)


class AioFloor(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    async def Check(self, request: Any, context: Any) -> Any:  # noqa: N802 - the gRPC method name
        return _OK


class ThreadedFloor(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    def Check(self, request: Any, context: Any) -> Any:  # noqa: N802 - the gRPC method name
        return _OK


async def serve_aio(port: int) -> None:
    server = grpc.aio.server()
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(AioFloor(), server)
    checker = health_aio.HealthServicer()
    await checker.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def serve_threaded(port: int) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(ThreadedFloor(), server)
    checker = health.HealthServicer()
    checker.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kind", choices=["aio", "threaded"], required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    if args.kind == "aio":
        asyncio.run(serve_aio(args.port))
    else:
        serve_threaded(args.port)


if __name__ == "__main__":
    main()
