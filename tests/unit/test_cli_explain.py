"""``smartgate explain``: one request decided without Envoy, printed with its reason and headers.

The CLI runs in-process through ``smartgate.cli.main(argv)``. The issuer's keys come from a local
``jwks_file`` written here; compartment look-ups go to the demo FHIR server on a free loopback port,
so nothing leaves the machine.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec

from smartgate.cli import main
from smartgate.dev.demo.upstream import start_upstream
from tests.support.ports import free_port

from .token_helpers import b64url_json

pytestmark = pytest.mark.usefixtures("cli_isolation")

ISSUER = "https://idp.explain.test"
BASE_URL = "https://fhir.explain.test/fhir"
KID = "explain-es256"


@dataclass(frozen=True)
class ExplainWorld:
    config: Path
    key: ec.EllipticCurvePrivateKey

    def token(self, patient: str = "123", scope: str = "launch/patient patient/*.rs") -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": BASE_URL,
            "sub": "user-1",
            "client_id": "app-1",
            "scope": scope,
            "patient": patient,
            "iat": now,
            "exp": now + 600,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self.key, algorithm="ES256", headers={"kid": KID, "typ": "at+jwt"})


@dataclass(frozen=True)
class Explained:
    code: int
    result: dict[str, Any]
    output: str  # everything the command wrote (stdout, stderr, log records)


@pytest.fixture(scope="module")
def fhir_upstream() -> Iterator[str]:
    server = start_upstream("127.0.0.1", free_port())
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/fhir"
    finally:
        server.shutdown()
        server.server_close()


def write_config(directory: Path, upstream_url: str, key: ec.EllipticCurvePrivateKey) -> Path:
    public_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    public_jwk.update({"kid": KID, "alg": "ES256", "use": "sig"})
    jwks_file = directory / "jwks.json"
    jwks_file.write_text(json.dumps({"keys": [public_jwk]}), encoding="utf-8")
    config = directory / "smartgate.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "fhir": {"base_url": BASE_URL, "upstream_url": upstream_url},
                "issuers": [{"issuer": ISSUER, "jwks_file": str(jwks_file)}],
                "decision_log": "off",
            }
        ),
        encoding="utf-8",
    )
    return config


@pytest.fixture
def world(tmp_path: Path, fhir_upstream: str) -> ExplainWorld:
    key = ec.generate_private_key(ec.SECP256R1())
    return ExplainWorld(write_config(tmp_path, fhir_upstream, key), key)


@pytest.fixture
def explain(capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> Any:
    def run(config: Path, url: str, token: str | None = None, method: str = "GET") -> Explained:
        argv = ["explain", "--config", str(config), "--method", method, "--url", url]
        if token is not None:
            argv += ["--token", token]
        code = main(argv)
        captured = capsys.readouterr()
        return Explained(code, json.loads(captured.out), captured.out + captured.err + caplog.text)

    return run


def tampered(token: str) -> str:
    """The same signature over a payload naming another patient."""
    header, _payload, signature = token.split(".")
    claims = jwt.decode(token, options={"verify_signature": False})
    claims["patient"] = "456"
    return f"{header}.{b64url_json(claims)}.{signature}"


def test_an_allowed_search_prints_allow_its_reason_and_the_headers_to_inject(world: ExplainWorld, explain: Any) -> None:
    outcome = explain(world.config, "/fhir/Observation?patient=123", world.token())
    assert outcome.code == 0
    assert outcome.result["decision"] == "allow"
    assert outcome.result["reason"] == "allowed_compartment_search"
    assert outcome.result["status"] == 200
    assert outcome.result["headers_set"] == {
        "x-smart-patient": "123",
        "x-smart-scope": "launch/patient patient/*.rs",
        "x-smart-client-id": "app-1",
        "x-smart-subject": "user-1",
        "x-smart-issuer": ISSUER,
    }
    # No fhirUser claim: a spoofed x-smart-fhir-user must still be stripped.
    assert "x-smart-fhir-user" in outcome.result["headers_removed"]


def test_another_patient_prints_deny_with_the_compartment_reason_and_exits_1(world: ExplainWorld, explain: Any) -> None:
    outcome = explain(world.config, "/fhir/Observation?patient=456", world.token(patient="123"))
    assert outcome.code == 1
    assert outcome.result["decision"] == "deny"
    assert outcome.result["reason"] == "compartment_other_patient"
    assert outcome.result["status"] == 403
    assert "headers_set" not in outcome.result


def test_a_tampered_token_prints_the_token_reason(world: ExplainWorld, explain: Any) -> None:
    outcome = explain(world.config, "/fhir/Observation?patient=456", tampered(world.token()))
    assert outcome.code == 1
    assert outcome.result["decision"] == "deny"
    assert outcome.result["reason"] == "token_bad_signature"
    assert outcome.result["status"] == 401
    assert outcome.result["response_headers"]["www-authenticate"].startswith("Bearer")


def test_no_token_prints_token_missing(world: ExplainWorld, explain: Any) -> None:
    outcome = explain(world.config, "/fhir/Observation?patient=123")
    assert (outcome.code, outcome.result["reason"], outcome.result["status"]) == (1, "token_missing", 401)


@pytest.mark.parametrize(
    ("url", "tamper"),
    [
        ("/fhir/Observation?patient=123", False),
        ("/fhir/Observation?patient=456", False),
        ("/fhir/Observation?patient=123", True),
    ],
    ids=["allowed", "denied", "tampered"],
)
def test_the_token_never_appears_in_the_output(world: ExplainWorld, explain: Any, url: str, tamper: bool) -> None:
    token = tampered(world.token()) if tamper else world.token()
    outcome = explain(world.config, url, token)
    for part in token.split("."):
        assert part not in outcome.output
    assert token not in outcome.output


def test_a_read_by_id_is_allowed_when_the_fhir_server_finds_it_in_the_compartment(
    world: ExplainWorld, explain: Any
) -> None:
    outcome = explain(world.config, "/fhir/Observation/obs-123-a", world.token())
    assert (outcome.code, outcome.result["decision"], outcome.result["reason"]) == (
        0,
        "allow",
        "allowed_compartment_member",
    )
    assert outcome.result["headers_set"]["x-smart-patient"] == "123"


def test_a_read_by_id_of_another_patients_resource_is_not_in_compartment(world: ExplainWorld, explain: Any) -> None:
    outcome = explain(world.config, "/fhir/Observation/obs-456-a", world.token())
    assert (outcome.code, outcome.result["decision"], outcome.result["reason"], outcome.result["status"]) == (
        1,
        "deny",
        "not_in_compartment",
        403,
    )


def test_a_read_by_id_with_the_fhir_server_down_is_lookup_failed(tmp_path: Path, explain: Any) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    config = write_config(tmp_path, f"http://127.0.0.1:{free_port()}/fhir", key)  # nothing listens there
    outcome = explain(config, "/fhir/Observation/obs-123-a", ExplainWorld(config, key).token())
    assert (outcome.code, outcome.result["decision"], outcome.result["reason"], outcome.result["status"]) == (
        1,
        "deny",
        "lookup_failed",
        503,
    )
