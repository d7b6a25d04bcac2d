"""Which scopes grant an interaction on a type, and under what constraint: one answer for requests and responses alike.

Scopes are a union. ``type_level`` holds what ``user/`` and ``system/`` scopes grant (the
FHIR server applies the user's own permissions); ``patient_level`` what ``patient/`` scopes
grant (confined to the context patient's compartment). Each is a tuple of alternative
constraint sets: ``((),)`` is an unconstrained grant, ``((("category", "sys|lab"),),)`` a
granular v2 scope, ``()`` no grant at all.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass

from smartgate.fhir.query import SearchParam
from smartgate.policy.plan import Query
from smartgate.tokens.scopes import ScopeGrants

UNCONSTRAINED: tuple[Query, ...] = ((),)
_MAX_LIST_SEARCHES = 64  # a longer cross product of comma lists is not expanded: not carried


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


def carries_any(params: tuple[SearchParam, ...], constraints: tuple[Query, ...]) -> bool:
    """True when the search carries one of ``constraints`` exactly, or when it is comma lists on
    constrained parameters and every single-valued search they stand for carries one
    (``category=lab,vital-signs`` under one granular scope for lab and one for vital-signs: a list
    is an OR, so the server returns the union of what those scopes grant)."""
    if any(carries(params, constraint) for constraint in constraints):
        return True
    searches = _single_valued_searches(params, {code for constraint in constraints for code, _ in constraint})
    return bool(searches) and all(any(carries(search, constraint) for constraint in constraints) for search in searches)


def _single_valued_searches(params: tuple[SearchParam, ...], constrained: set[str]) -> list[tuple[SearchParam, ...]]:
    """The searches a comma list on constrained parameters stands for, one value each (none when
    there is no such list, a value escapes a comma with ``\\`` or the lists multiply past a bound)."""
    listed = [i for i, param in enumerate(params) if param.code in constrained and "," in param.value]
    if not listed or any("\\" in params[i].value for i in listed):
        return []
    choices = [params[i].value.split(",") for i in listed]
    if math.prod(len(values) for values in choices) > _MAX_LIST_SEARCHES:
        return []
    searches = []
    for values in itertools.product(*choices):
        search = list(params)
        for i, value in zip(listed, values, strict=True):
            search[i] = dataclasses.replace(params[i], value=value)
        searches.append(tuple(search))
    return searches
