"""Stage 2a: work out which FHIR interaction an HttpRequest asks for.

The path is interpreted strictly against the FHIR RESTful API (R4): every segment
must be a known resource type, a valid id, or a keyword. Anything else is a
Refusal with a reason code: we deny what we cannot classify.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from smartgate.core.http import HttpRequest
from smartgate.core.reasons import Reason, Refusal
from smartgate.fhir.definitions import RESOURCE_TYPES
from smartgate.fhir.query import QueryError, SearchParam, parse_query

FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}\Z")
_OPERATION = re.compile(r"^\$[A-Za-z][A-Za-z0-9\-_.]*\Z")
_FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
# Servers differ on the URL of a POST _search: some combine it with the body, some (Medplum) read the
# body alone. A parameter the server may ignore must not be what binds or constrains the search, so the
# URL may carry only parameters that shape the result, never ones that select it.
_POST_SEARCH_URL_PARAMS = frozenset(
    {
        "_format",
        "_pretty",
        "_summary",
        "_elements",
        "_count",
        "_sort",
        "_total",
        "_include",
        "_revinclude",
    }
)
METHOD_OVERRIDE_HEADERS = ("x-http-method-override", "x-http-method", "x-method-override")


class Interaction(enum.Enum):
    READ = "read"
    VREAD = "vread"
    SEARCH_TYPE = "search-type"
    SEARCH_COMPARTMENT = "search-compartment"
    SEARCH_SYSTEM = "search-system"
    CAPABILITIES = "capabilities"
    SMART_CONFIGURATION = "smart-configuration"
    CREATE = "create"
    UPDATE = "update"
    PATCH = "patch"
    DELETE = "delete"
    HISTORY_INSTANCE = "history-instance"
    HISTORY_TYPE = "history-type"
    HISTORY_SYSTEM = "history-system"
    BATCH = "batch"
    OPERATION = "operation"


@dataclass(frozen=True, slots=True)
class FhirRequest:
    """A classified FHIR request. ``params`` holds query and form parameters, decoded once."""

    interaction: Interaction
    resource_type: str | None = None
    resource_id: str | None = None
    version_id: str | None = None
    compartment_type: str | None = None  # for /Patient/{id}/{type}: the searched type
    operation: str | None = None
    params: tuple[SearchParam, ...] = ()
    body: bytes | None = None  # the payload of writes, bundles and POSTed operations
    content_type: str = ""
    if_none_exist: bool = False  # conditional create
    method: str = "GET"

    @property
    def conditional(self) -> bool:
        """A type-level write (``PUT/PATCH/DELETE [type]?...``) or a create with If-None-Exist."""
        return self.if_none_exist or (
            self.interaction in (Interaction.UPDATE, Interaction.PATCH, Interaction.DELETE) and self.resource_id is None
        )


def is_valid_id(value: str) -> bool:
    return FHIR_ID.match(value) is not None and value not in (".", "..")


def split_base_path(path: str, base_path: str) -> tuple[list[str], str] | None:
    """Split ``/base/A/B?q`` into (["A", "B"], "q"); None when the path is outside the base."""
    route, _, query = path.partition("?")
    if route == base_path or route == base_path + "/":
        return [], query
    if not route.startswith(base_path + "/"):
        return None
    rest = route[len(base_path) + 1 :]
    if rest.endswith("/"):
        rest = rest[:-1]
    return rest.split("/"), query


def _classify(method: str, segments: list[str]) -> FhirRequest | Refusal:
    count = len(segments)
    if count == 0:
        if method in ("GET", "HEAD"):
            return FhirRequest(Interaction.SEARCH_SYSTEM)
        if method == "POST":
            return FhirRequest(Interaction.BATCH)
        return _bad(Reason.REQUEST_MALFORMED, f"{method} is not a FHIR interaction on the base")
    first = segments[0]
    if count == 1 and first == "metadata":
        return FhirRequest(Interaction.CAPABILITIES)
    if segments == [".well-known", "smart-configuration"]:
        return FhirRequest(Interaction.SMART_CONFIGURATION)
    if first == "_history" and count == 1:
        return FhirRequest(Interaction.HISTORY_SYSTEM)
    if _OPERATION.match(first) and count == 1:
        return FhirRequest(Interaction.OPERATION, operation=first)
    if first == "_search" and count == 1 and method == "POST":
        return FhirRequest(Interaction.SEARCH_SYSTEM)
    if first not in RESOURCE_TYPES:
        return _bad(Reason.UNKNOWN_RESOURCE_TYPE, f"{first[:64]!r} is not a FHIR R4 resource type")
    return _classify_typed(method, first, segments[1:])


def _classify_typed(method: str, resource_type: str, rest: list[str]) -> FhirRequest | Refusal:
    if not rest:
        if method in ("GET", "HEAD"):
            return FhirRequest(Interaction.SEARCH_TYPE, resource_type)
        if method == "POST":
            return FhirRequest(Interaction.CREATE, resource_type)
        if method in ("PUT", "PATCH", "DELETE"):  # conditional forms
            return FhirRequest(_WRITE_INTERACTIONS[method], resource_type)
        return _bad(Reason.REQUEST_MALFORMED, f"{method} is not allowed on a resource type")
    head = rest[0]
    if head == "_search" and len(rest) == 1:
        if method != "POST":
            return _bad(Reason.REQUEST_MALFORMED, "_search must be POSTed")
        return FhirRequest(Interaction.SEARCH_TYPE, resource_type)
    if head == "_history" and len(rest) == 1:
        return FhirRequest(Interaction.HISTORY_TYPE, resource_type)
    if _OPERATION.match(head) and len(rest) == 1:
        return FhirRequest(Interaction.OPERATION, resource_type, operation=head)
    if not is_valid_id(head):
        return _bad(Reason.REQUEST_MALFORMED, "invalid resource id")
    return _classify_instance(method, resource_type, head, rest[1:])


_WRITE_INTERACTIONS = {"PUT": Interaction.UPDATE, "PATCH": Interaction.PATCH, "DELETE": Interaction.DELETE}


def _classify_instance(method: str, resource_type: str, resource_id: str, rest: list[str]) -> FhirRequest | Refusal:
    reading = method in ("GET", "HEAD")
    if not rest:
        if reading:
            return FhirRequest(Interaction.READ, resource_type, resource_id)
        if method in _WRITE_INTERACTIONS:
            return FhirRequest(_WRITE_INTERACTIONS[method], resource_type, resource_id)
        return _bad(Reason.REQUEST_MALFORMED, f"{method} is not allowed on a resource")
    head = rest[0]
    if head == "_history":
        if len(rest) == 1 and reading:
            return FhirRequest(Interaction.HISTORY_INSTANCE, resource_type, resource_id)
        if len(rest) == 2 and reading and is_valid_id(rest[1]):
            return FhirRequest(Interaction.VREAD, resource_type, resource_id, version_id=rest[1])
        return _bad(Reason.REQUEST_MALFORMED, "malformed _history path")
    if _OPERATION.match(head) and len(rest) == 1:
        return FhirRequest(Interaction.OPERATION, resource_type, resource_id, operation=head)
    if head in RESOURCE_TYPES and len(rest) == 1 and reading:
        return FhirRequest(Interaction.SEARCH_COMPARTMENT, resource_type, resource_id, compartment_type=head)
    if head in RESOURCE_TYPES and rest[1:] == ["_search"] and method == "POST":
        return FhirRequest(Interaction.SEARCH_COMPARTMENT, resource_type, resource_id, compartment_type=head)
    return _bad(Reason.REQUEST_MALFORMED, "unrecognised FHIR path")


def _bad(reason: Reason, message: str) -> Refusal:
    return Refusal(reason, message)


def _is_search_post(request: FhirRequest, method: str) -> bool:
    searches = (Interaction.SEARCH_TYPE, Interaction.SEARCH_COMPARTMENT, Interaction.SEARCH_SYSTEM)
    return method == "POST" and request.interaction in searches


def _form_params(http: HttpRequest) -> tuple[SearchParam, ...] | Refusal:
    content_type = http.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != _FORM_CONTENT_TYPE:
        return _bad(Reason.BODY_INVALID, "a POST _search body must be application/x-www-form-urlencoded")
    if http.body is None:
        # An empty body is fine; a body we were not shown is not.
        if http.headers.get("content-length", "") != "0" or "transfer-encoding" in http.headers:
            return _bad(Reason.BODY_INVALID, "the search body did not reach the authorizer")
        return ()
    if http.body_truncated:
        return _bad(Reason.BODY_INVALID, "the search body is truncated")
    try:
        return parse_query(http.body)
    except QueryError as exc:
        return _bad(Reason.BODY_INVALID, f"form body: {exc}")


def _post_search_params(http: HttpRequest, url_params: tuple[SearchParam, ...]) -> tuple[SearchParam, ...] | Refusal:
    """The URL's result-shaping parameters followed by the form body's."""
    misplaced = [param.code for param in url_params if param.code not in _POST_SEARCH_URL_PARAMS]
    if misplaced:
        return _bad(
            Reason.REQUEST_MALFORMED,
            f"a POST _search carries its search parameters in the body, not the URL ({misplaced[0][:64]})",
        )
    form = _form_params(http)
    if isinstance(form, Refusal):
        return form
    return url_params + form


def parse_fhir_request(http: HttpRequest, base_path: str) -> FhirRequest | Refusal:
    """Classify ``http`` relative to ``base_path`` (for example ``/fhir``)."""
    for header in METHOD_OVERRIDE_HEADERS:
        if header in http.headers:
            return _bad(Reason.METHOD_OVERRIDE, f"{header} is not accepted")
    path = http.path
    if "#" in path or "%" in path.partition("?")[0] or "\\" in path:
        return _bad(Reason.REQUEST_MALFORMED, "escapes, fragments and backslashes are not accepted in the path")
    split = split_base_path(path, base_path)
    if split is None:
        return _bad(Reason.PATH_OUTSIDE_BASE, "the path is outside the FHIR base")
    segments, raw_query = split
    if any(segment in ("", ".", "..") for segment in segments):
        return _bad(Reason.REQUEST_MALFORMED, "empty or dot path segment")
    method = "GET" if http.method == "HEAD" else http.method
    classified = _classify(method, segments)
    if isinstance(classified, Refusal):
        return classified
    try:
        params = parse_query(raw_query)
    except QueryError as exc:
        return _bad(Reason.REQUEST_MALFORMED, f"query: {exc}")
    if _is_search_post(classified, method):
        combined = _post_search_params(http, params)
        if isinstance(combined, Refusal):
            return combined
        params = combined
    if any(param.code == "access_token" for param in params):
        return _bad(Reason.TOKEN_NOT_IN_HEADER, "tokens are accepted in the Authorization header only")
    carries_body = method in ("POST", "PUT", "PATCH") and not _is_search_post(classified, method)
    if carries_body and http.body_truncated:
        return _bad(Reason.BODY_INVALID, "the body is truncated")
    return FhirRequest(
        classified.interaction,
        classified.resource_type,
        classified.resource_id,
        classified.version_id,
        classified.compartment_type,
        classified.operation,
        params,
        body=http.body if carries_body else None,
        content_type=http.headers.get("content-type", "").split(";")[0].strip().lower(),
        if_none_exist="if-none-exist" in http.headers,
        method=method,
    )
