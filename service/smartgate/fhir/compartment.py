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
import re
from dataclasses import dataclass

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


def _binding_params() -> dict[str, dict[str, frozenset[str]]]:
    table: dict[str, dict[str, frozenset[str]]] = {}
    for resource_type, compartment_params in PATIENT_COMPARTMENT_PARAMS.items():
        params = SEARCH_PARAMETERS.get(resource_type, {})
        elements = {
            _element(expression)
            for code in compartment_params
            if code in params
            for expression in params[code].expressions
        }
        bindings = {
            code: info.targets
            for code, info in params.items()
            if info.type == "reference"
            and "Patient" in info.targets
            and (code in compartment_params or any(_element(e) in elements for e in info.expressions))
        }
        table[resource_type] = bindings
    return table


MEMBERSHIP_PARAMS: dict[str, tuple[str, ...]] = dict(PATIENT_COMPARTMENT_PARAMS)
BINDING_PARAMS: dict[str, dict[str, frozenset[str]]] = _binding_params()


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
