"""The Python floor: an ext_authz server that answers OK at once, with no work at all.

Two flavours, run as their own process like smartgate: ``aio`` (grpc.aio, as smartgate) and
``threaded`` (grpcio's thread-pool server). Both also serve grpc.health.v1, because the rendered
Envoy config health-checks the authorization cluster.

``--busy-us N`` (aio only) makes each Check busy-wait N µs of Python before it answers: the "busy
no-op" yardstick. Placing smartgate's throughput on the curve of N = 0, 50, 100, 200 reads its cost
in place as "equivalent busy µs" (GIL contention with gRPC's poller included, which a
micro-benchmark does not see).

Usage: python bench/floor_server.py --kind aio|threaded --port PORT [--busy-us N]
"""

from __future__ import annotations

import argparse
import asyncio
import time
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


class BusyAioFloor(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    """The aio floor holding the GIL for ``busy_us`` µs per Check, as a handler doing Python work would."""

    def __init__(self, busy_us: float) -> None:
        self._busy_seconds = busy_us / 1e6

    async def Check(self, request: Any, context: Any) -> Any:  # noqa: N802 - the gRPC method name
        until = time.perf_counter() + self._busy_seconds
        while time.perf_counter() < until:
            pass
        return _OK


class ThreadedFloor(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    def Check(self, request: Any, context: Any) -> Any:  # noqa: N802 - the gRPC method name
        return _OK


async def serve_aio(port: int, busy_us: float = 0) -> None:
    server = grpc.aio.server()
    servicer = BusyAioFloor(busy_us) if busy_us > 0 else AioFloor()
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(servicer, server)
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
    parser.add_argument("--busy-us", type=float, default=0, help="aio only: µs of busy-waiting per Check")
    args = parser.parse_args()
    if args.busy_us and args.kind != "aio":
        parser.error("--busy-us is for --kind aio")
    if args.kind == "aio":
        asyncio.run(serve_aio(args.port, args.busy_us))
    else:
        serve_threaded(args.port)


if __name__ == "__main__":
    main()
