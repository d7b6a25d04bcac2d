"""Where each SMART value is read from in a token (a list of claim names; the first present wins)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClaimNames:
    scope: tuple[str, ...] = ("scope", "scp")
    patient: tuple[str, ...] = ("patient",)
    fhir_user: tuple[str, ...] = ("fhirUser",)
    client_id: tuple[str, ...] = ("client_id", "azp", "cid")
    subject: tuple[str, ...] = ("sub",)
