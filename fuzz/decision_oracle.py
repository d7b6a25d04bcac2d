"""The invariants every CheckResponse must hold, judged independently of smartgate's own code.

1. An explicit status: allow = ``ok_response`` with status OK; deny = ``denied_response`` with a
   non-OK status and a 4xx/5xx HTTP status.
2. An allow without a public route needs a token whose signed content is exactly one the world
   issued and whose signature verifies (checked here with ``cryptography``, not PyJWT). An allow for
   the DPoP-bound token also needs the DPoP scheme and a proof, signed by the client's key, for this
   method, URL and token, dated within the window.
3. An allow for a patient-context token never mentions another patient (conservatively: in any
   reference-like position, in any encoding we can decode, in the path, query, form body,
   JSON body and Bundle entry URLs; a parameter name in any case).
4. A narrowed allow (``query_parameters_to_set``, search narrowing) sets only the context patient.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
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
    DPOP_PUBLIC_KEY,
    FHIR_BASE_URL,
    FHIR_ORIGIN,
    NOW,
    PUBLIC_KEY,
    TOKEN_SPECS,
    TokenSpec,
    dpop_public_jwk,
    token_for,
)
from smartgate.fhir.compartment import BINDING_PARAMS, MEMBERSHIP_PARAMS
from smartgate.fhir.definitions import RESOURCE_TYPES, SEARCH_PARAMETERS, SearchParameterInfo, search_parameter

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


def _es256_verifies(public_key: ec.EllipticCurvePublicKey, signing_input: str, signature_segment: str) -> bool:
    signature = _lenient_b64(signature_segment)
    if signature is None or len(signature) != 64:
        return False
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    try:
        public_key.verify(der, signing_input.encode("ascii", "replace"), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def issued_spec(token: str) -> TokenSpec | None:
    """The TokenSpec whose signed content ``token`` carries with a valid signature, else None."""
    signing_input, _, signature_segment = token.rpartition(".")
    spec = _SIGNED_CONTENT.get(signing_input)
    if spec is None or not _es256_verifies(PUBLIC_KEY, signing_input, signature_segment):
        return None
    return spec


def credentials_of(headers: dict[str, str]) -> tuple[str, str] | None:
    """(scheme in lower case, token) for the Bearer and DPoP schemes."""
    value = headers.get("authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    return (scheme.lower(), token.strip(" ")) if scheme.lower() in ("bearer", "dpop") else None


def bearer_of(headers: dict[str, str]) -> str | None:
    credentials = credentials_of(headers)
    return credentials[1] if credentials is not None else None


def _json_segment(segment: str) -> Any:
    raw = _lenient_b64(segment)
    try:
        return json.loads(raw) if raw is not None else None
    except ValueError:
        return None


def proof_problem(headers: dict[str, str], method: str, path: str, token: str) -> str | None:
    """Why the request does not prove possession of the DPoP client's key (RFC 9449), or None."""
    credentials = credentials_of(headers)
    if credentials is None or credentials[0] != "dpop":
        return "without the DPoP scheme"
    proof = headers.get("dpop", "")
    signing_input, _, signature_segment = proof.rpartition(".")
    header_segment, _, claims_segment = signing_input.partition(".")
    header, claims = _json_segment(header_segment), _json_segment(claims_segment)
    if not isinstance(header, dict) or not isinstance(claims, dict):
        return "without a DPoP proof"
    if header.get("typ") != "dpop+jwt" or header.get("alg") != "ES256" or header.get("jwk") != dpop_public_jwk():
        return "with a proof that is not an ES256 dpop+jwt by the client's key"
    if not _es256_verifies(DPOP_PUBLIC_KEY, signing_input, signature_segment):
        return "with a proof whose signature does not verify"
    ath = base64.urlsafe_b64encode(hashlib.sha256(token.encode("ascii", "replace")).digest()).rstrip(b"=").decode()
    expected = {"htm": method, "htu": FHIR_ORIGIN + path.partition("?")[0], "ath": ath}
    if any(claims.get(name) != value for name, value in expected.items()):
        return f"with a proof for another request or token: {claims!r}"
    iat = claims.get("iat")
    if not isinstance(iat, int | float) or isinstance(iat, bool) or not NOW - 120 <= iat <= NOW + 60:
        return "with a stale or future proof"
    return None


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
    if code.lower() == "_id":
        return searched == "Patient"
    info = search_parameter(searched, code) or _case_variant_of(searched, code)
    return info is not None and info.type == "reference" and "Patient" in info.targets


def _case_variant_of(searched: str, code: str) -> SearchParameterInfo | None:
    """A server that folds case reads ``Patient=x`` as ``patient=x``: so does the oracle."""
    for known, info in SEARCH_PARAMETERS.get(searched, {}).items():
        if known.lower() == code.lower():
            return info
    return None


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
                _names_patient_by_id(item, patient) for item in value.split(",")
            ):
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
            url = url[len(prefix) :]
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


def allowed_token(headers: dict[str, str], method: str, path: str) -> TokenSpec | str:
    """The issued token an allow may rest on, or why there is none (invariant 2)."""
    token = bearer_of(headers)
    spec = issued_spec(token) if token else None
    if spec is None:
        return "allowed a request without a token that verifies"
    if spec.bound:
        unproven = proof_problem(headers, method, path, token or "")
        if unproven is not None:
            return f"allowed the DPoP-bound {spec.name} {unproven}"
    return spec


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
    spec = allowed_token(headers, method, http.path)
    if isinstance(spec, str):
        return spec
    injected = _header_value(response.ok_response, "x-smart-patient")
    if injected != spec.patient:
        return f"x-smart-patient is {injected!r} for a token of {spec.patient!r}"
    narrowing = [(parameter.key, parameter.value) for parameter in response.ok_response.query_parameters_to_set]
    if narrowing and (
        spec.patient is None or any(value not in (spec.patient, f"Patient/{spec.patient}") for _, value in narrowing)
    ):
        return f"query_parameters_to_set {narrowing!r} does not narrow to the context patient {spec.patient!r}"
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
