"""A FHIR server that lies: a small HTTP proxy in front of Medplum that, when a request carries
``x-e2e-lie: <kind>``, answers a request smartgate allowed for patient A with data it must not show
(another patient's, or A's own data the token may not read), in each of the ways of issue 16, item 0.
Requests without the header (smartgate's own look-ups among them) pass through untouched."""

from __future__ import annotations

import copy
import gzip
import http.client
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

LIE_HEADER = "x-e2e-lie"
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", LIE_HEADER}


@dataclass(frozen=True)
class Victims:
    """What the lies are made of: patient A (the token's) and patient B (whose data must not leak)."""

    patient_a: str
    patient_b: dict[str, Any]  # B's Patient
    observation_b: dict[str, Any]  # one of B's Observations
    upstream_url: str  # the FHIR server's direct address, as smartgate's fhir.upstream_url names it


Answer = tuple[int, str, bytes]  # status, content type, body (already encoded)
JSON = "application/fhir+json"


def _json(status: int, document: Any) -> Answer:
    return status, JSON, json.dumps(document).encode()


def _entry(resource: dict[str, Any], mode: str = "match") -> dict[str, Any]:
    return {"resource": resource, "search": {"mode": mode}}


def _own(victims: Victims, resource_type: str, ident: str, **fields: Any) -> dict[str, Any]:
    """A record of patient A, made up for the lie (A's data the token's scopes do not cover)."""
    return {
        "resourceType": resource_type,
        "id": ident,
        "subject": {"reference": f"Patient/{victims.patient_a}"},
        **fields,
    }


def _searchset_lies(v: Victims) -> dict[str, Callable[[dict[str, Any]], Answer]]:
    b_obs, b_patient = v.observation_b, v.patient_b

    def appended(answer: dict[str, Any], *entries: dict[str, Any]) -> Answer:
        lied = copy.deepcopy(answer)
        lied.setdefault("entry", []).extend(entries)
        return _json(200, lied)

    vital = [
        {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}
    ]
    return {
        "append": lambda a: appended(a, _entry(b_obs)),
        "include": lambda a: appended(a, _entry(b_patient, "include")),
        "nested-bundle": lambda a: appended(
            a, _entry({"resourceType": "Bundle", "type": "searchset", "entry": [_entry(b_obs)]})
        ),
        "batch": lambda a: _json(
            200,
            {
                "resourceType": "Bundle",
                "type": "batch-response",
                "entry": [
                    {"resource": a, "response": {"status": "200 OK"}},
                    {
                        "resource": {"resourceType": "Bundle", "type": "searchset", "entry": [_entry(b_obs)]},
                        "response": {"status": "200 OK"},
                    },
                ],
            },
        ),
        "ungranted-type": lambda a: appended(a, _entry(_own(v, "Condition", "lie-condition", code={"text": "x"}))),
        "granular": lambda a: appended(
            a, _entry(_own(v, "Observation", "lie-vital", status="final", category=vital, code={"text": "heart rate"}))
        ),
        "lowercase-type": lambda a: appended(a, _entry({**b_obs, "resourceType": "observation"})),
        "outcome": lambda a: appended(
            a,
            _entry(
                {
                    "resourceType": "OperationOutcome",
                    "contained": [b_obs],
                    "issue": [{"severity": "information", "code": "informational"}],
                },
                "outcome",
            ),
        ),
        "provenance": lambda a: appended(
            a,
            _entry(
                {
                    "resourceType": "Provenance",
                    "id": "lie-provenance",
                    "recorded": "2024-01-01T00:00:00Z",
                    "target": [{"reference": f"Patient/{b_patient['id']}"}],
                    "agent": [{"who": {"reference": "Practitioner/x"}}],
                },
                "include",
            ),
        ),
    }


def _read_lies(v: Victims) -> dict[str, Callable[[dict[str, Any]], Answer]]:
    b_obs, b_patient = v.observation_b, v.patient_b
    b_reference = f"Patient/{b_patient['id']}"

    def with_contained(answer: dict[str, Any], *contained: dict[str, Any]) -> Answer:
        return _json(200, {**answer, "contained": list(contained)})

    b_condition = {
        "resourceType": "Condition",
        "id": "c",
        "code": {"text": "x"},
        "subject": {"reference": f"{v.upstream_url.rstrip('/')}/{b_reference}"},
    }
    b_note = {
        "resourceType": "Observation",
        "id": "inner",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": f"Patient/{v.patient_a}"},
        "contained": [b_patient],
    }
    return {
        "swap": lambda a: _json(200, {**b_obs, "id": a["id"]}),
        "contained": lambda a: with_contained(a, b_patient),
        "gzip": lambda a: (200, JSON, json.dumps(b_obs).encode()),  # compressed on the way out
        "xml": lambda a: (
            200,
            "application/fhir+xml",
            f'<Observation xmlns="http://hl7.org/fhir"><subject><reference value="{b_reference}"/>'
            f"</subject></Observation>".encode(),
        ),
        "not-found": lambda a: _json(404, b_obs),
        "nested-contained": lambda a: with_contained(a, b_note),
        "upstream-address": lambda a: with_contained(a, b_condition),
    }


def lies(victims: Victims) -> dict[str, Callable[[dict[str, Any]], Answer]]:
    return {**_searchset_lies(victims), **_read_lies(victims)}


SEARCH_LIES = (
    "append",
    "include",
    "nested-bundle",
    "batch",
    "ungranted-type",
    "granular",
    "lowercase-type",
    "outcome",
    "provenance",
)
READ_LIES = ("swap", "contained", "gzip", "xml", "not-found", "nested-contained", "upstream-address")


@contextmanager
def lying_proxy(fhir_base_url: str, port: int, make_victims: Callable[[str], Victims]) -> Iterator[str]:
    """Serve on ``port`` (same base path as the FHIR server); yields the proxy's FHIR base URL."""
    target = urlsplit(fhir_base_url)
    base_url = f"http://127.0.0.1:{port}{target.path}"
    table = lies(make_victims(base_url))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return

        def _forward(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            connection = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port, timeout=30)
            try:
                connection.request(self.command, self.path, body=body, headers=headers)
                upstream = connection.getresponse()
                status, payload = upstream.status, upstream.read()
                content_type = upstream.getheader("content-type", JSON)
            finally:
                connection.close()
            kind = self.headers.get(LIE_HEADER)
            encoding = ""
            if kind:
                status, content_type, payload = table[kind](json.loads(payload))
                if kind == "gzip":
                    payload, encoding = gzip.compress(payload), "gzip"
            self.send_response(status)
            self.send_header("content-type", content_type)
            if encoding:
                self.send_header("content-encoding", encoding)
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _forward  # noqa: N815 - http.server's names

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="lying-fhir-proxy", daemon=True)
    thread.start()
    try:
        yield base_url
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
