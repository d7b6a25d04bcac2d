"""Seed data for the end-to-end suite: three patients from carebundle (reproducible by seed),
each with a Coverage and an ExplanationOfBenefit added here for the payer case (CARIN Blue
Button shapes), a shared payer Organization, and one cross-patient record: an Observation of
patient B whose performer is patient A, which is in A's compartment by definition
(Observation's compartment parameters are subject and performer).

carebundle emits transaction Bundles with ``urn:uuid:`` full URLs and POST entries; here every
resource gets the uuid as its id, references become ``Type/id``, and the whole data set is
loaded with PUT entries in transactions of at most 50 writes (Medplum's limit).

A and B also get one record per US Core 6.1 profile (``us_core.py``: Device, Binary and a Provenance
targeting their records included), the payer records get CARIN Blue Button's references (care team,
provider, payee, identifier), and B's Patient links to A (``Patient.link``, type ``seealso``): in the
official compartment definition B is then in A's compartment; smartgate keeps B out by default.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import carebundle

from . import us_core
from .components import FhirServer

TRANSACTION_LIMIT = 50
_NAMESPACE = uuid.UUID("5b0c1d4e-2f3a-4b6c-8d9e-0a1b2c3d4e5f")

# (key, carebundle profile, seed, sex): names, identifiers and ids are distinct across them.
PATIENTS = (("A", "type2_diabetes", 101, "F"), ("B", "hypertension", 202, "M"), ("C", "ckd_stage3", 303, "F"))
US_CORE_PATIENTS = ("A", "B")
LINKED = ("B", "A")  # B's Patient.link points to A
# Types of the patients' own records that the official Patient compartment leaves out.
OUTSIDE_COMPARTMENT = frozenset({"Device", "Binary"})


def _id(*parts: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, "/".join(parts)))


@dataclass
class PatientData:
    key: str
    patient_id: str
    family: str
    given: str
    identifier: str
    member_id: str
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)  # "Type/id" -> resource (own data)
    practitioner: str = ""  # "Practitioner/id" of the practitioner in this patient's bundle
    us_core_owner: us_core.Owner | None = None  # A and B: whose US Core records (us_core.py) this patient has

    @property
    def reference(self) -> str:
        return f"Patient/{self.patient_id}"

    def ids(self, resource_type: str) -> list[str]:
        return sorted(ref.split("/", 1)[1] for ref in self.resources if ref.startswith(resource_type + "/"))

    def owner(self) -> us_core.Owner:
        assert self.us_core_owner is not None, f"patient {self.key} has no US Core records"
        return self.us_core_owner

    def compartment_refs(self) -> set[str]:
        """The own records that the official compartment holds (a $everything returns them)."""
        return {ref for ref in self.resources if ref.split("/")[0] not in OUTSIDE_COMPARTMENT}

    def types(self) -> set[str]:
        return {ref.split("/", 1)[0] for ref in self.resources}

    def markers(self) -> set[str]:
        """Strings that appear only in this patient's own records: a response to anyone else that
        contains one of them leaks this patient's data. The patient's id is not one of them: the
        cross-patient Observation legitimately names Patient/B while being in A's compartment."""
        ids = {ref.split("/", 1)[1] for ref in self.resources if not ref.startswith("Patient/")}
        return ids | {self.family, self.identifier, self.member_id}


@dataclass
class Dataset:
    patients: dict[str, PatientData]
    shared: dict[str, dict[str, Any]]  # Practitioners, the payer Organization, the cross-patient Observation
    cross_reference: str  # "Observation/id": subject B, performer A

    def all_resources(self) -> Iterator[dict[str, Any]]:
        for patient in self.patients.values():
            yield from patient.resources.values()
        yield from self.shared.values()

    def visible_to(self, key: str) -> list[dict[str, Any]]:
        """What a patient/*.rs token for ``key`` may legitimately see."""
        visible = list(self.patients[key].resources.values()) + list(self.shared.values())
        return visible


def _rewrite_references(value: Any, mapping: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {
            k: (mapping.get(v, v) if k == "reference" and isinstance(v, str) else _rewrite_references(v, mapping))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_rewrite_references(v, mapping) for v in value]
    return value


def _from_carebundle(key: str, profile: str, seed: int, sex: str) -> tuple[PatientData, list[dict[str, Any]]]:
    bundle = json.loads(carebundle.to_json(carebundle.generate_bundle(profile=profile, seed=seed, sex=sex)))
    mapping: dict[str, str] = {}
    for entry in bundle["entry"]:
        full_url: str = entry["fullUrl"]
        assert full_url.startswith("urn:uuid:"), full_url
        mapping[full_url] = f"{entry['resource']['resourceType']}/{full_url.removeprefix('urn:uuid:')}"
    resources = []
    for entry in bundle["entry"]:
        resource = _rewrite_references(entry["resource"], mapping)
        resource["id"] = mapping[entry["fullUrl"]].split("/", 1)[1]
        resources.append(resource)
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    name = patient["name"][0]
    data = PatientData(
        key=key,
        patient_id=patient["id"],
        family=name["family"],
        given=name["given"][0],
        identifier=patient["identifier"][0]["value"],
        member_id=f"MEMBER-{_id(key, 'member')[:13].upper()}",
    )
    practitioners = [r for r in resources if r["resourceType"] == "Practitioner"]
    data.practitioner = f"Practitioner/{practitioners[0]['id']}"
    for resource in resources:
        if resource["resourceType"] != "Practitioner":
            data.resources[f"{resource['resourceType']}/{resource['id']}"] = resource
    return data, practitioners


def _payer_records(data: PatientData, payer: str) -> list[dict[str, Any]]:
    coverage_id, eob_id = _id(data.key, "coverage"), _id(data.key, "eob")
    claim_id = f"CLAIM-{_id(data.key, 'claim')[:13].upper()}"
    coverage = {
        "resourceType": "Coverage",
        "id": coverage_id,
        "status": "active",
        "identifier": [{"system": "https://payer.example.org/member", "value": data.member_id}],
        "type": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                    "code": "HIP",
                    "display": "health insurance plan policy",
                }
            ]
        },
        "policyHolder": {"reference": data.reference},
        "subscriber": {"reference": data.reference},
        "subscriberId": data.member_id,
        "beneficiary": {"reference": data.reference},
        "relationship": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/subscriber-relationship", "code": "self"}]
        },
        "period": {"start": "2026-01-01"},
        "payor": [{"reference": payer}],
        "class": [
            {
                "type": {
                    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/coverage-class", "code": "group"}]
                },
                "value": "GRP-42",
                "name": "E2E group plan",
            }
        ],
    }
    eob = {
        "resourceType": "ExplanationOfBenefit",
        "id": eob_id,
        "status": "active",
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "professional"}]},
        "use": "claim",
        "patient": {"reference": data.reference},
        "created": "2026-01-02T10:00:00Z",
        "insurer": {"reference": payer},
        "provider": {"reference": us_core.shared_ref("Organization/provider")},
        "outcome": "complete",
        "identifier": [{"system": "https://payer.example.org/claim", "value": claim_id}],
        "billablePeriod": {"start": "2026-01-01", "end": "2026-01-01"},
        "careTeam": [
            {
                "sequence": 1,
                "provider": {"reference": data.practitioner},
                "role": {
                    "coding": [
                        {
                            "system": "http://hl7.org/fhir/us/carin-bb/CodeSystem/C4BBClaimCareTeamRole",
                            "code": "performing",
                        }
                    ]
                },
            }
        ],
        "payee": {
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/payeetype", "code": "subscriber"}]},
            "party": {"reference": data.reference},
        },
        "insurance": [{"focal": True, "coverage": {"reference": f"Coverage/{coverage_id}"}}],
        "item": [
            {
                "sequence": 1,
                "productOrService": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "99213"}]},
                "servicedDate": "2026-01-01",
                "adjudication": [
                    {
                        "category": {
                            "coding": [
                                {"system": "http://terminology.hl7.org/CodeSystem/adjudication", "code": "benefit"}
                            ]
                        },
                        "amount": {"value": 120.0, "currency": "USD"},
                    }
                ],
            }
        ],
        "total": [
            {
                "category": {
                    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/adjudication", "code": "submitted"}]
                },
                "amount": {"value": 150.0, "currency": "USD"},
            }
        ],
    }
    return [coverage, eob]


def build_dataset() -> Dataset:
    patients: dict[str, PatientData] = {}
    shared: dict[str, dict[str, Any]] = {}
    payer_id = _id("payer")
    shared[f"Organization/{payer_id}"] = {
        "resourceType": "Organization",
        "id": payer_id,
        "active": True,
        "name": "E2E Health Plan",
        "type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/organization-type", "code": "pay"}]}],
    }
    for key, profile, seed, sex in PATIENTS:
        data, practitioners = _from_carebundle(key, profile, seed, sex)
        for practitioner in practitioners:
            shared[f"Practitioner/{practitioner['id']}"] = practitioner
        for record in _payer_records(data, f"Organization/{payer_id}"):
            data.resources[f"{record['resourceType']}/{record['id']}"] = record
        if key in US_CORE_PATIENTS:
            data.us_core_owner = us_core.Owner(key, data.reference, f"Coverage/{_id(key, 'coverage')}")
            data.resources.update(us_core.patient_records(data.us_core_owner))
        patients[key] = data
    shared.update(us_core.shared_records())
    a, b = patients[LINKED[1]], patients[LINKED[0]]
    b.resources[b.reference]["link"] = [{"other": {"reference": a.reference}, "type": "seealso"}]
    cross_id = _id("cross", "B-observed-by-A")
    shared[f"Observation/{cross_id}"] = {
        "resourceType": "Observation",
        "id": cross_id,
        "status": "final",
        "category": [
            {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "social-history"}
                ]
            }
        ],
        "code": {
            "coding": [{"system": "http://loinc.org", "code": "76690-7", "display": "Sexual orientation"}],
            "text": "caregiver-reported observation",
        },
        "subject": {"reference": b.reference},
        "performer": [{"reference": a.reference}],
        "effectiveDateTime": "2026-01-03T08:00:00Z",
        "valueString": "reported by a family member",
    }
    dataset = Dataset(patients, shared, f"Observation/{cross_id}")
    _check_markers(dataset)
    return dataset


def _check_markers(dataset: Dataset) -> None:
    """Each patient's markers must not occur in what another patient may legitimately see."""
    for key in dataset.patients:
        visible = json.dumps(dataset.visible_to(key))
        for other, data in dataset.patients.items():
            if other == key:
                continue
            clashes = [marker for marker in data.markers() if marker in visible]
            assert not clashes, f"markers of {other} occur in {key}'s data: {clashes}"


def load(fhir: FhirServer, dataset: Dataset) -> None:
    entries = [
        {"resource": resource, "request": {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"}}
        for resource in dataset.all_resources()
    ]
    for start in range(0, len(entries), TRANSACTION_LIMIT):
        result = fhir.transaction(entries[start : start + TRANSACTION_LIMIT])
        statuses = [entry.get("response", {}).get("status", "") for entry in result.get("entry", [])]
        assert all(s.startswith(("200", "201")) for s in statuses), statuses


def snapshot(fhir: FhirServer, patient: PatientData) -> dict[str, str]:
    """Every resource in the patient's compartment, read straight from the FHIR server:
    "Type/id" -> versionId. Any create, update or delete changes it."""
    response = fhir.get(f"Patient/{patient.patient_id}/$everything")
    response.raise_for_status()
    return {
        f"{e['resource']['resourceType']}/{e['resource']['id']}": e["resource"]["meta"]["versionId"]
        for e in response.json().get("entry", [])
    }
