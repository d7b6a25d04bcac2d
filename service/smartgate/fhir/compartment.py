"""The Patient compartment: which search parameters bind a search to a patient, and how
a reference value names one.

Derived at import from the official R4 CompartmentDefinition and SearchParameters:
- ``MEMBERSHIP_PARAMS[T]``: the compartment's own parameters for type T (used for look-ups);
- ``BINDING_PARAMS[T]``: every reference parameter of T that selects on the same element as
  a compartment parameter and can target a Patient (so ``Observation?patient=123`` binds
  through ``Observation.subject.where(resolve() is Patient)``, an alias of ``subject``).
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from smartgate.fhir.definitions import PATIENT_COMPARTMENT_PARAMS, SEARCH_PARAMETERS
from smartgate.fhir.request import is_valid_id

_WHERE = re.compile(r"\.where\(.*\)$")
_TYPED_REFERENCE = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})\Z")
PATIENT_MENTION = re.compile(r"(?<![A-Za-z0-9])Patient/([A-Za-z0-9\-.]{1,64})")


def _element(expression: str) -> str:
    text = expression.strip()
    if text.startswith("(") and text.endswith(")"):
        text = text[1:-1]
    return _WHERE.sub("", text)


def _type_bindings(resource_type: str, compartment_params: Iterable[str]) -> dict[str, frozenset[str]]:
    """The reference parameters of one type that can target a Patient and select on the same
    element as one of ``compartment_params`` (each with the types it can target)."""
    membership = frozenset(compartment_params)
    params = SEARCH_PARAMETERS.get(resource_type, {})
    elements = {
        _element(expression) for code in membership if code in params for expression in params[code].expressions
    }
    return {
        code: info.targets
        for code, info in params.items()
        if info.type == "reference"
        and "Patient" in info.targets
        and (code in membership or any(_element(e) in elements for e in info.expressions))
    }


def _binding_params() -> dict[str, dict[str, frozenset[str]]]:
    return {
        resource_type: _type_bindings(resource_type, compartment_params)
        for resource_type, compartment_params in PATIENT_COMPARTMENT_PARAMS.items()
    }


MEMBERSHIP_PARAMS: dict[str, tuple[str, ...]] = dict(PATIENT_COMPARTMENT_PARAMS)
BINDING_PARAMS: dict[str, dict[str, frozenset[str]]] = _binding_params()


# --- the bound types of one deployment, and how a search of each is narrowed -------------------------

# The parameter a narrowed search gains (``BoundTypes.narrowing``). A bound type with a ``patient``
# binding parameter gains ``patient``; the others are written down here. Narrowing through one parameter
# of several is safe: the server can return less than the compartment, never more. So Coverage gains
# ``patient`` (Coverage.beneficiary), not policy-holder, subscriber or payor.
NARROWING_EXCEPTIONS: Mapping[str, str] = MappingProxyType(
    {
        "Patient": "_id",  # the context patient's own record, never a record linking to it
        "AdverseEvent": "subject",  # R4 AdverseEvent, Group, Schedule and SupplyRequest have no ``patient``
        "Group": "member",
        "Schedule": "actor",
        "SupplyRequest": "subject",
    }
)


@dataclass(frozen=True, slots=True)
class BoundTypes:
    """The types a patient/ scope sees bound to one patient: the official compartment plus the types a
    deployment binds through ``compartment.extra_binding_params`` (Device through ``patient``)."""

    membership: Mapping[str, tuple[str, ...]]  # look-up parameters, like MEMBERSHIP_PARAMS
    binding: Mapping[str, Mapping[str, frozenset[str]]]  # parameters that bind a search, like BINDING_PARAMS

    def narrowing(self, resource_type: str, patient: str) -> tuple[str, str] | None:
        """The parameter and value that narrow a search of ``resource_type`` to ``patient`` (None: not bound)."""
        if resource_type not in self.membership:
            return None
        bindings = self.binding[resource_type]
        code = NARROWING_EXCEPTIONS.get(resource_type)
        if code is None:
            code = "patient" if "patient" in bindings else self.membership[resource_type][0]
        if code == "_id" or bindings.get(code) == frozenset({"Patient"}):
            return code, patient
        return code, f"Patient/{patient}"


def bound_types(extra_binding_params: Mapping[str, tuple[str, ...]]) -> BoundTypes:
    """The official compartment with ``extra_binding_params`` (``{type: (param, ...)}``) added."""
    return _bound_types(tuple(sorted(extra_binding_params.items())))


@functools.lru_cache(maxsize=16)
def _bound_types(extra: tuple[tuple[str, tuple[str, ...]], ...]) -> BoundTypes:
    membership = dict(MEMBERSHIP_PARAMS)
    for resource_type, params in extra:
        known = membership.get(resource_type, ())
        membership[resource_type] = known + tuple(code for code in params if code not in known)
    binding = {
        resource_type: MappingProxyType(_type_bindings(resource_type, params))
        for resource_type, params in membership.items()
    }
    return BoundTypes(MappingProxyType(membership), MappingProxyType(binding))


class ReferenceKind(enum.Enum):
    PATIENT = "patient"  # names exactly one Patient
    NOT_PATIENT = "not-patient"  # names a resource of another type
    AMBIGUOUS = "ambiguous"  # cannot be resolved to one resource we can name


@dataclass(frozen=True, slots=True)
class ReferenceValue:
    kind: ReferenceKind
    patient_id: str | None = None


_AMBIGUOUS = ReferenceValue(ReferenceKind.AMBIGUOUS)
_NOT_PATIENT = ReferenceValue(ReferenceKind.NOT_PATIENT)


def classify_reference(
    value: str, targets: frozenset[str], type_modifier: str | None, fhir_base_url: str
) -> ReferenceValue:
    """Say which resource a reference search value names, as the FHIR server would read it.

    ``123`` names a Patient only when the parameter can target nothing but Patient (or the
    ``:Patient`` modifier is given); ``Patient/123`` and ``{our base}/Patient/123`` always do.
    Comma lists, other servers' URLs, versioned references and the like are ambiguous.
    """
    prefix = fhir_base_url.rstrip("/") + "/"
    if value.startswith(prefix):
        value = value[len(prefix) :]
    if type_modifier is not None:
        if type_modifier != "Patient":
            return _AMBIGUOUS
        if value.startswith("Patient/"):
            value = value[len("Patient/") :]
        return ReferenceValue(ReferenceKind.PATIENT, value) if is_valid_id(value) else _AMBIGUOUS
    match = _TYPED_REFERENCE.match(value)
    if match is not None:
        resource_type, resource_id = match.groups()
        if not is_valid_id(resource_id):
            return _AMBIGUOUS
        if resource_type == "Patient":
            return ReferenceValue(ReferenceKind.PATIENT, resource_id)
        return _NOT_PATIENT if resource_type in targets else _AMBIGUOUS
    if is_valid_id(value) and targets == frozenset({"Patient"}):
        return ReferenceValue(ReferenceKind.PATIENT, value)
    return _AMBIGUOUS


def mentioned_patients(value: str) -> set[str]:
    """Patient ids named anywhere in a parameter value (``Patient/x``, also inside URLs and lists)."""
    return set(PATIENT_MENTION.findall(value))


# R4 puts Patient in its own compartment through Patient.link: B's record linking to A is in A's
# compartment. HAPI's interceptors do not follow it, and neither does smartgate unless configured.
PATIENT_LINK_PARAM = "link"


def patient_membership_params(follow_patient_links: bool) -> tuple[str, ...]:
    """The parameters that prove another Patient resource is in the context patient's compartment.

    Without ``follow_patient_links`` there are none: the context patient is the only Patient
    resource in its compartment, so nothing may prove that Patient/B belongs to A.
    """
    return MEMBERSHIP_PARAMS["Patient"] if follow_patient_links else ()


def proving_params(
    resource_type: str, follow_patient_links: bool, membership: Mapping[str, tuple[str, ...]] = MEMBERSHIP_PARAMS
) -> tuple[str, ...]:
    """The parameters a look-up may use to prove a ``resource_type`` is the patient's (``membership``:
    the official compartment, or a deployment's ``BoundTypes.membership``)."""
    if resource_type == "Patient":
        return patient_membership_params(follow_patient_links)
    return membership.get(resource_type, ())
