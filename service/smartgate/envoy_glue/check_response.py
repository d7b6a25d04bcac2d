"""Stage 4: turn a Decision into Envoy's CheckResponse.

Every response sets ``status`` explicitly (Envoy reads an unset status as OK).
Allow: the verified context headers are set with OVERWRITE_IF_EXISTS_OR_ADD, and every
context header without a value is removed, so a client can never smuggle one through.
A narrowed search also carries ``query_parameters_to_set`` (``patient=<ctx>``).
Deny: the HTTP status, ``WWW-Authenticate`` (RFC 6750) and a FHIR OperationOutcome.
"""

from __future__ import annotations

import json
import re
from typing import NamedTuple

from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2
from envoy.type.v3 import http_status_pb2
from google.rpc import code_pb2, status_pb2

from smartgate.config.model import HeaderNames
from smartgate.core.reasons import Reason
from smartgate.policy.decision import Decision
from smartgate.tokens.context import TokenContext

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_OK = status_pb2.Status(code=code_pb2.OK)
_MAX_REQUEST_ID = 200  # x-request-id is client-chosen; the response stage logs it, bounded
# Removed from a read proven by its response, so that the FHIR server answers the resource, not a 304 or a 412
# (either would tell that the id exists, with no resource to prove it the patient's).
_CONDITIONAL_READ_HEADERS = ("if-none-match", "if-modified-since", "if-match", "if-unmodified-since")
_UNAUTHENTICATED = status_pb2.Status(code=code_pb2.UNAUTHENTICATED)
_PERMISSION_DENIED = status_pb2.Status(code=code_pb2.PERMISSION_DENIED)
_UNAVAILABLE = status_pb2.Status(code=code_pb2.UNAVAILABLE)

_ISSUE_CODES = {400: "invalid", 401: "login", 403: "forbidden", 500: "exception", 503: "transient"}


def _header(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=key, value=value), append_action=_OVERWRITE)


_NOT_QDTEXT = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")


def _quoted(text: str) -> str:
    """RFC 6750 section 3: error_description and realm use %x20-21 / %x23-5B / %x5D-7E only."""
    return _NOT_QDTEXT.sub("_", text)


def www_authenticate(reason: Reason, realm: str, message: str, dpop_algs: tuple[str, ...] = ()) -> str | None:
    """The RFC 6750 challenge for a denial, or None where none applies (5xx). A DPoP failure gets the
    RFC 9449 section 7.1 challenge instead: scheme ``DPoP`` and ``algs``, the proof algorithms accepted."""
    if reason.http_status >= 500:
        return None
    dpop = reason.dpop_challenge
    parts = [f'{"DPoP" if dpop else "Bearer"} realm="{_quoted(realm)}"']
    if reason.bearer_error is not None:
        parts.append(f'error="{reason.bearer_error}"')
        parts.append(f'error_description="{_quoted(message)}"')
    if dpop and dpop_algs:
        parts.append(f'algs="{_quoted(" ".join(dpop_algs))}"')
    return ", ".join(parts)


def operation_outcome(reason: Reason, message: str) -> bytes:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": _ISSUE_CODES.get(reason.http_status, "forbidden"),
                "details": {
                    "coding": [{"system": "https://smartgate.dev/reason", "code": reason.code}],
                    "text": message,
                },
                "diagnostics": f"smartgate: {reason.code}",
            }
        ],
    }
    return json.dumps(outcome, separators=(",", ":")).encode("utf-8")


class _AllowParts(NamedTuple):
    """One token's allow answer for one builder. ``response`` is shared by that token's requests and
    never mutated: a request that adds its own parts gets a copy."""

    response: external_auth_pb2.CheckResponse
    handing_over: bool  # the response stage verifies this token's responses (patient context, patient/ scopes)


class ResponseBuilder:
    def __init__(
        self, header_names: HeaderNames, realm: str, hand_over_context: bool = False, dpop_algs: tuple[str, ...] = ()
    ) -> None:
        self._names = header_names
        self._realm = realm
        self._dpop_algs = dpop_algs  # the DPoP challenge's algs (RFC 9449 section 7.1)
        self._hand_over = hand_over_context  # for response verification (ext_proc)
        self._anonymous = self._build_allow_parts(None)  # a public route: every context header removed

    def build(self, decision: Decision, request_id: str = "") -> external_auth_pb2.CheckResponse:
        if decision.allowed:
            return self._allow(decision, request_id)
        return self._deny(decision)

    def _allow(self, decision: Decision, request_id: str) -> external_auth_pb2.CheckResponse:
        context = decision.context
        parts = self._allow_parts(context)
        narrowed = decision.query_parameters_to_set
        proven_by_response = decision.reason is Reason.ALLOWED_VERIFIED_BY_RESPONSE
        if proven_by_response and not parts.handing_over:  # nothing would check the response: fail closed
            return self._deny(Decision(Reason.INTERNAL_ERROR, "the response cannot be verified"))
        if not (narrowed or proven_by_response or parts.handing_over):
            return parts.response  # nothing of this request's own: the token's answer as it is
        response = external_auth_pb2.CheckResponse()
        response.CopyFrom(parts.response)
        ok = response.ok_response
        for key, value in narrowed:  # search narrowing: Envoy replaces any same-name one
            ok.query_parameters_to_set.append(base_pb2.QueryParameter(key=key, value=value))
        if proven_by_response:
            # A 304 or a bodiless answer proves nothing: the FHIR server must send the resource to be checked.
            ok.headers_to_remove.extend(_CONDITIONAL_READ_HEADERS)
        if parts.handing_over:  # the token's part (patient, scope) is in the copy already
            fields = response.dynamic_metadata.fields
            fields["interaction"].string_value = decision.interaction
            fields["resource_type"].string_value = decision.resource_type
            fields["request_id"].string_value = request_id[:_MAX_REQUEST_ID]
            fields["reason"].string_value = decision.reason.code  # allowed_verified_by_response: the response proves it
        return response

    def _allow_parts(self, context: TokenContext | None) -> _AllowParts:
        """The token's allow answer, built on its first allow and kept in the context's memo: the
        ``x-smart-*`` values and the removal list do not change between requests of one token, and the
        memo is evicted with the cached context (a changed context is a new object with an empty memo)."""
        if context is None:
            return self._anonymous
        parts = context.memo.get(self)
        if not isinstance(parts, _AllowParts):
            parts = context.memo[self] = self._build_allow_parts(context)
        return parts

    def _build_allow_parts(self, context: TokenContext | None) -> _AllowParts:
        ok = external_auth_pb2.OkHttpResponse()
        names = self._names
        values: tuple[tuple[str, str | None], ...] = (
            (names.patient, context.patient if context else None),
            (names.fhir_user, context.fhir_user if context else None),
            (names.scope, context.scope_text if context else None),
            (names.client_id, context.client_id if context else None),
            (names.subject, context.subject if context else None),
            (names.issuer, context.issuer if context else None),
        )
        for name, value in values:
            if value:
                ok.headers.append(_header(name, value))
            else:
                ok.headers_to_remove.append(name)
        response = external_auth_pb2.CheckResponse(status=_OK, ok_response=ok)
        handing_over = bool(
            self._hand_over and context is not None and context.patient and context.grants.has_patient_scopes
        )
        if handing_over and context is not None:
            # Emitted by Envoy as dynamic metadata (namespace envoy.filters.http.ext_authz) for ext_proc;
            # each request adds its own interaction, resource type, request id and reason.
            response.dynamic_metadata.update({"patient": context.patient, "scope": context.scope_text})
        return _AllowParts(response, handing_over)

    def _deny(self, decision: Decision) -> external_auth_pb2.CheckResponse:
        reason = decision.reason
        denied = external_auth_pb2.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=reason.http_status),
            body=operation_outcome(reason, decision.message).decode("utf-8"),
        )
        denied.headers.append(_header("content-type", "application/fhir+json"))
        denied.headers.append(_header("cache-control", "no-store"))
        challenge = www_authenticate(reason, self._realm, decision.message, self._dpop_algs)
        if challenge is not None:
            denied.headers.append(_header("www-authenticate", challenge))
        if reason.http_status == 401:
            status = _UNAUTHENTICATED
        elif reason.http_status >= 500:
            status = _UNAVAILABLE
        else:
            status = _PERMISSION_DENIED
        return external_auth_pb2.CheckResponse(status=status, denied_response=denied)
