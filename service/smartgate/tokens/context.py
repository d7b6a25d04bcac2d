"""Who is asking: the verified SMART context read out of a token's claims."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from smartgate.config.profiles import ClaimNames, undot_scope
from smartgate.core.reasons import Reason, Refusal
from smartgate.fhir.request import is_valid_id
from smartgate.tokens.binding import Confirmation, confirmation_from_claims
from smartgate.tokens.scopes import ScopeGrants, grants_for

# Header-safe text: printable ASCII and no separators that could split a header.
_HEADER_SAFE = re.compile(r"^[\x20-\x7e]{1,2048}\Z")
_FHIR_USER = re.compile(r"^(Patient|Practitioner|PractitionerRole|RelatedPerson|Person|Device)/[A-Za-z0-9\-.]{1,64}\Z")


@dataclass(frozen=True, slots=True)
class TokenContext:
    issuer: str
    subject: str
    client_id: str
    scope_text: str
    grants: ScopeGrants
    patient: str | None
    fhir_user: str | None
    expires_at: float
    # cnf: the key or certificate the token is bound to. Kept with the cached context; the proof of
    # possession is checked on every request (tokens/sender_constraint.py), never cached.
    confirmation: Confirmation | None = None
    # What later stages derive from this context alone (the allow response's headers, the audit agents),
    # built once per verified token and reused: it lives and is evicted with the cached context. Not an
    # init field, so ``dataclasses.replace`` (a changed context) starts with an empty one.
    memo: dict[object, Any] = field(default_factory=dict, init=False, compare=False, repr=False)


def _first(claims: Mapping[str, Any], names: tuple[str, ...]) -> Any:
    for name in names:
        if name in claims:
            return claims[name]
    return None


def _optional_text(value: Any) -> str | Refusal | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _HEADER_SAFE.match(value):
        return Refusal(Reason.TOKEN_CLAIMS_INVALID, "a context claim is not printable text")
    return value


def _scope_values(value: Any) -> list[str] | Refusal:
    if value is None:
        return []
    if isinstance(value, str):
        values = [value]
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        values = list(value)
    else:
        return Refusal(Reason.TOKEN_CLAIMS_INVALID, "the scope claim must be a string or a list of strings")
    if any(not _HEADER_SAFE.match(item) for item in values if item):
        return Refusal(Reason.TOKEN_CLAIMS_INVALID, "the scope claim is not printable text")
    return values


def normalise_fhir_user(value: str, fhir_base_url: str) -> str:
    """Return ``Type/id`` for a reference on our own base; other absolute URLs stay as they are."""
    prefix = fhir_base_url.rstrip("/") + "/"
    relative = value[len(prefix) :] if value.startswith(prefix) else value
    return relative if _FHIR_USER.match(relative) else value


def context_from_claims(
    claims: Mapping[str, Any], names: ClaimNames, fhir_base_url: str, dotted_scopes: bool = False
) -> TokenContext | Refusal:
    """Read the SMART context out of verified claims; refuse values that cannot be trusted."""
    confirmation = confirmation_from_claims(claims)
    if isinstance(confirmation, Refusal):
        return confirmation
    scope_values = _scope_values(_first(claims, names.scope))
    if isinstance(scope_values, Refusal):
        return scope_values
    if dotted_scopes:
        scope_values = [" ".join(undot_scope(scope) for scope in value.split()) for value in scope_values]
    texts: dict[str, str | None] = {}
    for field_name, claim_names in (
        ("patient", names.patient),
        ("fhir_user", names.fhir_user),
        ("client_id", names.client_id),
        ("subject", names.subject),
    ):
        text = _optional_text(_first(claims, claim_names))
        if isinstance(text, Refusal):
            return text
        texts[field_name] = text
    patient = texts["patient"]
    if patient is not None:
        if patient.startswith("Patient/"):
            patient = patient[len("Patient/") :]
        if not is_valid_id(patient):
            return Refusal(Reason.TOKEN_CLAIMS_INVALID, "the patient claim is not a FHIR id")
    grants = grants_for(tuple(scope_values))
    if grants.has_patient_scopes and patient is None:
        return Refusal(Reason.PATIENT_CONTEXT_MISSING, "patient/ scopes need a patient launch context")
    fhir_user = texts["fhir_user"]
    return TokenContext(
        issuer=str(claims.get("iss", "")),
        subject=texts["subject"] or "",
        client_id=texts["client_id"] or "",
        scope_text=" ".join(" ".join(value.split()) for value in scope_values).strip(),
        grants=grants,
        patient=patient,
        fhir_user=normalise_fhir_user(fhir_user, fhir_base_url) if fhir_user else None,
        expires_at=float(claims["exp"]),
        confirmation=confirmation,
    )
