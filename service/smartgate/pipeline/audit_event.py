"""Decisions as FHIR R4 AuditEvents following IHE Basic Audit Log Patterns (BALP), so a payer
can answer HIPAA accounting-of-disclosures questions from them.

One JSON line per decision. Profiles: ``IHE.BasicAudit.PatientRead`` / ``PatientQuery``
when a patient is known, else ``IHE.BasicAudit.Read`` / ``Query``. Deliberate deviation:
BALP query events carry the query itself; we never record query values (they may hold
identifiers), only the resource type searched.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime
from typing import Any

from smartgate.core.http import HttpRequest
from smartgate.pipeline.decision_log import JsonLines
from smartgate.policy.decision import Decision
from smartgate.tokens.context import TokenContext

_BALP = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit."
_DCM = "http://dicom.nema.org/resources/ontology/DCM"
_QUERIES = {"search-type", "search-compartment", "search-system"}
_ACTIONS = {"create": "C", "update": "U", "patch": "U", "delete": "D"}


def _outcome(decision: Decision) -> tuple[str, str]:
    if decision.allowed:
        return "0", "Success"
    return ("8", "Serious failure") if decision.http_status >= 500 else ("4", "Minor failure")


def agents_of(context: TokenContext | None, fhir_base_url: str) -> list[dict[str, Any]]:
    """The AuditEvent agents (source app, destination FHIR server, the user): one token's are the same
    on every event, so ``AuditEventLog`` builds them once per verified token."""
    agents: list[dict[str, Any]] = [
        {
            "type": {"coding": [{"system": _DCM, "code": "110153", "display": "Source Role ID"}]},
            "who": {"identifier": {"value": context.client_id if context else "anonymous"}},
            "requestor": False,
        },
        {
            "type": {"coding": [{"system": _DCM, "code": "110152", "display": "Destination Role ID"}]},
            "who": {"display": fhir_base_url},
            "requestor": False,
            "network": {"address": fhir_base_url, "type": "5"},
        },
    ]
    if context is not None and context.subject:
        user: dict[str, Any] = {"identifier": {"system": context.issuer, "value": context.subject}}
        if context.fhir_user:
            user["reference"] = context.fhir_user
        agents.append(
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                            "code": "IRCP",
                            "display": "information recipient",
                        }
                    ]
                },
                "who": user,
                "requestor": True,
            }
        )
    return agents


def build_audit_event(
    http: HttpRequest, decision: Decision, fhir_base_url: str, observer: str, agents: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The AuditEvent of one decision; ``agents``: ``agents_of(decision.context, fhir_base_url)`` if
    already built (shared, never changed here)."""
    context = decision.context
    query = decision.interaction in _QUERIES
    patient = context.patient if context else None
    profile = ("Patient" if patient else "") + ("Query" if query else "Read")
    outcome, outcome_text = _outcome(decision)
    if agents is None:
        agents = agents_of(context, fhir_base_url)
    entities: list[dict[str, Any]] = []
    if patient:
        entities.append(
            {
                "what": {"reference": f"Patient/{patient}"},
                "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1"},
                "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"},
            }
        )
    if decision.resource_type:
        entities.append(
            {
                "what": {"display": decision.resource_type},
                "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2"},
                "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "24" if query else "4"},
            }
        )
    return {
        "resourceType": "AuditEvent",
        "id": _random_uuid(),
        "meta": {"profile": [_BALP + profile]},
        "type": {
            "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
            "code": "rest",
            "display": "Restful Operation",
        },
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": decision.interaction or "unknown"}],
        "action": "E" if query else _ACTIONS.get(decision.interaction, "R"),
        "recorded": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "outcome": outcome,
        "outcomeDesc": f"{outcome_text}: {decision.reason.code}",
        "agent": agents,
        "source": {
            "observer": {"display": observer},
            "type": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                    "code": "4",
                    "display": "Application Server",
                }
            ],
        },
        "entity": entities + _request_id_entity(http.request_id),
    }


def _random_uuid() -> str:
    """A version 4 UUID from the process's PRNG (reseeded in each forked worker): an event id must be
    unique, not secret, and ``uuid.uuid4()`` costs a system call per event."""
    return str(uuid.UUID(int=random.getrandbits(128), version=4))


def _request_id_entity(request_id: str) -> list[dict[str, Any]]:
    if not request_id:
        return []
    return [
        {
            "what": {"identifier": {"value": request_id}},
            "type": {
                "system": "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType",
                "code": "XrequestId",
            },
        }
    ]


class AuditEventLog:
    def __init__(self, destination: str, fhir_base_url: str, observer: str) -> None:
        self._base_url = fhir_base_url
        self._observer = observer
        self._lines = JsonLines(destination, name="audit")
        self._anonymous_agents = agents_of(None, fhir_base_url)

    def record(self, http: HttpRequest, decision: Decision) -> None:
        if not self._lines.enabled:
            return
        self._lines.write(
            build_audit_event(http, decision, self._base_url, self._observer, self._agents(decision.context))
        )

    def _agents(self, context: TokenContext | None) -> list[dict[str, Any]]:
        """Built on the token's first event and kept in its context's memo (evicted with it)."""
        if context is None:
            return self._anonymous_agents
        agents = context.memo.get(self)
        if not isinstance(agents, list):
            agents = context.memo[self] = agents_of(context, self._base_url)
        return agents

    def close(self) -> None:
        """Called when a config reload has replaced this log and the grace period is over."""
        self._lines.close()
