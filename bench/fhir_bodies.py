"""The FHIR stand-in's response bodies for the workloads that verify responses.

The US Core search (20 laboratory Observations of the bench patient, each with its Provenance, through
``_revinclude=Provenance:target``) is answered by the demo FHIR server's own search and ``_revinclude``
logic (``smartgate.dev.demo.upstream.FhirStore``) over generated US Core-shaped resources, then served
as a fixed body by an Envoy stand-in: the Python demo server itself would take CPU from the two cores
that Envoy, wrk and smartgate share, and measure itself instead of smartgate.
"""

from __future__ import annotations

import json
from typing import Any

from smartgate.dev.demo.upstream import FhirStore

PATIENT = "123"
LAB_RESULTS = 20
USCORE_SEARCH = f"/fhir/Observation?patient={PATIENT}&category=laboratory&_revinclude=Provenance:target"
_LOINC = [
    ("2339-0", "Glucose [Mass/volume] in Blood", "mg/dL", 70, 99),
    ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.6, 1.3),
    ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 12, 17.5),
    ("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 3.5, 5.1),
]


def _lab_observation(index: int) -> dict[str, Any]:
    code, display, unit, low, high = _LOINC[index % len(_LOINC)]
    return {
        "resourceType": "Observation",
        "id": f"lab-{PATIENT}-{index}",
        "meta": {"profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-observation-lab"]},
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory",
                        "display": "Laboratory",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}], "text": display},
        "subject": {"reference": f"Patient/{PATIENT}"},
        "effectiveDateTime": f"2026-{1 + index % 12:02d}-{1 + index % 28:02d}T08:30:00Z",
        "issued": f"2026-{1 + index % 12:02d}-{1 + index % 28:02d}T12:00:00Z",
        "performer": [{"reference": "Organization/lab-1"}],
        "valueQuantity": {
            "value": round((low + high) / 2 + index % 3, 1),
            "unit": unit,
            "system": "http://unitsofmeasure.org",
            "code": unit,
        },
        "referenceRange": [
            {
                "low": {"value": low, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
                "high": {"value": high, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
            }
        ],
    }


def _provenance(observation: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Provenance",
        "id": f"prov-{observation['id']}",
        "meta": {"profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-provenance"]},
        "target": [{"reference": f"Observation/{observation['id']}"}],
        "recorded": observation["issued"],
        "agent": [
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                            "code": "author",
                        }
                    ]
                },
                "who": {"reference": "Organization/lab-1"},
            }
        ],
    }


def uscore_bundle(public_base: str) -> str:
    """The searchset the US Core search answers: 20 matches, then their 20 Provenances as includes."""
    observations = [_lab_observation(i) for i in range(LAB_RESULTS)]
    store = FhirStore([*observations, *(_provenance(o) for o in observations)])
    params = [("patient", PATIENT), ("_revinclude", "Provenance:target")]
    found = store.search("Observation", params)
    included = store.included(found, params)
    entries = [
        {
            "fullUrl": f"{public_base}/{resource['resourceType']}/{resource['id']}",
            "resource": resource,
            "search": {"mode": mode},
        }
        for mode, resources in (("match", found), ("include", included))
        for resource in resources
    ]
    return json.dumps(
        {"resourceType": "Bundle", "type": "searchset", "total": len(found), "entry": entries}, separators=(",", ":")
    )


def search_bundle(public_base: str) -> str:
    """A search bound to the patient: one of the patient's Observations."""
    observation = _lab_observation(0)
    return json.dumps(
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": 1,
            "entry": [
                {
                    "fullUrl": f"{public_base}/Observation/{observation['id']}",
                    "resource": observation,
                    "search": {"mode": "match"},
                }
            ],
        },
        separators=(",", ":"),
    )


def read_observation_lua() -> str:
    """Envoy Lua: a read of ``/fhir/Observation/{id}`` answers the patient's Observation with that id
    (a new id on every request, so the body must name it)."""
    template = json.dumps(_lab_observation(1), separators=(",", ":")).replace(f'"lab-{PATIENT}-1"', '"%s"')
    return f"""
local template = [[{template}]]
function envoy_on_request(handle)
  local id = string.match(handle:headers():get(":path"), "^/fhir/Observation/([%w%-%.]+)$")
  if id ~= nil then
    handle:respond({{[":status"] = "200", ["content-type"] = "application/fhir+json"}},
                   string.format(template, id))
  end
end
"""
