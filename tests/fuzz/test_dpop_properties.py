"""The DPoP-bound token of the fuzz world through the real Check path: allowed only with a fresh proof
that verifies, by the client's key, for this method, URL and token; and the oracle knows the rule."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from envoy.service.auth.v3 import external_auth_pb2
from fuzz.check_target import CheckTarget
from fuzz.check_world import BASE_PATH, NOW, CheckWorld, b64url, check_request, dpop_proof, sign
from fuzz.decision_oracle import decision_problem
from google.rpc import code_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.fuzz

PROPERTY = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
PATHS = [
    f"{BASE_PATH}/Observation?patient=alice7",
    f"{BASE_PATH}/Patient/alice7",
    f"{BASE_PATH}/Condition?patient=alice7",
]
THIEF = ec.derive_private_key(0x7E1EF_0003, ec.SECP256R1())


def _allowed(target: CheckTarget, path: str, headers: dict[str, str], method: str = "GET") -> bool:
    kind: str | None = target.judge(check_request(path, method, headers)).WhichOneof("http_response")
    return kind == "ok_response"


def _defective(world: CheckWorld, defect: str, path: str) -> dict[str, str]:
    """Headers for the bound token with one defect of its proof of possession."""
    token = world.tokens["alice-dpop"]
    headers = {"authorization": f"DPoP {token}", "dpop": dpop_proof("GET", path, token)}
    if defect == "no-proof":
        del headers["dpop"]
    elif defect == "bearer-scheme":
        headers["authorization"] = f"Bearer {token}"
    elif defect == "thief-key":
        headers["dpop"] = dpop_proof("GET", path, token, key=THIEF)  # the client's jwk, another key's signature
    elif defect == "other-method":
        headers["dpop"] = dpop_proof("POST", path, token)
    elif defect == "other-path":
        headers["dpop"] = dpop_proof("GET", f"{BASE_PATH}/Patient/bob9", token)
    elif defect == "query-in-htu":
        headers["dpop"] = dpop_proof("GET", path, token, htu="https://fhir.example.org" + path + "?x=1")
    elif defect == "stale":
        headers["dpop"] = dpop_proof("GET", path, token, iat=NOW - 3600)
    elif defect == "future":
        headers["dpop"] = dpop_proof("GET", path, token, iat=NOW + 3600)
    elif defect == "other-token":
        headers["dpop"] = dpop_proof("GET", path, token, ath=b64url(hashlib.sha256(b"another").digest()))
    elif defect == "two-proofs":
        headers["dpop"] = f"{headers['dpop']},{dpop_proof('GET', path, token)}"
    elif defect == "wrong-typ":
        headers["dpop"] = sign({"jti": "x", "htm": "GET", "htu": path, "iat": NOW}, {"alg": "ES256", "typ": "jwt"})
    return headers


DEFECTS = [
    "no-proof",
    "bearer-scheme",
    "thief-key",
    "other-method",
    "other-path",
    "query-in-htu",
    "stale",
    "future",
    "other-token",
    "two-proofs",
    "wrong-typ",
]


def test_the_bound_token_with_a_fresh_valid_proof_is_allowed(target: CheckTarget, world: CheckWorld) -> None:
    """The baseline the other properties perturb (the oracle verifies the proof independently)."""
    path = PATHS[0]
    token = world.tokens["alice-dpop"]
    assert _allowed(target, path, {"authorization": f"DPoP {token}", "dpop": dpop_proof("GET", path, token)})


@PROPERTY
@given(defect=st.sampled_from(DEFECTS), path=st.sampled_from(PATHS))
def test_the_bound_token_is_never_allowed_without_a_valid_proof(
    target: CheckTarget, world: CheckWorld, defect: str, path: str
) -> None:
    assert not _allowed(target, path, _defective(world, defect, path))


@PROPERTY
@given(path=st.sampled_from(PATHS))
def test_a_proof_is_never_accepted_twice(target: CheckTarget, world: CheckWorld, path: str) -> None:
    token = world.tokens["alice-dpop"]
    headers = {"authorization": f"DPoP {token}", "dpop": dpop_proof("GET", path, token)}
    assert _allowed(target, path, headers)
    assert not _allowed(target, path, headers)


def test_the_oracle_flags_an_allow_of_the_bound_token_without_a_proof(world: CheckWorld) -> None:
    """The oracle learned the rule: an allow resting on a bound token needs a proof that verifies."""
    request = check_request(PATHS[0], "GET", {"authorization": f"Bearer {world.tokens['alice-dpop']}"})
    allow = external_auth_pb2.CheckResponse(status={"code": code_pb2.OK}, ok_response={})
    problem = decision_problem(request, allow)
    assert problem is not None and "DPoP-bound" in problem
