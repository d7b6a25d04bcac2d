"""One fuzz input through the real Check path, judged by the oracle.

Input format: bytes starting with ``S`` are structured (the rest drives a FuzzedDataProvider,
see ``structured_request``); anything else is a serialized ``envoy.service.auth.v3.CheckRequest``
(bytes that do not parse are skipped: Envoy's gRPC layer never delivers them).
"""

from __future__ import annotations

from envoy.service.auth.v3 import external_auth_pb2
from google.protobuf.message import DecodeError

from fuzz.check_world import TOKEN_SPECS, CheckWorld
from fuzz.decision_oracle import decision_problem
from fuzz.structured_request import DataProvider, build_structured

STRUCTURED = b"S"


class InvariantBrokenError(AssertionError):
    """A CheckResponse broke an invariant: a fuzzing crash and a failing regression test."""


class CheckTarget:
    def __init__(self, world: CheckWorld) -> None:
        self.world = world
        self.tokens = [world.tokens[spec.name] for spec in TOKEN_SPECS]
        self.patients = [spec.patient for spec in TOKEN_SPECS]
        self.bound = tuple(spec.bound for spec in TOKEN_SPECS)
        self.allowed = 0
        self.denied = 0

    def request_for(self, data: bytes) -> external_auth_pb2.CheckRequest | None:
        if data.startswith(STRUCTURED):
            import atheris  # the provider; imported late so the oracle works without instrumentation

            provider: DataProvider = atheris.FuzzedDataProvider(data[1:])
            return build_structured(provider, self.tokens, self.patients, self.bound)
        try:
            return external_auth_pb2.CheckRequest.FromString(data)
        except DecodeError:
            return None

    def run(self, data: bytes) -> None:
        request = self.request_for(data)
        if request is not None:
            self.judge(request)

    def judge(self, request: external_auth_pb2.CheckRequest) -> external_auth_pb2.CheckResponse:
        response = self.world.check(request)
        problem = decision_problem(request, response)
        if problem is not None:
            raise InvariantBrokenError(f"{problem}\nrequest: {request}\nresponse: {response}")
        if response.WhichOneof("http_response") == "ok_response":
            self.allowed += 1
        else:
            self.denied += 1
        return response
