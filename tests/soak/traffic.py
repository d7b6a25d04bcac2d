"""The soak traffic: every request has a known expected outcome.

Each ``Probe`` names the status it must get, the smartgate reason code of a denial (read from
the OperationOutcome), and whether it may reach the FHIR server. A request that should be
denied before the FHIR server must never show up there; one that should be allowed must.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from smartgate.dev.demo.upstream import FAULT_ID, MISBEHAVE_TAG

# Every soak request carries a unique marker in this header; smartgate's own compartment look-ups
# do not. The FHIR server's record of the markers it saw is its account of what Envoy let through.
MARKER_HEADER = "x-soak-request"
CONTEXT_PATIENT = "123"
OTHER_PATIENT = "456"
# Condition.cr, not .c: with response verification enforced, the created Condition the FHIR server
# returns is withheld (403 response_foreign_resource) from a token that cannot read Conditions.
SESSION_SCOPE = (
    "launch/patient patient/Patient.r patient/Observation.rs patient/Observation.u "
    "patient/Coverage.rs patient/Condition.cr"
)

# How a probe authenticates.
SESSION = "session"  # the client's current token (churned every few requests)
NO_TOKEN = "none"
EXPIRED = "expired"  # signed with the current key, expired an hour ago
TAMPERED = "tampered"  # a session token whose payload now names another patient
RETIRED_KEY = "retired_key"  # a new token signed with the key withdrawn from the JWKS


@dataclass(frozen=True)
class Expected:
    status: int
    reason: str | None  # the smartgate reason code of a denial; None when the FHIR server answered
    reaches_upstream: bool


@dataclass(frozen=True)
class Probe:
    name: str
    method: str
    path: str  # after the FHIR base
    expected: Expected
    auth: str = SESSION
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    injected_fault: bool = False  # the FHIR server fails on purpose: a 500 is expected, counted apart


def _allowed(status: int = 200) -> Expected:
    return Expected(status, None, True)


def _denied(status: int, reason: str) -> Expected:
    return Expected(status, reason, False)


def _refused_by_the_response_stage() -> Expected:
    """The soak verifies responses (enforce): a read by id is proven by its response, not a look-up, so it
    reaches the FHIR server and the response stage withholds what is not the context patient's."""
    return Expected(403, "response_foreign_resource", True)


def _json(document: object) -> bytes:
    return json.dumps(document).encode()


def _condition(patient: str) -> bytes:
    return _json(
        {"resourceType": "Condition", "subject": {"reference": f"Patient/{patient}"}, "code": {"text": "soak"}}
    )


def _batch(*urls: str) -> bytes:
    return _json(
        {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [{"request": {"method": "GET", "url": url}} for url in urls],
        }
    )


FHIR_JSON = {"content-type": "application/fhir+json"}
OWN_SEARCH = f"/Observation?patient={CONTEXT_PATIENT}"

MIX: tuple[Probe, ...] = (
    Probe("search_own", "GET", OWN_SEARCH, _allowed()),
    Probe(
        "search_own_spoofed_headers",
        "GET",
        OWN_SEARCH,
        _allowed(),
        headers={"x-smart-patient": OTHER_PATIENT, "x-smart-scope": "patient/*.cruds"},
    ),
    Probe(
        "search_other_patient",
        "GET",
        f"/Observation?patient={OTHER_PATIENT}",
        _denied(403, "compartment_other_patient"),
    ),
    Probe("read_context_patient", "GET", f"/Patient/{CONTEXT_PATIENT}", _allowed()),
    Probe("read_own_by_id", "GET", "/Observation/obs-123-a", _allowed()),
    Probe("read_other_by_id", "GET", "/Observation/obs-456-a", _refused_by_the_response_stage()),
    Probe("read_other_coverage_by_id", "GET", "/Coverage/cov-456", _refused_by_the_response_stage()),
    Probe("no_token", "GET", OWN_SEARCH, _denied(401, "token_missing"), auth=NO_TOKEN),
    Probe("expired_token", "GET", OWN_SEARCH, _denied(401, "token_expired"), auth=EXPIRED),
    Probe(
        "tampered_token",
        "GET",
        f"/Observation?patient={OTHER_PATIENT}",
        _denied(401, "token_bad_signature"),
        auth=TAMPERED,
    ),
    Probe(
        "type_out_of_scope", "GET", f"/MedicationRequest?patient={CONTEXT_PATIENT}", _denied(403, "scope_insufficient")
    ),
    Probe("create_own", "POST", "/Condition", _allowed(201), body=_condition(CONTEXT_PATIENT), headers=FHIR_JSON),
    Probe(
        "create_for_other_patient",
        "POST",
        "/Condition",
        _denied(403, "compartment_other_patient"),
        body=_condition(OTHER_PATIENT),
        headers=FHIR_JSON,
    ),
    Probe(
        "update_own",
        "PUT",
        "/Observation/obs-123-b",
        _allowed(200),
        headers=FHIR_JSON,
        body=_json(
            {
                "resourceType": "Observation",
                "id": "obs-123-b",
                "status": "final",
                "subject": {"reference": f"Patient/{CONTEXT_PATIENT}"},
                "code": {"text": "Heart rate"},
            }
        ),
    ),
    Probe(
        "update_other_patient",
        "PUT",
        "/Observation/obs-456-a",
        _denied(403, "not_in_compartment"),
        headers=FHIR_JSON,
        body=_json(
            {
                "resourceType": "Observation",
                "id": "obs-456-a",
                "status": "final",
                "subject": {"reference": f"Patient/{CONTEXT_PATIENT}"},
                "code": {"text": "HbA1c"},
            }
        ),
    ),
    Probe(
        "batch_own",
        "POST",
        "",
        _allowed(),
        headers=FHIR_JSON,
        body=_batch(f"Observation?patient={CONTEXT_PATIENT}", "Observation/obs-123-a"),
    ),
    Probe(
        "batch_with_other_patient_entry",
        "POST",
        "",
        _denied(403, "bundle_entry_denied"),
        headers=FHIR_JSON,
        body=_batch(f"Observation?patient={CONTEXT_PATIENT}", f"Observation?patient={OTHER_PATIENT}"),
    ),
    Probe("metadata_public", "GET", "/metadata", _allowed(), auth=NO_TOKEN),
    Probe("upstream_fault", "GET", f"{OWN_SEARCH}&_id={FAULT_ID}", _allowed(500), injected_fault=True),
    Probe(
        "upstream_returns_other_patient",
        "GET",
        f"{OWN_SEARCH}&_tag={MISBEHAVE_TAG}",
        Expected(403, "response_foreign_resource", True),
    ),
)

# Sent only once the withdrawn key has left smartgate's cached key set (see test_soak).
RETIRED_KEY_PROBE = Probe(
    "token_signed_with_withdrawn_key", "GET", OWN_SEARCH, _denied(401, "token_unknown_key"), auth=RETIRED_KEY
)
