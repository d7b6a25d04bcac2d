"""Decisions as FHIR R4 AuditEvents following IHE Basic Audit Log Patterns (BALP), so a payer
can answer HIPAA accounting-of-disclosures questions from them.

One JSON line per decision. Profiles: ``IHE.BasicAudit.PatientRead`` / ``PatientQuery``
when a patient is known, else ``IHE.BasicAudit.Read`` / ``Query``. Deliberate deviation:
BALP query events carry the query itself; we never record query values (they may hold
identifiers), only the resource type searched.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from smartgate.core.http import HttpRequest
from smartgate.pipeline.decision_log import JsonLines
from smartgate.policy.decision import Decision

_BALP = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit."
_DCM = "http://dicom.nema.org/resources/ontology/DCM"
_QUERIES = {"search-type", "search-compartment", "search-system"}
_ACTIONS = {"create": "C", "update": "U", "patch": "U", "delete": "D"}


def _outcome(decision: Decision) -> tuple[str, str]:
    if decision.allowed:
        return "0", "Success"
    return ("8", "Serious failure") if decision.http_status >= 500 else ("4", "Minor failure")


def build_audit_event(http: HttpRequest, decision: Decision, fhir_base_url: str, observer: str) -> dict[str, Any]:
    context = decision.context
    query = decision.interaction in _QUERIES
    patient = context.patient if context else None
    profile = ("Patient" if patient else "") + ("Query" if query else "Read")
    outcome, outcome_text = _outcome(decision)
    agents: list[dict[str, Any]] = [
        {"type": {"coding": [{"system": _DCM, "code": "110153", "display": "Source Role ID"}]},
         "who": {"identifier": {"value": context.client_id if context else "anonymous"}},
         "requestor": False},
        {"type": {"coding": [{"system": _DCM, "code": "110152", "display": "Destination Role ID"}]},
         "who": {"display": fhir_base_url}, "requestor": False, "network": {"address": fhir_base_url, "type": "5"}},
    ]
    if context is not None and context.subject:
        user: dict[str, Any] = {"identifier": {"system": context.issuer, "value": context.subject}}
        if context.fhir_user:
            user["reference"] = context.fhir_user
        agents.append({"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                            "code": "IRCP", "display": "information recipient"}]},
                       "who": user, "requestor": True})
    entities: list[dict[str, Any]] = []
    if patient:
        entities.append({
            "what": {"reference": f"Patient/{patient}"},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1"},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"},
        })
    if decision.resource_type:
        entities.append({
            "what": {"display": decision.resource_type},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2"},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "24" if query else "4"},
        })
    return {
        "resourceType": "AuditEvent",
        "id": str(uuid.uuid4()),
        "meta": {"profile": [_BALP + profile]},
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest",
                 "display": "Restful Operation"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction",
                     "code": decision.interaction or "unknown"}],
        "action": "E" if query else _ACTIONS.get(decision.interaction, "R"),
        "recorded": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "outcome": outcome,
        "outcomeDesc": f"{outcome_text}: {decision.reason.code}",
        "agent": agents,
        "source": {"observer": {"display": observer},
                   "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                             "code": "4", "display": "Application Server"}]},
        "entity": entities + _request_id_entity(http.request_id),
    }


def _request_id_entity(request_id: str) -> list[dict[str, Any]]:
    if not request_id:
        return []
    return [{"what": {"identifier": {"value": request_id}},
             "type": {"system": "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType",
                      "code": "XrequestId"}}]


class AuditEventLog:
    def __init__(self, destination: str, fhir_base_url: str, observer: str) -> None:
        self._base_url = fhir_base_url
        self._observer = observer
        self._lines = JsonLines(destination)

    def record(self, http: HttpRequest, decision: Decision) -> None:
        if not self._lines.enabled:
            return
        self._lines.write(build_audit_event(http, decision, self._base_url, self._observer))

    def close(self) -> None:
        """Called when a config reload has replaced this log and the grace period is over."""
        self._lines.close()
