"""A small in-memory FHIR R4 server for the demo and the tests.

It answers read, search (GET and POST ``_search``) and Patient compartment searches over a
handful of resources, honours the reference search parameters the look-ups use, and
reports what it received in ``x-demo-received-*`` response headers, so a test can see what
passed through Envoy. It is a stand-in for a real FHIR server, not one.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .http_server import DemoHTTPServer

SEED: list[dict[str, Any]] = [
    {"resourceType": "Patient", "id": "123", "name": [{"family": "Alvarez", "given": ["Ana"]}]},
    {"resourceType": "Patient", "id": "456", "name": [{"family": "Brown", "given": ["Ben"]}]},
    {
        "resourceType": "Patient",
        "id": "789",
        "name": [{"family": "Chen", "given": ["Cai"]}],
        "link": [{"other": {"reference": "Patient/123"}, "type": "seealso"}],
    },
    {"resourceType": "Practitioner", "id": "prac-1", "name": [{"family": "House"}]},
    {
        "resourceType": "Observation",
        "id": "obs-123-a",
        "status": "final",
        "subject": {"reference": "Patient/123"},
        "category": [{"coding": [{"code": "laboratory"}]}],
        "code": {"text": "HbA1c"},
        "performer": [{"reference": "Practitioner/prac-1"}],
    },
    {
        "resourceType": "Observation",
        "id": "obs-123-b",
        "status": "final",
        "subject": {"reference": "Patient/123"},
        "category": [{"coding": [{"code": "vital-signs"}]}],
        "code": {"text": "Heart rate"},
    },
    {
        "resourceType": "Observation",
        "id": "obs-456-a",
        "status": "final",
        "subject": {"reference": "Patient/456"},
        "category": [{"coding": [{"code": "laboratory"}]}],
        "code": {"text": "HbA1c"},
    },
    {
        "resourceType": "Observation",
        "id": "obs-456-by-123",
        "status": "final",
        "subject": {"reference": "Patient/456"},
        "performer": [{"reference": "Patient/123"}],
        "code": {"text": "Reported by a relative"},
    },
    {
        "resourceType": "Coverage",
        "id": "cov-123",
        "status": "active",
        "beneficiary": {"reference": "Patient/123"},
        "payor": [{"reference": "Organization/payer-1"}],
    },
    {
        "resourceType": "Coverage",
        "id": "cov-456",
        "status": "active",
        "beneficiary": {"reference": "Patient/456"},
        "payor": [{"reference": "Organization/payer-1"}],
    },
    {"resourceType": "Organization", "id": "payer-1", "name": "Demo Health Plan"},
    {
        "resourceType": "Provenance",
        "id": "prov-123-a",
        "recorded": "2024-01-01T00:00:00Z",
        "target": [{"reference": "Observation/obs-123-a"}],
        "agent": [{"who": {"reference": "Practitioner/prac-1"}}],
    },
    {
        "resourceType": "Provenance",
        "id": "prov-456-a",
        "recorded": "2024-01-01T00:00:00Z",
        "target": [{"reference": "Observation/obs-456-a"}],
        "agent": [{"who": {"reference": "Practitioner/prac-1"}}],
    },
    {
        "resourceType": "Binary",
        "id": "bin-123",
        "contentType": "text/plain",
        "securityContext": {"reference": "Patient/123"},
        "data": "QWxpY2U=",
    },
    {
        "resourceType": "Binary",
        "id": "bin-789",
        "contentType": "text/plain",
        "securityContext": {"reference": "Patient/789"},
        "data": "Q2Fp",
    },
]

# Searching for this id fails with 500: the tests use it to make compartment look-ups fail.
FAULT_ID = "fault-injection"

# Search parameter -> the element paths holding its references, per type.
REFERENCE_PARAMS: dict[str, dict[str, tuple[str, ...]]] = {
    "Observation": {"subject": ("subject",), "patient": ("subject",), "performer": ("performer",)},
    "Coverage": {
        "beneficiary": ("beneficiary",),
        "patient": ("beneficiary",),
        "subscriber": ("subscriber",),
        "policy-holder": ("policyHolder",),
        "payor": ("payor",),
    },
    "Patient": {"link": ("link.other",)},
    "Provenance": {"target": ("target",), "patient": ("target",)},
}


def _references(resource: dict[str, Any], path: str) -> list[str]:
    values: list[Any] = [resource]
    for part in path.split("."):
        next_values: list[Any] = []
        for value in values:
            item = value.get(part) if isinstance(value, dict) else None
            if isinstance(item, list):
                next_values.extend(item)
            elif item is not None:
                next_values.append(item)
        values = next_values
    return [v["reference"] for v in values if isinstance(v, dict) and "reference" in v]


class FhirStore:
    def __init__(self, resources: list[dict[str, Any]]) -> None:
        self.resources = {(r["resourceType"], r["id"]): dict(r) for r in resources}
        self.ever_existed = set(self.resources)
        self._lock = threading.Lock()
        self._next_id = 1

    def put(self, resource: dict[str, Any]) -> bool:
        """Store a resource; True when it was created."""
        with self._lock:
            if "id" not in resource:
                resource["id"] = f"new-{self._next_id}"
                self._next_id += 1
            key = (resource["resourceType"], resource["id"])
            created = key not in self.resources
            self.resources[key] = resource
            self.ever_existed.add(key)
            return created

    def delete(self, resource_type: str, resource_id: str) -> bool:
        with self._lock:
            return self.resources.pop((resource_type, resource_id), None) is not None

    def search(self, resource_type: str, params: list[tuple[str, str]]) -> list[dict[str, Any]]:
        if ("_id", FAULT_ID) in params:
            raise RuntimeError("fault injected")
        found = [r for (t, _), r in self.resources.items() if t == resource_type]
        for name, value in params:
            code = name.split(":")[0]
            if code == "_id":
                found = [r for r in found if r["id"] in value.split(",")]
                continue
            paths = REFERENCE_PARAMS.get(resource_type, {}).get(code)
            if paths is None:
                continue  # lenient, like many servers: unknown parameters are ignored
            wanted = {v if "/" in v else f"Patient/{v}" for v in value.split(",")}
            found = [r for r in found if any(ref in wanted for p in paths for ref in _references(r, p))]
        return found

    def included(self, found: list[dict[str, Any]], params: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """What ``_include=Type:param[:Target]`` and ``_revinclude=Type:param`` add to ``found`` (one level)."""
        names = {f"{r['resourceType']}/{r['id']}" for r in found}
        extra: dict[str, dict[str, Any]] = {}
        for name, value in params:
            parts = value.split(":")
            if name in ("_include", "_revinclude") and len(parts) >= 2:
                paths = REFERENCE_PARAMS.get(parts[0], {}).get(parts[1], ())
                pick = self._forward if name == "_include" else self._reverse
                extra.update(pick(found, names, parts, paths))
        return [resource for name, resource in extra.items() if name not in names]

    def _forward(
        self, found: list[dict[str, Any]], names: set[str], parts: list[str], paths: tuple[str, ...]
    ) -> dict[str, dict[str, Any]]:
        extra = {}
        for resource in (r for r in found if r["resourceType"] == parts[0]):
            for reference in (ref for path in paths for ref in _references(resource, path)):
                resource_type, _, resource_id = reference.partition("/")
                target = self.resources.get((resource_type, resource_id))
                if target is not None and (len(parts) < 3 or resource_type == parts[2]):
                    extra[reference] = target
        return extra

    def _reverse(
        self, found: list[dict[str, Any]], names: set[str], parts: list[str], paths: tuple[str, ...]
    ) -> dict[str, dict[str, Any]]:
        return {
            f"{resource_type}/{resource_id}": resource
            for (resource_type, resource_id), resource in self.resources.items()
            if resource_type == parts[0] and any(ref in names for path in paths for ref in _references(resource, path))
        }


# A search carrying _tag=smartgate-misbehave also returns another patient's Observation: the tests
# use it to show response verification blocking what the request-side rules could not predict.
MISBEHAVE_TAG = "smartgate-misbehave"
# With this tag the search also returns a Provenance of the patient's Observation that names another patient.
MISBEHAVE_PROVENANCE_TAG = "smartgate-misbehave-provenance"
# With this tag the (clean) searchset is padded past 1.5 MB: more than Envoy buffers for smartgate.
HUGE_TAG = "smartgate-huge"
HUGE_PADDING_BYTES = 1_500_000
FOREIGN_PROVENANCE = {
    "resourceType": "Provenance",
    "id": "prov-names-456",
    "recorded": "2024-01-01T00:00:00Z",
    "target": [{"reference": "Observation/obs-123-a"}, {"reference": "Patient/456"}],
    "agent": [{"who": {"reference": "Practitioner/prac-1"}}],
}


def _bundle(
    resources: list[dict[str, Any]], summary_count: bool, included: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": len(resources)}
    if not summary_count:
        bundle["entry"] = [{"resource": r, "search": {"mode": "match"}} for r in resources] + [
            {"resource": r, "search": {"mode": "include"}} for r in included or []
        ]
    return bundle


def make_handler(store: FhirStore, base_path: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/fhir+json")
            self.send_header("content-length", str(len(data)))
            received = {k.lower(): v for k, v in self.headers.items() if k.lower().startswith("x-smart-")}
            self.send_header("x-demo-received-smart", json.dumps(received, sort_keys=True))
            self.send_header("x-demo-received-path", self.path)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            self._route("GET", url.path, parse_qsl(url.query, keep_blank_values=True))

        def _read_body(self) -> str:
            length = int(self.headers.get("content-length") or 0)
            return self.rfile.read(length).decode() if length else ""

        def do_POST(self) -> None:
            url = urlsplit(self.path)
            body = self._read_body()
            parts = [p for p in url.path[len(base_path) :].split("/") if p]
            if len(parts) == 1 and self.headers.get("content-type", "").startswith("application/fhir+json"):
                resource = json.loads(body)
                resource.pop("id", None)
                store.put(resource)
                self._send(201, resource)
                return
            params = parse_qsl(url.query, keep_blank_values=True) + parse_qsl(body, keep_blank_values=True)
            self._route("POST", url.path, params)

        def do_PUT(self) -> None:
            resource = json.loads(self._read_body())
            self._send(201 if store.put(resource) else 200, resource)

        def do_DELETE(self) -> None:
            parts = [p for p in urlsplit(self.path).path[len(base_path) :].split("/") if p]
            found = len(parts) == 2 and store.delete(parts[0], parts[1])
            self._send(200 if found else 404, {"resourceType": "OperationOutcome"})

        def _route(self, method: str, path: str, params: list[tuple[str, str]]) -> None:
            if not path.startswith(base_path):
                self._send(404, {"resourceType": "OperationOutcome"})
                return
            parts = [p for p in path[len(base_path) :].split("/") if p]
            count = dict(params).get("_summary") == "count"
            if not parts and method == "GET" and "_getpages" in dict(params):
                # A server-minted paging link (HAPI's form): the page id names the patient whose
                # Observations the page holds, so tests can mint a link to any patient's page.
                patient = dict(params)["_getpages"].removeprefix("page-")
                self._send(200, _bundle(store.search("Observation", [("patient", f"Patient/{patient}")]), False))
            elif parts == ["metadata"]:
                self._send(
                    200,
                    {
                        "resourceType": "CapabilityStatement",
                        "status": "active",
                        "kind": "instance",
                        "fhirVersion": "4.0.1",
                        "format": ["json"],
                    },
                )
            elif parts == [".well-known", "smart-configuration"]:
                self._send(200, {"capabilities": ["launch-standalone", "permission-v2"]})
            elif len(parts) == 1 or (len(parts) == 2 and parts[1] == "_search" and method == "POST"):
                try:
                    tagged = ("_tag", MISBEHAVE_TAG) in params
                    tags = (("_tag", MISBEHAVE_TAG), ("_tag", MISBEHAVE_PROVENANCE_TAG), ("_tag", HUGE_TAG))
                    found = store.search(parts[0], [p for p in params if p not in tags])
                    if tagged:
                        found.append(store.resources[("Observation", "obs-456-a")])
                    included = store.included(found, params)
                    if ("_tag", MISBEHAVE_PROVENANCE_TAG) in params:
                        included.append(FOREIGN_PROVENANCE)
                    answer = _bundle(found, count, included)
                    if ("_tag", HUGE_TAG) in params:
                        answer["meta"] = {"tag": [{"code": "x" * HUGE_PADDING_BYTES}]}
                    self._send(200, answer)
                except RuntimeError:
                    self._send(500, {"resourceType": "OperationOutcome"})
            elif len(parts) == 3 and parts[2] == "_history" and method == "GET":
                # One version per resource: the current one (or a stub for a deleted one).
                existed = (parts[0], parts[1]) in store.ever_existed
                current = store.resources.get((parts[0], parts[1]), {"resourceType": parts[0], "id": parts[1]})
                self._send(200 if existed else 404, _bundle([current] if existed else [], False))
            elif len(parts) == 4 and parts[2] == "_history" and method == "GET":
                resource = store.resources.get((parts[0], parts[1]))
                self._send(200 if resource else 404, resource or {"resourceType": "OperationOutcome"})
            elif len(parts) == 2 and method == "GET":
                resource = store.resources.get((parts[0], parts[1]))
                if resource is None:
                    self._send(404, {"resourceType": "OperationOutcome"})
                else:
                    self._send(200, resource)
            elif len(parts) == 3 and parts[0] == "Patient" and method == "GET":
                param = "link" if parts[2] == "Patient" else "patient"
                found = store.search(parts[2], [*params, (param, f"Patient/{parts[1]}")])
                self._send(200, _bundle(found, count, store.included(found, params)))
            else:
                self._send(404, {"resourceType": "OperationOutcome"})

    return Handler


def start_upstream(host: str, port: int, base_path: str = "/fhir") -> DemoHTTPServer:
    """Start the demo FHIR server in a background thread; returns it (``server_address`` has the port)."""
    server = DemoHTTPServer((host, port), make_handler(FhirStore(SEED), base_path))
    threading.Thread(target=server.serve_forever, name="demo-fhir-upstream", daemon=True).start()
    return server
