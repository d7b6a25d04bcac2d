"""Which scopes grant an interaction on a type, and under what constraint: one answer for requests and responses alike.

Scopes are a union. ``type_level`` holds what ``user/`` and ``system/`` scopes grant (the
FHIR server applies the user's own permissions); ``patient_level`` what ``patient/`` scopes
grant (confined to the context patient's compartment). Each is a tuple of alternative
constraint sets: ``((),)`` is an unconstrained grant, ``((("category", "sys|lab"),),)`` a
granular v2 scope, ``()`` no grant at all.
"""

from __future__ import annotations

from dataclasses import dataclass

from smartgate.fhir.query import SearchParam
from smartgate.policy.plan import Query
from smartgate.tokens.scopes import ScopeGrants

UNCONSTRAINED: tuple[Query, ...] = ((),)


@dataclass(frozen=True, slots=True)
class Access:
    type_level: tuple[Query, ...]
    patient_level: tuple[Query, ...]

    @property
    def granted(self) -> bool:
        return bool(self.type_level or self.patient_level)

    @property
    def type_unconstrained(self) -> bool:
        return () in self.type_level

    @property
    def patient_unconstrained(self) -> bool:
        return () in self.patient_level


def resolve_access(grants: ScopeGrants, resource_type: str, permission: str) -> Access:
    """What ``grants`` open for ``permission`` on ``resource_type``: it reads the scopes only, never the token."""
    if grants.permits_beyond_patient(resource_type, permission):
        return Access(UNCONSTRAINED, ())
    granular = grants.granular_for(resource_type, permission)
    type_level = tuple(scope.constraints for scope in granular if scope.context != "patient")
    if grants.permits("patient", resource_type, permission):
        return Access(type_level, UNCONSTRAINED)
    patient_level = tuple(scope.constraints for scope in granular if scope.context == "patient")
    return Access(type_level, patient_level)


def carries(params: tuple[SearchParam, ...], constraint: Query) -> bool:
    """True when the search carries every constraint exactly: the parameter once, with no
    modifier, chain or list, and the very value of the scope (system and code)."""
    for code, value in constraint:
        found = [param for param in params if param.code == code]
        if len(found) != 1:
            return False
        param = found[0]
        if param.modifier is not None or param.chain is not None or param.value != value:
            return False
    return True
