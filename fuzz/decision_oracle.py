"""The invariants every CheckResponse must hold, judged independently of smartgate's own code.

1. An explicit status: allow = ``ok_response`` with status OK; deny = ``denied_response`` with a
   non-OK status and a 4xx/5xx HTTP status.
2. An allow without a public route needs a token whose signed content is exactly one the world
   issued and whose signature verifies (checked here with ``cryptography``, not PyJWT).
3. An allow for a patient-context token never mentions another patient (conservatively: in any
   reference-like position, in any encoding we can decode, in the path, query, form body,
   JSON body and Bundle entry URLs).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote_plus

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from envoy.service.auth.v3 import external_auth_pb2
from google.rpc import code_pb2

from fuzz.check_world import (
    ALL_PATIENTS,
    BASE_PATH,
    FHIR_BASE_URL,
    PUBLIC_KEY,
    TOKEN_SPECS,
    TokenSpec,
    token_for,
)
from smartgate.fhir.compartment import BINDING_PARAMS, MEMBERSHIP_PARAMS
from smartgate.fhir.definitions import RESOURCE_TYPES, search_parameter

_PUBLIC_PATHS = (f"{BASE_PATH}/metadata", f"{BASE_PATH}/.well-known/smart-configuration")
_SIGNED_CONTENT: dict[str, TokenSpec] = {token_for(spec).rsplit(".", 1)[0]: spec for spec in TOKEN_SPECS}
# Every parameter that can name a patient by bare id (any type), plus the ones that reach across.
REFERENCE_CODES = frozenset(
    {code for codes in MEMBERSHIP_PARAMS.values() for code in codes}
    | {code for table in BINDING_PARAMS.values() for code in table}
    | {"patient", "subject", "link"}
)
_MAX_DEPTH = 64
# Types whose resources the world's look-up stand-in assigns to a patient by id (``bob9-o1``).
_OWNED_TYPES = frozenset(MEMBERSHIP_PARAMS) | {"Binary"}


def status_problem(response: external_auth_pb2.CheckResponse) -> str | None:
    if not response.HasField("status"):
        return "the CheckResponse has no status"
    kind = response.WhichOneof("http_response")
    if kind == "ok_response":
        return None if response.status.code == code_pb2.OK else "ok_response with a non-OK status"
    if kind == "denied_response":
        if response.status.code == code_pb2.OK:
            return "denied_response with status OK (Envoy would allow)"
        if not 400 <= response.denied_response.status.code <= 599:
            return f"denied_response with HTTP status {response.denied_response.status.code}"
        return None
    return "the CheckResponse has neither ok_response nor denied_response"


def _lenient_b64(segment: str) -> bytes | None:
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        return None


def issued_spec(token: str) -> TokenSpec | None:
    """The TokenSpec whose signed content ``token`` carries with a valid signature, else None."""
    signing_input, _, signature_segment = token.rpartition(".")
    spec = _SIGNED_CONTENT.get(signing_input)
    signature = _lenient_b64(signature_segment)
    if spec is None or signature is None or len(signature) != 64:
        return None
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    try:
        PUBLIC_KEY.verify(der, signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return None
    return spec


def bearer_of(headers: dict[str, str]) -> str | None:
    value = headers.get("authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    return token.strip(" ") if scheme.lower() == "bearer" else None


def is_public(method: str, path: str, headers: dict[str, str]) -> bool:
    if method == "OPTIONS":
        return "origin" in headers and "access-control-request-method" in headers
    route = path.partition("?")[0].rstrip("/")
    return method in ("GET", "HEAD") and route in _PUBLIC_PATHS


def _decodings(text: str, rounds: int = 3) -> Iterator[str]:
    yield text
    for _ in range(rounds):
        decoded = unquote_plus(text, errors="replace")
        if decoded == text:
            return
        text = decoded
        yield text


def _json_strings(node: Any, depth: int = 0) -> Iterator[str]:
    if depth > _MAX_DEPTH:
        return
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from _json_strings(value, depth + 1)
    elif isinstance(node, list):
        for item in node:
            yield from _json_strings(item, depth + 1)


def _mention_pattern(patient: str) -> re.Pattern[str]:
    return re.compile(r"(?i)patient/" + re.escape(patient) + r"(?![A-Za-z0-9.])")


def _id_token_pattern(patient: str) -> re.Pattern[str]:
    return re.compile(r"(?<![A-Za-z0-9\-.])" + re.escape(patient) + r"(?![A-Za-z0-9.])")


def _names_patient_by_id(item: str, patient: str) -> bool:
    """A bare id (``patient=bob9``); typed and absolute references are caught by ``_mention_pattern``."""
    return item.strip() == patient


def _searched_type(route_segments: list[str]) -> str | None:
    """The type a search path searches (``Observation``, ``Patient/x/Observation``), None for system level."""
    searched = [segment for segment in route_segments if segment != "_search"]
    return searched[-1] if searched and searched[-1] in RESOURCE_TYPES else None


def _can_name_patient(searched: str | None, code: str) -> bool:
    """Can this parameter select by a bare patient id? (R4 definitions; unknown parameters cannot:
    a server ignores or refuses them, and the other parameters still bind the search.)"""
    if searched is None:
        return code in REFERENCE_CODES
    if code == "_id":
        return searched == "Patient"
    info = search_parameter(searched, code)
    return info is not None and info.type == "reference" and "Patient" in info.targets


def _query_mentions(query: str, route_segments: list[str], patient: str) -> str | None:
    searched = _searched_type(route_segments)
    id_token = _id_token_pattern(patient)
    for piece in query.split("&"):
        raw_name, _, raw_value = piece.partition("=")
        name = unquote_plus(raw_name, errors="replace")
        code = re.split(r"[:.]", name, maxsplit=1)[0]
        for value in _decodings(raw_value):
            if code.startswith("_has") and (id_token.search(value) or id_token.search(name)):
                return f"_has {name!r}={value!r}"
            if _can_name_patient(searched, code) and any(
                    _names_patient_by_id(item, patient) for item in value.split(",")):
                return f"{name}={value!r}"
    return None


def _reads_query(method: str, last: str) -> bool:
    """Does the server act on this request's query (a search, an operation, a conditional write)?
    A read ignores search parameters and a create ignores the query entirely."""
    if last.startswith("$"):
        return True
    if last not in RESOURCE_TYPES and last not in ("", "_search"):
        return False
    return method in ("GET", "HEAD", "PUT", "PATCH", "DELETE") or last == "_search"


def _url_mentions(url: str, method: str, patient: str, form_body: str = "") -> str | None:
    """Does a request URL (absolute on our base, base-relative, or a path under BASE_PATH) name ``patient``?"""
    for prefix in (FHIR_BASE_URL + "/", BASE_PATH + "/"):
        if url.startswith(prefix):
            url = url[len(prefix):]
            break
    pattern = _mention_pattern(patient)
    route, _, query = url.partition("?")
    segments = []
    for decoded in _decodings(route):
        if pattern.search(decoded):
            return f"the path names Patient/{patient}"
        segments = [segment for segment in decoded.split("/") if segment]
        for previous, segment in zip(["", *segments], segments, strict=False):
            if previous in _OWNED_TYPES and segment.startswith(patient + "-"):
                return f"the path names {previous}/{segment}, a resource of {patient}"
    if not _reads_query(method, segments[-1] if segments else ""):
        return None
    for text in (query, form_body):
        if any(pattern.search(decoded) for decoded in _decodings(text)):
            return f"the query or form names Patient/{patient}"
    return _query_mentions(query, segments, patient) or _query_mentions(form_body, segments, patient)


def _body_mentions(body: bytes, patient: str) -> str | None:
    """A JSON body is literal: ``Patient/%62ob9`` in it is not Patient/bob9 to a FHIR server (ids have no
    ``%``); Bundle entry URLs are URLs, so they are decoded like the request's own."""
    pattern = _mention_pattern(patient)
    if pattern.search(body.decode("utf-8", errors="replace")):
        return "the body names the patient"
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    for string in _json_strings(document):
        if pattern.search(string):  # catches \u escapes
            return f"a JSON string names the patient: {string[:80]!r}"
    entries = document.get("entry") if isinstance(document, dict) else None
    for entry in entries if isinstance(entries, list) else []:
        request = entry.get("request") if isinstance(entry, dict) else None
        url = request.get("url") if isinstance(request, dict) else None
        if isinstance(request, dict) and isinstance(url, str):
            found = _url_mentions(url, str(request.get("method", "")), patient)
            if found:
                return f"Bundle entry url {url[:80]!r}: {found}"
    return None


def other_patient_mention(method: str, path: str, body: bytes, content_type: str, patient: str) -> str | None:
    """Where the request mentions ``patient``, or None (conservative: more mentions than a server would read)."""
    form = body.decode("utf-8", errors="replace") if content_type.startswith("application/x-www-form") else ""
    found = _url_mentions(path, method, patient, form)
    if found:
        return found
    return _body_mentions(body, patient) if body and not form else None


def _header_value(ok: external_auth_pb2.OkHttpResponse, name: str) -> str | None:
    for option in ok.headers:
        if option.header.key == name:
            return str(option.header.value)
    return None


def decision_problem(request: external_auth_pb2.CheckRequest, response: external_auth_pb2.CheckResponse) -> str | None:
    """Why ``response`` breaks an invariant for ``request``, or None when it holds them all."""
    problem = status_problem(response)
    if problem is not None or response.WhichOneof("http_response") != "ok_response":
        return problem
    http = request.attributes.request.http
    headers = dict(http.headers)
    method = http.method.upper()
    if is_public(method, http.path, headers):
        return None
    token = bearer_of(headers)
    spec = issued_spec(token) if token else None
    if spec is None:
        return "allowed a request without a token that verifies"
    injected = _header_value(response.ok_response, "x-smart-patient")
    if injected != spec.patient:
        return f"x-smart-patient is {injected!r} for a token of {spec.patient!r}"
    if spec.patient is None:
        return None
    # Servers read a body only on POST, PUT and PATCH (a GET body has no meaning in HTTP or FHIR).
    body = bytes(http.raw_body) or http.body.encode("utf-8", errors="surrogateescape")
    if method not in ("POST", "PUT", "PATCH"):
        body = b""
    content_type = headers.get("content-type", "").lower()
    for other in ALL_PATIENTS:
        if other == spec.patient:
            continue
        found = other_patient_mention(method, http.path, body, content_type, other)
        if found:
            return f"allowed {spec.name} ({spec.patient}) a request that mentions {other}: {found}"
    return None
