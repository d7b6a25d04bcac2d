"""Reason codes: every decision carries one, and each maps to an HTTP status.

The code is what appears in logs, metrics and the OperationOutcome, so its value
set is bounded and stable. Add new codes here, never ad hoc strings elsewhere.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Reason(enum.Enum):
    """A reason code together with the HTTP status and RFC 6750 error it implies."""

    # Allowed outcomes.
    ALLOWED_PUBLIC_ROUTE = ("allowed_public_route", 200, None)
    ALLOWED_BY_SCOPE = ("allowed_by_scope", 200, None)
    ALLOWED_OUTSIDE_COMPARTMENT = ("allowed_outside_compartment", 200, None)
    ALLOWED_COMPARTMENT_SEARCH = ("allowed_compartment_search", 200, None)
    ALLOWED_NARROWED = ("allowed_narrowed", 200, None)  # a search narrowed to the context patient
    ALLOWED_CONTEXT_PATIENT = ("allowed_context_patient", 200, None)
    ALLOWED_COMPARTMENT_MEMBER = ("allowed_compartment_member", 200, None)
    ALLOWED_VERIFIED_BY_RESPONSE = ("allowed_verified_by_response", 200, None)  # proven by ext_proc, not looked up
    ALLOWED_WRITE = ("allowed_write", 200, None)
    ALLOWED_BUNDLE = ("allowed_bundle", 200, None)
    ALLOWED_OPERATION = ("allowed_operation", 200, None)
    ALLOWED_PAGING_LINK = ("allowed_paging_link", 200, None)
    RESPONSE_CLEAN = ("response_clean", 200, None)  # response verification found nothing foreign
    # report mode only: a response too large to check passed unchecked (counted, logged; enforce refuses it)
    RESPONSE_UNCHECKED = ("response_unchecked", 200, None)

    # 401: no usable token.
    TOKEN_MISSING = ("token_missing", 401, None)
    AUTHENTICATION_SCHEME_UNSUPPORTED = ("authentication_scheme_unsupported", 401, None)  # RFC 6750 section 3.1
    TOKEN_MALFORMED = ("token_malformed", 401, "invalid_token")
    TOKEN_ALGORITHM_NOT_ALLOWED = ("token_algorithm_not_allowed", 401, "invalid_token")
    TOKEN_TYPE_NOT_ALLOWED = ("token_type_not_allowed", 401, "invalid_token")
    TOKEN_UNKNOWN_ISSUER = ("token_unknown_issuer", 401, "invalid_token")
    TOKEN_UNKNOWN_KEY = ("token_unknown_key", 401, "invalid_token")
    TOKEN_BAD_SIGNATURE = ("token_bad_signature", 401, "invalid_token")
    TOKEN_EXPIRED = ("token_expired", 401, "invalid_token")
    TOKEN_NOT_YET_VALID = ("token_not_yet_valid", 401, "invalid_token")
    TOKEN_AUDIENCE_MISMATCH = ("token_audience_mismatch", 401, "invalid_token")
    TOKEN_CLAIMS_INVALID = ("token_claims_invalid", 401, "invalid_token")
    PATIENT_CONTEXT_MISSING = ("patient_context_missing", 401, "invalid_token")
    TOKEN_INACTIVE = ("token_inactive", 401, "invalid_token")
    # Sender-constrained tokens (RFC 9449 DPoP, RFC 8705 certificate-bound). A code starting with
    # ``dpop_`` is answered with the DPoP challenge (RFC 9449 section 7.1), every other with Bearer.
    DPOP_PROOF_MISSING = ("dpop_proof_missing", 401, "invalid_dpop_proof")
    DPOP_PROOF_INVALID = ("dpop_proof_invalid", 401, "invalid_dpop_proof")
    DPOP_PROOF_REPLAYED = ("dpop_proof_replayed", 401, "invalid_dpop_proof")
    DPOP_BINDING_MISMATCH = ("dpop_binding_mismatch", 401, "invalid_token")  # proof key is not cnf.jkt
    DPOP_TOKEN_AS_BEARER = ("dpop_token_as_bearer", 401, "invalid_token")  # RFC 9449 section 7.2
    DPOP_TOKEN_UNBOUND = ("dpop_token_unbound", 401, "invalid_token")  # DPoP scheme, token without cnf.jkt
    CERTIFICATE_BINDING_MISSING = ("certificate_binding_missing", 401, "invalid_token")
    CERTIFICATE_BINDING_MISMATCH = ("certificate_binding_mismatch", 401, "invalid_token")
    TOKEN_BINDING_UNSUPPORTED = ("token_binding_unsupported", 401, "invalid_token")  # a cnf member we cannot check
    BEARER_TOKEN_NOT_ALLOWED = ("bearer_token_not_allowed", 401, "invalid_token")  # sender_constraint: required

    # 400: the request itself cannot be interpreted safely.
    AUTHORIZATION_HEADER_MALFORMED = ("authorization_header_malformed", 400, "invalid_request")
    TOKEN_NOT_IN_HEADER = ("token_not_in_header", 400, "invalid_request")
    REQUEST_MALFORMED = ("request_malformed", 400, "invalid_request")
    UNKNOWN_RESOURCE_TYPE = ("unknown_resource_type", 400, "invalid_request")
    BODY_INVALID = ("body_invalid", 400, "invalid_request")
    METHOD_OVERRIDE = ("method_override", 400, "invalid_request")

    # 403: understood, authenticated, not permitted.
    PATH_OUTSIDE_BASE = ("path_outside_base", 403, "insufficient_scope")
    INTERACTION_NOT_SUPPORTED = ("interaction_not_supported", 403, "insufficient_scope")
    SCOPE_INSUFFICIENT = ("scope_insufficient", 403, "insufficient_scope")
    COMPARTMENT_UNBOUND = ("compartment_unbound", 403, "insufficient_scope")
    COMPARTMENT_OTHER_PATIENT = ("compartment_other_patient", 403, "insufficient_scope")
    COMPARTMENT_AMBIGUOUS = ("compartment_ambiguous", 403, "insufficient_scope")
    SEARCH_PARAMETER_NOT_PERMITTED = ("search_parameter_not_permitted", 403, "insufficient_scope")
    INCLUDE_NOT_PERMITTED = ("include_not_permitted", 403, "insufficient_scope")
    NOT_IN_COMPARTMENT = ("not_in_compartment", 403, "insufficient_scope")
    CONDITIONAL_NOT_PERMITTED = ("conditional_not_permitted", 403, "insufficient_scope")
    OPERATION_NOT_PERMITTED = ("operation_not_permitted", 403, "insufficient_scope")
    BUNDLE_ENTRY_DENIED = ("bundle_entry_denied", 403, "insufficient_scope")
    RESPONSE_FOREIGN_RESOURCE = ("response_foreign_resource", 403, "insufficient_scope")

    # 5xx: we could not decide, so we deny.
    LOOKUP_FAILED = ("lookup_failed", 503, None)
    JWKS_UNAVAILABLE = ("jwks_unavailable", 503, None)
    INTROSPECTION_FAILED = ("introspection_failed", 503, None)
    DPOP_REPLAY_CACHE_FULL = ("dpop_replay_cache_full", 503, None)  # cannot remember one more jti: fail closed
    INTERNAL_ERROR = ("internal_error", 500, None)

    def __init__(self, code: str, http_status: int, bearer_error: str | None) -> None:
        self.code = code
        self.http_status = http_status
        self.bearer_error = bearer_error

    @property
    def allows(self) -> bool:
        return self.http_status == 200

    @property
    def dpop_challenge(self) -> bool:
        """Answered with ``WWW-Authenticate: DPoP`` rather than ``Bearer`` (RFC 9449 section 7.1)."""
        return self.code.startswith("dpop_") and self.http_status == 401


@dataclass(frozen=True, slots=True)
class Refusal:
    """A step's answer when it will not go on: the reason code and a message for the caller.

    A value returned, not an exception raised: the bearer, token, claims, introspection and
    request-parsing steps each return ``Result | Refusal``, and the authorizer turns a Refusal
    into a deny Decision as it is, without re-wrapping.
    """

    reason: Reason
    message: str
