"""A real SMART app: the SMART JavaScript client library (npm ``fhirclient``, its Node entry point,
``node/smart-app.mjs``) does a standalone launch against the e2e oidc-provider, discovering it from
smartgate's ``/.well-known/smart-configuration`` through Envoy (iss = the FHIR base behind Envoy),
then reads the Patient and searches the Observations through Envoy with the token it got."""

from __future__ import annotations

import json
import subprocess
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from .components import NODE_BINARY, NODE_DIR
from .conftest import E2EStack

pytestmark = pytest.mark.e2e

SCOPE = "openid fhirUser launch/patient patient/*.rs"


def _launch(stack: E2EStack, user: str, client_id: str = "smart-rs256") -> dict[str, Any]:
    result = subprocess.run(
        [str(NODE_BINARY), "smart-app.mjs", stack.public_url, client_id, user, SCOPE],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"smart-app.mjs failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    launched: dict[str, Any] = json.loads(result.stdout)
    return launched


@pytest.fixture(scope="module")
def launched(e2e: E2EStack) -> dict[str, Any]:
    return _launch(e2e, "alice")


def test_the_client_discovers_the_authorization_server_from_smartgates_smart_configuration(
    e2e: E2EStack, launched: dict[str, Any]
) -> None:
    authorize = urlsplit(launched["authorize_url"])
    assert launched["authorize_url"].startswith(launched["authorization_endpoint"] + "?")
    assert launched["authorization_endpoint"] == f"{e2e.issuer}/auth"
    query = parse_qs(authorize.query)
    assert query["aud"] == [e2e.public_url] and query["code_challenge_method"] == ["S256"]
    assert launched["server_url"] == e2e.public_url


def test_the_launch_gives_the_client_the_patients_context(e2e: E2EStack, launched: dict[str, Any]) -> None:
    a = e2e.data.patients["A"]
    assert launched["context_patient"] == a.patient_id
    assert set(launched["token_scope"].split()) >= {"launch/patient", "patient/*.rs"}


def test_the_client_reads_the_patient_through_envoy(e2e: E2EStack, launched: dict[str, Any]) -> None:
    a = e2e.data.patients["A"]
    patient = launched["patient"]
    assert patient["resourceType"] == "Patient" and patient["id"] == a.patient_id
    assert patient["name"][0]["family"] == a.family


def test_the_clients_observation_search_returns_only_the_patients_observations(
    e2e: E2EStack, launched: dict[str, Any]
) -> None:
    a = e2e.data.patients["A"]
    found = {f"Observation/{o['id']}" for o in launched["observations"]}
    assert found >= {ref for ref in a.resources if ref.startswith("Observation/")}  # other tests add some
    assert all(o["subject"]["reference"] == a.reference for o in launched["observations"])
    assert not any(
        marker in json.dumps(launched) for p in e2e.data.patients.values() if p.key != "A" for marker in p.markers()
    )
