"""Bundles have their own module because each entry is a request of its own, decided by whatever decides requests.

Batch and transaction Bundles POSTed to the base: every entry is checked as if it were its
own request (method, url, body). One denied entry denies the whole Bundle, and the
OperationOutcome names the entry. The entry decider comes in as a parameter (HAPI's
``IRuleApplier``), so this module never imports the dispatcher in ``smartgate.policy``.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any
from urllib.parse import urlsplit

from smartgate.core.http import HttpRequest
from smartgate.core.reasons import Reason, Refusal
from smartgate.fhir.request import FhirRequest, Interaction, parse_fhir_request
from smartgate.policy.base import DenyError, PolicySettings, Rule, decision
from smartgate.policy.decision import Decision
from smartgate.policy.plan import LookupCheck, Pending
from smartgate.tokens.context import TokenContext

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})
# A conforming server ignores a resource on these entries, but an entry that carries one is malformed, and
# a server that reads it would act on data the policy never looked at.
_BODILESS_METHODS = frozenset({"GET", "HEAD", "DELETE"})


def _bundle(request: FhirRequest, settings: PolicySettings) -> list[dict[str, Any]]:
    if request.content_type not in ("application/fhir+json", "application/json", ""):
        raise DenyError(Reason.BODY_INVALID, "the Bundle must be application/fhir+json")
    try:
        bundle = json.loads(request.body or b"")
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nested too deep
        raise DenyError(Reason.BODY_INVALID, "the Bundle is not JSON") from exc
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise DenyError(Reason.BODY_INVALID, "a POST to the base must carry a Bundle")
    if bundle.get("type") not in ("batch", "transaction"):
        raise DenyError(Reason.BODY_INVALID, "only batch and transaction Bundles are processed")
    entries = bundle.get("entry") or []
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise DenyError(Reason.BODY_INVALID, "Bundle.entry must be a list of entries")
    if len(entries) > settings.max_bundle_entries:
        raise DenyError(Reason.BODY_INVALID, f"more than {settings.max_bundle_entries} entries")
    return entries


def _entry_request(entry: dict[str, Any], base_path: str, fhir_base_url: str) -> HttpRequest:
    request = entry.get("request")
    if not isinstance(request, dict):
        raise DenyError(Reason.BODY_INVALID, "the entry has no request")
    method, url = request.get("method"), request.get("url")
    if method not in _METHODS or not isinstance(url, str) or not url:
        raise DenyError(Reason.BODY_INVALID, "the entry request needs a method and a url")
    prefix = fhir_base_url.rstrip("/") + "/"
    if url.startswith(prefix):
        url = url[len(prefix) :]
    elif "://" in url or url.startswith("/"):
        raise DenyError(Reason.BODY_INVALID, "the entry url must be relative to this FHIR server")
    headers = {"content-type": "application/fhir+json"}
    if request.get("ifNoneExist"):
        headers["if-none-exist"] = str(request["ifNoneExist"])
    resource = entry.get("resource")
    if resource is not None and method in _BODILESS_METHODS:
        raise DenyError(Reason.BODY_INVALID, f"a {method} entry carries no resource")
    body = json.dumps(resource).encode() if resource is not None else None
    if method == "PATCH" and isinstance(resource, dict) and resource.get("resourceType") == "Binary":
        raise DenyError(Reason.BODY_INVALID, "Binary-wrapped patches in Bundles are not accepted")
    return HttpRequest(method=method, path=f"{base_path}/{url}", headers=headers, body=body)


def _relabel(check: LookupCheck, label: str) -> LookupCheck:
    return dataclasses.replace(check, label=label)


def decide_bundle(
    request: FhirRequest, token: TokenContext, settings: PolicySettings, decide_entry: Rule
) -> Decision | Pending:
    """Decide every entry with ``decide_entry``; the Bundle is allowed, after the entries' look-ups, only if all are."""
    base_path = urlsplit(settings.fhir_base_url).path.rstrip("/")
    checks: list[LookupCheck] = []
    # An entry's read is looked up: the batch-response would answer a 404 apart from another patient's id.
    entry_settings = dataclasses.replace(settings, reads_proven_by_response=False)
    for index, entry in enumerate(_bundle(request, settings)):
        label = f"entry {index}"
        try:
            http = _entry_request(entry, base_path, settings.fhir_base_url)
        except DenyError as deny:
            raise DenyError(deny.reason, f"{label}: {deny.message}") from deny
        parsed = parse_fhir_request(http, base_path)
        if isinstance(parsed, Refusal):
            raise DenyError(parsed.reason, f"{label}: {parsed.message}")
        if parsed.interaction is Interaction.BATCH:
            raise DenyError(Reason.BODY_INVALID, f"{label}: nested Bundles are not accepted")
        outcome = decide_entry(parsed, token, entry_settings)
        if isinstance(outcome, Decision) and outcome.query_parameters_to_set:  # Envoy narrows the URL, not entries
            raise DenyError(
                Reason.BUNDLE_ENTRY_DENIED,
                f"{label}: a search in a Bundle must be bound to the context "
                f"patient, only a search sent alone is narrowed ({Reason.COMPARTMENT_UNBOUND.code})",
            )
        if isinstance(outcome, Decision):
            if not outcome.allowed:
                reason = outcome.reason if outcome.http_status != 403 else Reason.BUNDLE_ENTRY_DENIED
                raise DenyError(reason, f"{label}: {outcome.message} ({outcome.reason.code})")
            continue
        checks.extend(_relabel(check, label) for check in outcome.checks)
    allow = decision(Reason.ALLOWED_BUNDLE, "every entry is allowed", request, token)
    return Pending(tuple(checks), allow) if checks else allow
