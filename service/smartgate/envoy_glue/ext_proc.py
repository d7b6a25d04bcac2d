"""The gRPC face of response verification: envoy.service.ext_proc.v3.ExternalProcessor/Process.

Envoy's ext_proc filter sends the response headers, then the buffered response body. The
verified context comes from ext_authz's dynamic metadata (namespace
``envoy.filters.http.ext_authz``), forwarded by ``metadata_options``: the token is never
re-verified and a client cannot forge it. Responses to anything but a patient-context token
skip body buffering (``mode_override``).

``enforce``: one foreign resource replaces the whole response with 403 and an
OperationOutcome. ``report``: it is logged and counted, and the response passes.

Past the size limit: ``enforce`` refuses the response (403; Envoy itself answers 500 past its buffer).
``report`` never breaks traffic: Envoy sends at most its buffer's worth (``BUFFERED_PARTIAL``, the body
not ending), and a body past ``max_body_bytes`` or cut short passes unchecked, logged with
``response_unchecked`` and counted in ``smartgate_response_checks_skipped_total{reason="too_large"}``.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc
from envoy.type.v3 import http_status_pb2

from smartgate.core.reasons import Reason
from smartgate.envoy_glue.check_response import operation_outcome
from smartgate.fhir.compartment import MEMBERSHIP_PARAMS
from smartgate.policy.response_rules import Finding, ResponseContext, check_response_body
from smartgate.telemetry import metrics
from smartgate.tokens.scopes import ScopeGrants, parse_scopes

log = logging.getLogger("smartgate.response_verifier")
AUTHZ_NAMESPACE = "envoy.filters.http.ext_authz"
_SKIP_BODY = processing_mode_pb2.ProcessingMode(
    response_body_mode=processing_mode_pb2.ProcessingMode.NONE,
    response_trailer_mode=processing_mode_pb2.ProcessingMode.SKIP,
)
_JSON_TYPES = ("application/fhir+json", "application/json", "application/json+fhir")
_ABSENT = ("404", "410")  # the FHIR server's "no such id" and "deleted"
# One answer for every read proven by its response that fails, so a 403 does not tell "no such id" apart.
_UNPROVEN = "the resource is not proven to be the context patient's"


@functools.lru_cache(maxsize=4096)
def _grants(scope_text: str) -> ScopeGrants:
    return parse_scopes([scope_text])


def _header(headers: ext_proc.HttpHeaders, name: str) -> str:
    for header in headers.headers.headers:
        if header.key == name:
            return str(header.value or header.raw_value.decode("latin-1"))
    return ""


def _proven_by_response(handed_over: Mapping[str, Any]) -> bool:
    """The read skipped its look-up (``allowed_verified_by_response``): this stage is its only proof."""
    return bool(handed_over.get("reason") == Reason.ALLOWED_VERIFIED_BY_RESPONSE.code)


def _context_from_metadata(request: ext_proc.ProcessingRequest) -> dict[str, Any] | None:
    fields = request.metadata_context.filter_metadata.get(AUTHZ_NAMESPACE)
    if fields is None:
        return None
    values = {key: value.string_value for key, value in fields.fields.items()}
    return values if values.get("patient") else None


class ResponseVerifier(external_processor_pb2_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    def __init__(
        self,
        mode: str,
        max_body_bytes: int,
        fhir_base_url: str,
        closed_types: frozenset[str],
        write_log: Callable[[dict[str, Any]], None],
        follow_patient_links: bool = False,
        membership: Mapping[str, tuple[str, ...]] = MEMBERSHIP_PARAMS,
        upstream_base_url: str = "",
    ) -> None:
        self._upstream_base_url = upstream_base_url  # fhir.upstream_url: the server's own name for its resources
        self._follow_patient_links = follow_patient_links  # compartment.follow_patient_links, as the policy
        self._membership = membership  # the bound types, as the policy (Device through patient by default)
        self._write_log = write_log  # the decision log's destination (stdout, stderr, a file or off)
        self._enforce = mode == "enforce"
        self._mode = mode
        self._max_body_bytes = max_body_bytes
        self._base_url = fhir_base_url
        self._closed_types = closed_types

    async def Process(  # noqa: N802 - the gRPC method name
        self, request_iterator: AsyncIterator[ext_proc.ProcessingRequest], context: Any
    ) -> AsyncIterator[ext_proc.ProcessingResponse]:
        handed_over: dict[str, Any] | None = None
        async for request in request_iterator:
            if request.HasField("metadata_context") and handed_over is None:
                handed_over = _context_from_metadata(request)
            kind = request.WhichOneof("request")
            if kind == "response_headers":
                yield self._on_headers(request.response_headers, handed_over)
            elif kind == "response_body":
                yield self._on_body(request.response_body, handed_over)
            elif kind == "request_headers":
                yield ext_proc.ProcessingResponse(request_headers=ext_proc.HeadersResponse())
            elif kind == "request_body":
                yield ext_proc.ProcessingResponse(request_body=ext_proc.BodyResponse())
            elif kind == "response_trailers":
                yield ext_proc.ProcessingResponse(response_trailers=ext_proc.TrailersResponse())
            elif kind == "request_trailers":
                yield ext_proc.ProcessingResponse(request_trailers=ext_proc.TrailersResponse())

    def _on_headers(
        self, headers: ext_proc.HttpHeaders, handed_over: dict[str, Any] | None
    ) -> ext_proc.ProcessingResponse:
        if handed_over is None:
            metrics.RESPONSE_CHECKS.labels(self._mode, "skipped").inc()
            return ext_proc.ProcessingResponse(response_headers=ext_proc.HeadersResponse(), mode_override=_SKIP_BODY)
        if _proven_by_response(handed_over) and (headers.end_of_stream or _header(headers, ":status") in _ABSENT):
            # The look-up answers "no such id" and "another patient's" with one 403: so does the response proof.
            return self._violation("the response carries no resource to prove the read by", handed_over, headers=True)
        content_type = _header(headers, "content-type").split(";")[0].strip().lower()
        encoding = _header(headers, "content-encoding").strip().lower()
        unreadable = encoding not in ("", "identity") or (
            content_type not in _JSON_TYPES and handed_over.get("resource_type") != "Binary"
        )
        if unreadable or headers.end_of_stream:
            if unreadable and not headers.end_of_stream:
                return self._violation("the response cannot be read for verification", handed_over, headers=True)
            metrics.RESPONSE_CHECKS.labels(self._mode, "skipped").inc()
            return ext_proc.ProcessingResponse(response_headers=ext_proc.HeadersResponse(), mode_override=_SKIP_BODY)
        return ext_proc.ProcessingResponse(response_headers=ext_proc.HeadersResponse())

    def _on_body(self, body: ext_proc.HttpBody, handed_over: dict[str, Any] | None) -> ext_proc.ProcessingResponse:
        if handed_over is None:
            return ext_proc.ProcessingResponse(response_body=ext_proc.BodyResponse())
        started = time.perf_counter()
        if len(body.body) > self._max_body_bytes or not body.end_of_stream:
            if not self._enforce:
                return self._skip("too_large", handed_over, len(body.body))
            return self._violation("the response is too large to verify", handed_over)
        context = ResponseContext(
            handed_over["patient"],
            _grants(handed_over.get("scope", "")),
            self._base_url,
            self._closed_types,
            self._follow_patient_links,
            self._membership,
            self._upstream_base_url,
        )
        if handed_over.get("resource_type") == "Binary" and not body.body.lstrip().startswith(b"{"):
            findings: list[Finding] = []  # raw Binary content: its securityContext was proven before the read
            checked = 1
        else:
            checked, findings = check_response_body(bytes(body.body), context)
        metrics.RESPONSE_CHECK_SECONDS.observe(time.perf_counter() - started)
        self._log(
            handed_over,
            checked,
            [f"{f.where} {f.resource_type}: {f.problem}" for f in findings],
            len(body.body),
            time.perf_counter() - started,
        )
        if findings:
            return self._violation(f"{findings[0].where}: {findings[0].problem}", handed_over, log_it=False)
        if checked == 0 and _proven_by_response(handed_over):  # e.g. a history of deletions only: nothing proven
            return self._violation("the response carries no resource to prove the read by", handed_over)
        metrics.RESPONSE_CHECKS.labels(self._mode, "clean").inc()
        return ext_proc.ProcessingResponse(response_body=ext_proc.BodyResponse())

    def _skip(self, reason: str, handed_over: dict[str, Any], size: int) -> ext_proc.ProcessingResponse:
        """Report mode lets a response it cannot check through, and says so: counted and logged."""
        metrics.RESPONSE_CHECKS_SKIPPED.labels(reason).inc()
        metrics.RESPONSE_CHECKS.labels(self._mode, "skipped").inc()
        log.warning("response verification (report): a response passed unchecked (%s, %d bytes seen)", reason, size)
        self._log(handed_over, 0, [], size, 0.0, skipped=reason)
        return ext_proc.ProcessingResponse(response_body=ext_proc.BodyResponse())

    def _violation(
        self, message: str, handed_over: dict[str, Any], headers: bool = False, log_it: bool = True
    ) -> ext_proc.ProcessingResponse:
        metrics.RESPONSE_CHECKS.labels(self._mode, "blocked" if self._enforce else "reported").inc()
        if log_it:
            self._log(handed_over, 0, [message], 0, 0.0)
        if not self._enforce:
            log.warning("response verification (report): %s", message)
            if headers:
                return ext_proc.ProcessingResponse(
                    response_headers=ext_proc.HeadersResponse(), mode_override=_SKIP_BODY
                )
            return ext_proc.ProcessingResponse(response_body=ext_proc.BodyResponse())
        reason = Reason.RESPONSE_FOREIGN_RESOURCE
        shown = _UNPROVEN if _proven_by_response(handed_over) else message  # the log keeps the finding
        immediate = ext_proc.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=reason.http_status),
            body=operation_outcome(reason, f"the response was withheld: {shown}"),
            details=reason.code,
        )
        immediate.headers.set_headers.append(
            base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key="content-type", raw_value=b"application/fhir+json"),
                append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
            )
        )
        return ext_proc.ProcessingResponse(immediate_response=immediate)

    def _log(
        self,
        handed_over: dict[str, Any],
        checked: int,
        findings: list[str],
        size: int,
        seconds: float,
        skipped: str = "",
    ) -> None:
        outcome = ("blocked" if self._enforce else "reported") if findings else "clean"
        reason = Reason.RESPONSE_FOREIGN_RESOURCE if findings else Reason.RESPONSE_CLEAN
        if skipped:
            outcome, reason = "skipped", Reason.RESPONSE_UNCHECKED
        entry = {
            "time": round(time.time(), 3),
            "stage": "response",
            "mode": self._mode,
            "request_id": handed_over.get("request_id", ""),
            "patient": handed_over.get("patient", ""),
            "interaction": handed_over.get("interaction", ""),
            "resource_type": handed_over.get("resource_type", ""),
            "outcome": outcome,
            "reason": reason.code,
            **({"skipped": skipped} if skipped else {}),
            "resources_checked": checked,
            "findings": findings[:5],
            "bytes": size,
            "latency_ms": round(seconds * 1000, 3),
        }
        self._write_log(entry)
