"""The decision log (one JSON line per decision, keyed by the x-request-id Envoy forwarded, never a
token or a query value) and the IHE BALP AuditEvent written for every decision."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from smartgate.dev.demo.upstream import start_upstream
from smartgate.envoy_glue.bootstrap import EnvoySettings, render
from tests.support.fhir_upstream import RecordingUpstream
from tests.support.idp import IdentityProvider, base_claims, new_keys, sign
from tests.support.ports import free_port
from tests.support.processes import stop
from tests.support.stack import GatedFhir, gated_fhir, running_envoy, smartgate_config
from tests.support.waits import wait_for, wait_until

pytestmark = pytest.mark.integration

BALP = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit."
LOG_FIELDS = {
    "time",
    "request_id",
    "method",
    "resource_type",
    "interaction",
    "outcome",
    "reason",
    "status",
    "client_id",
    "subject",
    "issuer",
    "patient",
    "latency_ms",
}
SECRET_CODE, SECRET_CATEGORY = "query-secret-code-8841", "query-secret-cat-5521"

# request id -> (path, token name, expected status)
REQUESTS: dict[str, tuple[str, str | None, int]] = {
    "rid-search": (f"/Observation?patient=123&code={SECRET_CODE}", "valid", 200),
    "rid-other": (f"/Observation?patient=456&category={SECRET_CATEGORY}", "valid", 403),
    "rid-missing": ("/Observation?patient=123", None, 401),
    "rid-forged": ("/Observation?patient=123", "forged", 401),
    "rid-read": ("/Observation/obs-123-a", "valid", 200),
    "rid-fault": ("/Observation/fault-injection", "valid", 503),
}


@dataclass
class Logged:
    gated: GatedFhir
    echo: RecordingUpstream
    tokens: dict[str, str]
    statuses: dict[str, int]
    decisions: dict[str, dict[str, Any]]
    audits: dict[str, dict[str, Any]]
    generated_id: str  # the x-request-id Envoy made up for a request that had none
    window: tuple[float, float]
    raw: str


def _request_id_of(event: dict[str, Any]) -> str:
    for entity in event["entity"]:
        if entity.get("type", {}).get("code") == "XrequestId":
            return str(entity["what"]["identifier"]["value"])
    return ""


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Logged]:
    workdir = tmp_path_factory.mktemp("decision-log")
    demo_port = free_port()
    demo = start_upstream("127.0.0.1", demo_port)  # answers the compartment look-ups
    echo = RecordingUpstream()  # Envoy's upstream: shows which x-request-id Envoy forwarded
    audit = workdir / "audit.jsonl"
    try:
        with gated_fhir(
            workdir,
            upstream_url=echo.url,
            lookup_url=f"http://127.0.0.1:{demo_port}/fhir",
            audit={"destination": str(audit), "source_observer": "smartgate-test"},
        ) as gated:
            claims = {
                **base_claims(gated.idp.issuer, gated.base_url),
                "sub": "user-1",
                "client_id": "app-1",
                "scope": "launch/patient patient/*.rs",
                "patient": "123",
            }
            tokens = {
                "valid": gated.token(fhirUser=f"{gated.base_url}/Patient/123"),
                "forged": jwt.encode(
                    claims,
                    ec.generate_private_key(ec.SECP256R1()),
                    algorithm="ES256",
                    headers={"kid": "ec-1", "typ": "at+jwt"},
                ),
            }
            started = time.time()
            statuses = {}
            for request_id, (path, token_name, _) in REQUESTS.items():
                response = gated.get(
                    path, tokens[token_name] if token_name else None, headers={"x-request-id": request_id}
                )
                statuses[request_id] = response.status_code
            gated.get("/Observation?patient=123&marker=no-request-id", tokens["valid"])
            window = (started, time.time())
            forwarded = echo.headers_for("marker=no-request-id")
            assert len(forwarded) == 1
            decisions = {entry["request_id"]: entry for entry in gated.smartgate.decisions()}
            audits = {_request_id_of(event): event for event in gated.smartgate.audit_events()}
            decision_log = gated.smartgate.decision_log_path
            assert decision_log is not None  # smartgate_config logs decisions to a file by default
            raw = decision_log.read_text() + audit.read_text()
            yield Logged(gated, echo, tokens, statuses, decisions, audits, forwarded[0]["x-request-id"], window, raw)
    finally:
        echo.close()
        demo.shutdown()
        demo.server_close()


def test_each_request_got_its_answer(logged: Logged) -> None:
    assert logged.statuses == {request_id: status for request_id, (_, _, status) in REQUESTS.items()}


def test_one_log_line_per_decision_keyed_by_the_forwarded_request_id(logged: Logged) -> None:
    assert set(logged.decisions) == {*REQUESTS, logged.generated_id}
    assert len(logged.gated.smartgate.decisions()) == len(REQUESTS) + 1
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", logged.generated_id)
    sent = logged.echo.headers_for(f"code={SECRET_CODE}")
    assert [headers["x-request-id"] for headers in sent] == ["rid-search"]


def test_an_allowed_search_is_logged_with_every_field(logged: Logged) -> None:
    entry = logged.decisions["rid-search"]
    assert set(entry) == LOG_FIELDS
    assert {k: v for k, v in entry.items() if k not in ("time", "latency_ms")} == {
        "request_id": "rid-search",
        "method": "GET",
        "resource_type": "Observation",
        "interaction": "search-type",
        "outcome": "allow",
        "reason": "allowed_compartment_search",
        "status": 200,
        "client_id": "app-1",
        "subject": "user-1",
        "issuer": logged.gated.idp.issuer,
        "patient": "123",
    }
    assert logged.window[0] - 1 <= entry["time"] <= logged.window[1] + 1
    assert isinstance(entry["latency_ms"], float) and 0 < entry["latency_ms"] < 1000


@pytest.mark.parametrize(
    ("request_id", "expected"),
    [
        (
            "rid-other",
            {
                "outcome": "deny",
                "reason": "compartment_other_patient",
                "status": 403,
                "patient": "123",
                "interaction": "search-type",
                "resource_type": "Observation",
                "client_id": "app-1",
            },
        ),
        (
            "rid-missing",
            {
                "outcome": "deny",
                "reason": "token_missing",
                "status": 401,
                "patient": "",
                "client_id": "",
                "subject": "",
                "issuer": "",
            },
        ),
        (
            "rid-forged",
            {
                "outcome": "deny",
                "reason": "token_bad_signature",
                "status": 401,
                "patient": "",
                "client_id": "",
                "subject": "",
            },
        ),
        (
            "rid-read",
            {
                "outcome": "allow",
                "reason": "allowed_compartment_member",
                "status": 200,
                "patient": "123",
                "interaction": "read",
                "resource_type": "Observation",
            },
        ),
        (
            "rid-fault",
            {
                "outcome": "error",
                "reason": "lookup_failed",
                "status": 503,
                "patient": "123",
                "interaction": "read",
                "resource_type": "Observation",
            },
        ),
    ],
)
def test_denials_and_errors_are_logged_with_their_reason(
    logged: Logged, request_id: str, expected: dict[str, Any]
) -> None:
    entry = logged.decisions[request_id]
    assert set(entry) == LOG_FIELDS
    assert {key: entry[key] for key in expected} == expected


def test_neither_log_holds_a_token_or_a_query_value(logged: Logged) -> None:
    for token in logged.tokens.values():
        assert token not in logged.raw
        assert token.split(".")[2] not in logged.raw  # not even the signature
    for value in (SECRET_CODE, SECRET_CATEGORY, "no-request-id", "patient=", "Patient/456"):
        assert value not in logged.raw
    records = [*logged.decisions.values(), *logged.audits.values()]
    assert "456" not in {text for record in records for text in _strings(record)}  # the other patient's id


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def test_an_audit_event_per_decision(logged: Logged) -> None:
    assert set(logged.audits) == set(logged.decisions)
    assert len(logged.gated.smartgate.audit_events()) == len(logged.decisions)


def test_a_patient_context_search_is_a_balp_patient_query(logged: Logged) -> None:
    event = logged.audits["rid-search"]
    assert event["resourceType"] == "AuditEvent"
    assert event["meta"]["profile"] == [BALP + "PatientQuery"]
    assert event["type"]["code"] == "rest"
    assert event["subtype"] == [{"system": "http://hl7.org/fhir/restful-interaction", "code": "search-type"}]
    assert event["action"] == "E"
    assert event["outcome"] == "0"
    assert logged.window[0] - 1 <= datetime.fromisoformat(event["recorded"]).timestamp() <= logged.window[1] + 1
    assert event["source"]["observer"] == {"display": "smartgate-test"}
    agents = {agent["type"]["coding"][0]["code"]: agent for agent in event["agent"]}
    assert agents["110153"]["who"] == {"identifier": {"value": "app-1"}}  # the client application
    assert agents["110152"]["network"]["address"] == logged.gated.base_url  # the FHIR server
    assert agents["IRCP"]["requestor"] is True
    assert agents["IRCP"]["who"] == {
        "identifier": {"system": logged.gated.idp.issuer, "value": "user-1"},
        "reference": "Patient/123",
    }
    patients = [e for e in event["entity"] if e.get("what", {}).get("reference", "").startswith("Patient/")]
    assert patients == [
        {
            "what": {"reference": "Patient/123"},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1"},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"},
        }
    ]
    queried = [e for e in event["entity"] if e.get("what", {}).get("display") == "Observation"]
    assert [e["role"]["code"] for e in queried] == ["24"]


@pytest.mark.parametrize(
    ("request_id", "profile", "outcome", "action"),
    [
        ("rid-read", "PatientRead", "0", "R"),
        ("rid-other", "PatientQuery", "4", "E"),
        ("rid-fault", "PatientRead", "8", "R"),
    ],
)
def test_audit_event_profile_and_outcome_follow_the_decision(
    logged: Logged, request_id: str, profile: str, outcome: str, action: str
) -> None:
    event = logged.audits[request_id]
    assert event["meta"]["profile"] == [BALP + profile]
    assert (event["outcome"], event["action"]) == (outcome, action)
    assert event["entity"][0]["what"] == {"reference": "Patient/123"}
    assert event["outcomeDesc"].endswith(logged.decisions[request_id]["reason"])


def test_an_anonymous_denial_is_audited_as_a_minor_failure(logged: Logged) -> None:
    event = logged.audits["rid-missing"]
    assert event["outcome"] == "4"
    assert event["agent"][0]["who"] == {"identifier": {"value": "anonymous"}}
    assert not [e for e in event["entity"] if "reference" in e.get("what", {})]


# --- where the decision log goes when the config does not say, and ``off`` ------------------------------

# request id -> (path, with the token?, expected status)
PLAIN_REQUESTS: dict[str, tuple[str, bool, int]] = {
    "out-allowed": ("/Observation?patient=123", True, 200),
    "out-denied": ("/Observation?patient=456", True, 403),
    "out-anonymous": ("/Observation?patient=123", False, 401),
}


@dataclass
class Streams:
    """smartgate's stdout and stderr, captured apart, after ``PLAIN_REQUESTS`` went through Envoy."""

    statuses: dict[str, int]
    token: str
    stdout: str
    stderr: str


def _decision_lines(text: str) -> list[dict[str, Any]]:
    lines = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and "reason" in entry:
                lines.append(entry)
    return lines


@contextlib.contextmanager
def _streams(workdir: Path, decision_log: str | None) -> Iterator[Streams]:
    """IdP stand-in + demo FHIR server + smartgate (``decision_log`` as given, or no such key) + Envoy."""
    keys = new_keys()
    idp = IdentityProvider(keys)
    demo_port, grpc_port, http_port, envoy_port, admin_port = (free_port() for _ in range(5))
    demo = start_upstream("127.0.0.1", demo_port)
    base_url, upstream_url = f"http://127.0.0.1:{envoy_port}/fhir", f"http://127.0.0.1:{demo_port}/fhir"
    config = smartgate_config(
        grpc_port=grpc_port,
        http_port=http_port,
        base_url=base_url,
        upstream_url=upstream_url,
        issuers=[{"issuer": idp.issuer}],
        workdir=workdir,
    )
    del config["decision_log"]
    if decision_log is not None:
        config["decision_log"] = decision_log
    config_path = workdir / "smartgate.yaml"
    config_path.write_text(json.dumps(config), encoding="utf-8")
    stdout_path, stderr_path = workdir / "smartgate.stdout", workdir / "smartgate.stderr"
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "smartgate", "serve", "--config", str(config_path)],
            stdout=stdout,
            stderr=stderr,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        wait_for(f"http://127.0.0.1:{http_port}/readyz", process=process)
        settings = EnvoySettings(
            listen_host="127.0.0.1",
            listen_port=envoy_port,
            admin_port=admin_port,
            authz_port=grpc_port,
            upstream_url=upstream_url,
            smartgate_http_port=http_port,
        )
        with running_envoy(render(settings), workdir), httpx.Client(timeout=10) as client:
            token = sign(
                keys,
                {
                    **base_claims(idp.issuer, base_url),
                    "sub": "user-1",
                    "client_id": "app-1",
                    "scope": "launch/patient patient/*.rs",
                    "patient": "123",
                },
            )
            statuses = {}
            for request_id, (path, with_token, _) in PLAIN_REQUESTS.items():
                headers = {"x-request-id": request_id}
                if with_token:
                    headers["authorization"] = f"Bearer {token}"
                statuses[request_id] = client.get(base_url + path, headers=headers).status_code
        if decision_log is None:
            wait_until(lambda: len(_decision_lines(stdout_path.read_text())) >= len(PLAIN_REQUESTS), seconds=5)
        else:
            time.sleep(0.5)  # time enough for a line that should not come
        yield Streams(statuses, token, stdout_path.read_text(encoding="utf-8"), stderr_path.read_text(encoding="utf-8"))
    finally:
        stop(process)
        demo.shutdown()
        demo.server_close()
        idp.close()


@pytest.fixture(scope="module")
def default_destination(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Streams]:
    with _streams(tmp_path_factory.mktemp("decision-log-default"), decision_log=None) as streams:
        yield streams


def test_without_a_decision_log_key_each_decision_is_one_json_line_on_stdout(default_destination: Streams) -> None:
    expected = {request_id: status for request_id, (_, _, status) in PLAIN_REQUESTS.items()}
    assert default_destination.statuses == expected
    lines = default_destination.stdout.splitlines()
    entries = [json.loads(line) for line in lines]  # stdout holds decision lines only, each whole JSON
    assert {entry["request_id"]: entry["status"] for entry in entries} == expected
    assert len(entries) == len(PLAIN_REQUESTS)
    assert all(set(entry) >= LOG_FIELDS for entry in entries)
    assert _decision_lines(default_destination.stderr) == []  # the log lines go to stderr, decisions do not


def test_the_default_decision_log_never_holds_the_token(default_destination: Streams) -> None:
    output = default_destination.stdout + default_destination.stderr
    assert _decision_lines(default_destination.stdout), "decisions were logged"
    assert default_destination.token not in output
    for part in default_destination.token.split("."):  # header, claims, signature: none of them either
        assert part not in output


def test_decision_log_off_writes_no_decision_line(tmp_path: Path) -> None:
    with _streams(tmp_path, decision_log="off") as streams:
        assert streams.statuses == {request_id: status for request_id, (_, _, status) in PLAIN_REQUESTS.items()}
        assert streams.stdout == ""
        assert _decision_lines(streams.stderr) == []
