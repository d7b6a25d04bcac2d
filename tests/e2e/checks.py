"""Assertions shared by the end-to-end tests."""

from __future__ import annotations

import json
from typing import Any

import httpx

from .conftest import E2EStack

SMARTGATE_REASONS = "https://smartgate.dev/reason"


def smartgate_reason(response: httpx.Response) -> str | None:
    """The reason code of a smartgate denial (None when the response is not one)."""
    try:
        coding = response.json()["issue"][0]["details"]["coding"][0]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return str(coding["code"]) if coding.get("system") == SMARTGATE_REASONS else None


def assert_denied(response: httpx.Response, status: int, reason: str) -> None:
    assert response.status_code == status, f"{response.status_code} {response.text[:500]}"
    assert smartgate_reason(response) == reason, response.text[:500]


def assert_ok(response: httpx.Response, status: int = 200) -> dict[str, Any]:
    request = response.request
    where = f"{request.method} {request.url}"
    assert response.status_code == status, f"{where}: {response.status_code} {response.text[:800]}"
    body: dict[str, Any] = response.json() if response.content else {}
    return body


def entry_refs(bundle: dict[str, Any]) -> set[str]:
    resources = [entry["resource"] for entry in bundle.get("entry", []) if "resource" in entry]
    return {f"{resource['resourceType']}/{resource['id']}" for resource in resources}


def foreign_markers(e2e: E2EStack, key: str) -> dict[str, str]:
    return {marker: other for other, p in e2e.data.patients.items() if other != key for marker in p.markers()}


def assert_no_foreign_data(e2e: E2EStack, key: str, response: httpx.Response) -> None:
    blob = response.text + json.dumps(dict(response.headers))
    found = sorted(f"{who}:{marker}" for marker, who in foreign_markers(e2e, key).items() if marker in blob)
    assert not found, f"{response.request.method} {response.request.url} returned other patients' data: {found}"


def foreign_refs(e2e: E2EStack, key: str) -> dict[str, str]:
    """ "Type/id" of every seeded record of the other patients -> whose it is."""
    return {ref: other for other, p in e2e.data.patients.items() if other != key for ref in p.resources}


def assert_only_patients_data(e2e: E2EStack, key: str, response: httpx.Response) -> None:
    """Every resource in the response is ``key``'s own or outside every patient's records (shared
    Practitioners, Organizations, ...): no other patient's record (their linked Patient included) by
    reference, and no marker of theirs anywhere in the bytes."""
    assert_no_foreign_data(e2e, key, response)
    if response.status_code != 200 or not response.content:
        return
    body = response.json()
    refs = entry_refs(body) if body.get("resourceType") == "Bundle" else {f"{body['resourceType']}/{body.get('id')}"}
    others = foreign_refs(e2e, key)
    found = sorted(f"{others[ref]}:{ref}" for ref in refs if ref in others)
    assert not found, f"{response.request.method} {response.request.url} returned other patients' records: {found}"
