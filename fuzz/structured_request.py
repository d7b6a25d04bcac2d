"""Structured inputs for the fuzzer: a FuzzedDataProvider steers the choice of token, method,
path, parameters, body and headers from FHIR-shaped vocabularies, so the fuzzer reaches the
policy instead of dying in the parsers. Patient ids come from the world, so the oracle can
tell when a request names another patient."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol

from envoy.service.auth.v3 import external_auth_pb2

from fuzz.check_world import ALL_PATIENTS, BASE_PATH, FHIR_BASE_URL, check_request, dpop_proof

CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"
TYPES = (
    "Observation",
    "Patient",
    "Condition",
    "Encounter",
    "Practitioner",
    "Binary",
    "Coverage",
    "MedicationRequest",
    "Bundle",
    "Organization",
    "DiagnosticReport",
    "AllergyIntolerance",
    "Task",
)
METHODS = ("GET", "GET", "GET", "HEAD", "POST", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
PATHS = (
    "{T}",
    "{T}",
    "{T}/{ID}",
    "{T}/{ID}",
    "{T}/{ID}/_history",
    "{T}/{ID}/_history/1",
    "Patient/{P}/{T}",
    "Patient/{P}",
    "Patient/{P}/$everything",
    "{T}/_search",
    "Patient/{P}/{T}/_search",
    "",
    "metadata",
    ".well-known/smart-configuration",
    "{T}/$export",
    "_history",
    "{T}/_history",
    "$export",
    "_search",
    "{T}/{ID}/$validate",
    "{RAW}",
)
PARAMS = (
    "patient={P}",
    "patient={P}",
    "patient=Patient/{P}",
    "subject=Patient/{P}",
    "subject:Patient={P}",
    "subject={BASE}/Patient/{P}",
    "patient={P},{Q}",
    "patient={P}&patient={Q}",
    "subject.identifier={P}",
    "patient._id={P}",
    "patient:Patient._id={P}",
    "_has:Observation:patient:_id={P}",
    "_id={P}",
    "_id={ID}",
    "code=1234",
    "category={CAT}",
    "_include=Observation:subject",
    "_include=Observation:patient",
    "_revinclude=Observation:subject",
    "_include:iterate=*",
    "_count=5",
    "performer={P}",
    "performer=Patient/{P}",
    "general-practitioner=Patient/{P}",
    "link=Patient/{P}",
    "_type=Observation",
    "_filter=patient eq {P}",
    "date=ge2020",
    "_summary=count",
    "beneficiary=Patient/{P}",
    "encounter=Encounter/{ID}",
    "{RAW}={RAWV}",
)
CONTENT_TYPES = (
    "application/fhir+json",
    "application/json",
    "application/x-www-form-urlencoded",
    "application/json-patch+json",
    "text/plain",
    "application/fhir+json; charset=utf-8",
    "",
)
BODIES = ("none", "form", "resource", "bundle", "patch", "raw")


class DataProvider(Protocol):
    """The part of atheris.FuzzedDataProvider this module uses."""

    def ConsumeIntInRange(self, low: int, high: int) -> int: ...  # noqa: N802
    def ConsumeBool(self) -> bool: ...  # noqa: N802
    def ConsumeUnicodeNoSurrogates(self, count: int) -> str: ...  # noqa: N802
    def ConsumeBytes(self, count: int) -> bytes: ...  # noqa: N802


def _pick(fdp: DataProvider, values: tuple[str, ...]) -> str:
    return values[fdp.ConsumeIntInRange(0, len(values) - 1)]


def _percent(text: str) -> str:
    return "".join(f"%{byte:02X}" for byte in text.encode("utf-8"))


def _patient(fdp: DataProvider, own: str) -> str:
    """Mostly the token's own patient; sometimes another, sometimes in an encoded form."""
    choice = fdp.ConsumeIntInRange(0, 9)
    patient = own if choice < 5 else ALL_PATIENTS[choice % len(ALL_PATIENTS)]
    form = fdp.ConsumeIntInRange(0, 7)
    if form == 0:
        return _percent(patient)
    if form == 1:
        return patient.upper()
    return patient


def _fill(template: str, fdp: DataProvider, own: str) -> str:
    values: dict[str, Callable[[], str]] = {
        "{P}": lambda: _patient(fdp, own),
        "{Q}": lambda: _patient(fdp, own),
        "{T}": lambda: _pick(fdp, TYPES),
        "{ID}": lambda: _pick(fdp, (f"{own}-o1", f"{_patient(fdp, own)}-o2", "x1", own)),
        "{BASE}": lambda: FHIR_BASE_URL,
        "{CAT}": lambda: CATEGORY,
        "{RAW}": lambda: fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 12)),
        "{RAWV}": lambda: fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 24)),
    }
    for placeholder, produce in values.items():
        while placeholder in template:
            template = template.replace(placeholder, produce(), 1)
    return template


def _query(fdp: DataProvider, own: str) -> str:
    return "&".join(_fill(_pick(fdp, PARAMS), fdp, own) for _ in range(fdp.ConsumeIntInRange(0, 4)))


def _relative_url(fdp: DataProvider, own: str) -> str:
    path = _fill(_pick(fdp, PATHS), fdp, own)
    query = _query(fdp, own)
    return f"{path}?{query}" if query else path


def _resource(fdp: DataProvider, own: str, resource_type: str | None = None) -> dict[str, Any]:
    kind = resource_type or _pick(fdp, TYPES)
    resource: dict[str, Any] = {"resourceType": kind, "status": "final", "code": {"text": "fuzz"}}
    element = _pick(fdp, ("subject", "patient", "beneficiary", "performer", "note"))
    reference = _pick(fdp, ("Patient/{P}", "{BASE}/Patient/{P}", "{P}", "urn:uuid:1", "#c1"))
    resource[element] = {"reference": _fill(reference, fdp, own)}
    if fdp.ConsumeBool():
        resource["id"] = _fill("{ID}", fdp, own)
    if fdp.ConsumeIntInRange(0, 7) == 0:
        resource["contained"] = [{"resourceType": "Patient", "id": "c1"}]
    return resource


def _body(fdp: DataProvider, own: str, path: str) -> bytes | None:
    kind = _pick(fdp, BODIES)
    if kind == "form":
        return _query(fdp, own).encode("utf-8")
    if kind == "resource":
        segments = path.partition("?")[0].split("/")
        return json.dumps(_resource(fdp, own, segments[2] if len(segments) > 2 else None)).encode("utf-8")
    if kind == "bundle":
        entries = []
        for _ in range(fdp.ConsumeIntInRange(0, 3)):
            method = _pick(fdp, ("GET", "POST", "PUT", "DELETE", "PATCH"))
            entry: dict[str, Any] = {"request": {"method": method, "url": _relative_url(fdp, own)}}
            if method in ("POST", "PUT") or fdp.ConsumeBool():
                entry["resource"] = _resource(fdp, own)
            entries.append(entry)
        bundle_type = _pick(fdp, ("batch", "transaction", "collection"))
        bundle = {"resourceType": "Bundle", "type": bundle_type, "entry": entries}
        return json.dumps(bundle).encode("utf-8")
    if kind == "patch":
        operation = {
            "op": _pick(fdp, ("replace", "add", "remove", "test")),
            "path": _pick(fdp, ("/status", "/subject", "/subject/reference", "/id", "/meta", "/note")),
            "value": _fill(_pick(fdp, ("final", "Patient/{P}", "{P}")), fdp, own),
        }
        return json.dumps([operation]).encode("utf-8")
    if kind == "raw":
        return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64))
    return None


def _authorization(fdp: DataProvider, tokens: list[str], index: int) -> str | None:
    choice = fdp.ConsumeIntInRange(0, 9)
    if choice < 6:
        return f"Bearer {tokens[index]}"
    if choice == 6:  # a valid token with one character changed
        token = tokens[fdp.ConsumeIntInRange(0, len(tokens) - 1)]
        where = fdp.ConsumeIntInRange(0, len(token) - 1)
        replacement = fdp.ConsumeUnicodeNoSurrogates(1) or "A"
        return f"Bearer {token[:where]}{replacement}{token[where + 1 :]}"
    if choice == 7:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 40))
    return None


def _prove(fdp: DataProvider, headers: dict[str, str], token: str, method: str, path: str) -> None:
    """For the DPoP-bound token: mostly the DPoP scheme with a fresh valid proof, else one defect."""
    choice = fdp.ConsumeIntInRange(0, 5)
    headers["authorization"] = f"{'Bearer' if choice == 4 else 'DPoP'} {token}"
    if choice == 3:
        return
    if choice == 5:
        other_method = _pick(fdp, METHODS)
        other_path = f"{BASE_PATH}/{_pick(fdp, TYPES)}"
        headers["dpop"] = dpop_proof(other_method, other_path, token)
        return
    headers["dpop"] = dpop_proof(method, path, token)


def build_structured(
    fdp: DataProvider, tokens: list[str], token_patients: list[str | None], bound: tuple[bool, ...] = ()
) -> external_auth_pb2.CheckRequest:
    """A FHIR-shaped CheckRequest around one of ``tokens`` (whose patients are ``token_patients``;
    ``bound[i]``: token ``i`` is DPoP-bound and gets a proof, or a defective one)."""
    index = fdp.ConsumeIntInRange(0, len(tokens) - 1)
    own = token_patients[index] or ALL_PATIENTS[0]
    method = _pick(fdp, METHODS)
    url = _relative_url(fdp, own)
    path = f"{BASE_PATH}/{url}" if url else BASE_PATH
    headers: dict[str, str] = {}
    authorization = _authorization(fdp, tokens, index)
    if authorization is not None:
        headers["authorization"] = authorization
        if index < len(bound) and bound[index] and authorization == f"Bearer {tokens[index]}":
            _prove(fdp, headers, tokens[index], method, path)
    body = _body(fdp, own, path) if method in ("POST", "PUT", "PATCH") or fdp.ConsumeIntInRange(0, 7) == 0 else None
    content_type = _pick(fdp, CONTENT_TYPES)
    if content_type:
        headers["content-type"] = content_type
    extra = fdp.ConsumeIntInRange(0, 11)
    if extra == 0:
        headers["if-none-exist"] = _fill("patient={P}", fdp, own)
    elif extra == 1:
        headers["x-http-method-override"] = "GET"
    elif extra == 2:
        headers["x-smart-patient"] = _fill("{P}", fdp, own)
    elif extra == 3:
        headers["origin"] = "https://app.example.org"
        headers["access-control-request-method"] = "GET"
    elif extra == 4:
        headers[fdp.ConsumeUnicodeNoSurrogates(8).lower() or "x"] = fdp.ConsumeUnicodeNoSurrogates(16)
    request = check_request(path, method, headers, body)
    if body is not None and fdp.ConsumeIntInRange(0, 9) == 0:
        request.attributes.request.http.headers["content-length"] = str(len(body) + 1)  # a truncated body
    return request
