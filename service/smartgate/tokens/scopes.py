"""SMART App Launch scopes (v1 and v2): parse them and answer what they grant.

v1: ``patient/Observation.read`` (= rs), ``.write`` (= cud), ``.*`` (= cruds).
v2: ``patient/Observation.rs``: any non-empty subset of ``cruds`` written in that order.
A v2 scope may carry a granular constraint (``?category=...``): ``permits`` ignores such
scopes (they never grant more than they say); the policy asks ``granular_for`` and
proves the constraint itself. Anything unparseable grants nothing.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qsl

from smartgate.fhir.definitions import RESOURCE_TYPES

CONTEXTS = ("patient", "user", "system")
ALL_PERMISSIONS = frozenset("cruds")
_V1_PERMISSIONS = {"read": frozenset("rs"), "write": frozenset("cud"), "*": ALL_PERMISSIONS}
_V2_PERMISSIONS = re.compile(r"^(?=.)c?r?u?d?s?\Z")
_SCOPE = re.compile(r"^(patient|user|system)/([A-Za-z]+|\*)\.([a-z*]+)(?:\?(.+))?\Z")


@dataclass(frozen=True, slots=True)
class SmartScope:
    context: str
    resource_type: str
    permissions: frozenset[str]
    constraints: tuple[tuple[str, str], ...]
    text: str

    @property
    def granular(self) -> bool:
        return bool(self.constraints)


def parse_scope(text: str) -> SmartScope | None:
    """Parse one resource scope, or return None for anything that is not a valid one."""
    match = _SCOPE.match(text)
    if match is None:
        return None
    context, resource_type, suffix, query = match.groups()
    if resource_type != "*" and resource_type not in RESOURCE_TYPES:
        return None
    if suffix in _V1_PERMISSIONS:
        if query is not None:
            return None  # granular constraints exist in v2 only
        permissions = _V1_PERMISSIONS[suffix]
    elif _V2_PERMISSIONS.match(suffix):
        permissions = frozenset(suffix)
    else:
        return None
    constraints: tuple[tuple[str, str], ...] = ()
    if query is not None:
        try:
            constraints = tuple(parse_qsl(query, keep_blank_values=False, strict_parsing=True))
        except ValueError:
            return None
        if not constraints or any(not name for name, _ in constraints):
            return None
    return SmartScope(context, resource_type, permissions, constraints, text)


class ScopeGrants:
    """The union of a token's scopes, precomputed into per-context, per-type permission sets."""

    __slots__ = ("_table", "granular", "has_patient_scopes", "scopes")

    def __init__(self, scopes: Iterable[SmartScope]) -> None:
        self.scopes = tuple(scopes)
        table: dict[tuple[str, str], set[str]] = {}
        for scope in self.scopes:
            if scope.granular:
                continue
            table.setdefault((scope.context, scope.resource_type), set()).update(scope.permissions)
        self._table = {key: frozenset(value) for key, value in table.items()}
        self.granular = tuple(scope for scope in self.scopes if scope.granular)
        self.has_patient_scopes = any(scope.context == "patient" for scope in self.scopes)

    def permits(self, context: str, resource_type: str, permission: str) -> bool:
        table = self._table
        specific = table.get((context, resource_type))
        if specific is not None and permission in specific:
            return True
        wildcard = table.get((context, "*"))
        return wildcard is not None and permission in wildcard

    def granular_for(self, resource_type: str, permission: str) -> tuple[SmartScope, ...]:
        """Granular scopes (any context) that would grant this if their constraints hold."""
        return tuple(
            scope
            for scope in self.granular
            if scope.resource_type in (resource_type, "*") and permission in scope.permissions
        )

    def permits_beyond_patient(self, resource_type: str, permission: str) -> bool:
        """True when a ``user/`` or ``system/`` scope grants this: no compartment applies."""
        return self.permits("user", resource_type, permission) or self.permits("system", resource_type, permission)


@functools.lru_cache(maxsize=4096)
def grants_for(scope_values: tuple[str, ...]) -> ScopeGrants:
    """``parse_scopes``, memoised (bounded): an app sends the same scope string token after token,
    so a fresh token rarely needs its scopes parsed again. ScopeGrants is never mutated."""
    return parse_scopes(scope_values)


def parse_scopes(scope_values: Iterable[str]) -> ScopeGrants:
    """Parse space-separated scope strings (or list items); non-resource scopes are ignored."""
    parsed = []
    for value in scope_values:
        for text in value.split():
            scope = parse_scope(text)
            if scope is not None:
                parsed.append(scope)
    return ScopeGrants(parsed)
