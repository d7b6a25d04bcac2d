"""US Core 6.1 and CARIN Blue Button shaped records for the end-to-end suite, and the searches a
patient app sends for them.

Every US Core 6.1 profile gets one record per patient (A and B), built by the same function so that
both patients' records answer the same searches: a search with A's values finds A's record, the same
search with B's values finds B's. The SHALL search combinations are the ones Inferno's US Core 6.1
test kit sends (``us-core-test-kit`` v6.1.0 ``metadata.yml``; /tmp research notes section 1a): the
table ``PROFILES`` names them by parameter; ``search_values`` gives each parameter its value from a
patient's record. Location, Medication, Organization, Practitioner, PractitionerRole and Endpoint are
shared (outside the Patient compartment): ``shared_records``.

Ids are uuid5 of fixed names, so the parametrised tests can be collected before the data is built.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

_NAMESPACE = uuid.UUID("0f6c7e2a-4d1b-4e8f-9a3c-5b2d7e1f0a93")

LOINC = "http://loinc.org"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
US_CORE_CATEGORY = "http://hl7.org/fhir/us/core/CodeSystem/us-core-category"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
US_CORE_CONDITION_CATEGORY = "http://hl7.org/fhir/us/core/CodeSystem/condition-category"
DR_CATEGORY = "http://terminology.hl7.org/CodeSystem/v2-0074"
DOC_CATEGORY = "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category"
CAREPLAN_CATEGORY = "http://hl7.org/fhir/us/core/CodeSystem/careplan-category"
SNOMED = "http://snomed.info/sct"
NUCC = "http://nucc.org/provider-taxonomy"
NPI = "http://hl7.org/fhir/sid/us-npi"
DAY = "2026-01-05"  # every dated record of a patient falls on this day
AT = f"{DAY}T09:30:00Z"


def record_id(key: str, name: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{key}/{name}"))


def _coding(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    coding = {"system": system, "code": code, **({"display": display} if display else {})}
    return {"coding": [coding], **({"text": display} if display else {})}


def _token(system: str, code: str) -> str:
    return f"{system}|{code}"


# --- shared records (outside the Patient compartment) ---------------------------------------

SHARED_NAMES = (
    "Organization/provider",
    "Location/clinic",
    "Practitioner/npi",
    "PractitionerRole/npi",
    "Endpoint/direct",
    "Medication/metformin",
)
PRACTITIONER_FAMILY = "Lovelock"
PRACTITIONER_NPI = "9941339108"
ORGANIZATION_NAME = "E2E Community Clinic"
LOCATION_NAME = "E2E Clinic Main Site"
CITY = "Springfield"
SPECIALTY = _token(NUCC, "207Q00000X")
MEDICATION_CODE = _token("http://www.nlm.nih.gov/research/umls/rxnorm", "860975")


def shared_ref(name: str) -> str:
    """ "Type/id" of a shared record: ``shared_ref("Practitioner/npi")``."""
    resource_type, label = name.split("/")
    return f"{resource_type}/{record_id('shared', label)}"


def shared_records() -> dict[str, dict[str, Any]]:
    def rid(name: str) -> str:
        return shared_ref(name).split("/")[1]

    address: list[dict[str, Any]] = [{"line": ["1 Main Street"], "city": CITY, "state": "IL", "postalCode": "62701"}]
    records: list[dict[str, Any]] = [
        {
            "resourceType": "Organization",
            "id": rid("Organization/provider"),
            "active": True,
            "name": ORGANIZATION_NAME,
            "identifier": [{"system": NPI, "value": "1144221847"}],
            "address": address,
            "type": [_coding("http://terminology.hl7.org/CodeSystem/organization-type", "prov")],
        },
        {
            "resourceType": "Location",
            "id": rid("Location/clinic"),
            "status": "active",
            "name": LOCATION_NAME,
            "address": address[0],
            "managingOrganization": {"reference": shared_ref("Organization/provider")},
        },
        {
            "resourceType": "Practitioner",
            "id": rid("Practitioner/npi"),
            "active": True,
            "identifier": [{"system": NPI, "value": PRACTITIONER_NPI}],
            "name": [{"family": PRACTITIONER_FAMILY, "given": ["Ada"], "prefix": ["Dr."]}],
        },
        {
            "resourceType": "Endpoint",
            "id": rid("Endpoint/direct"),
            "status": "active",
            "connectionType": {
                "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
                "code": "direct-project",
            },
            "payloadType": [{"text": "any"}],
            "address": "mailto:lovelock@direct.e2e.example.org",
        },
        {
            "resourceType": "PractitionerRole",
            "id": rid("PractitionerRole/npi"),
            "active": True,
            "practitioner": {"reference": shared_ref("Practitioner/npi")},
            "organization": {"reference": shared_ref("Organization/provider")},
            "specialty": [_coding(NUCC, "207Q00000X", "Family Medicine")],
            "endpoint": [{"reference": shared_ref("Endpoint/direct")}],
        },
        {
            "resourceType": "Medication",
            "id": rid("Medication/metformin"),
            "status": "active",
            "code": _coding("http://www.nlm.nih.gov/research/umls/rxnorm", "860975", "metformin 500 MG"),
        },
    ]
    return {f"{r['resourceType']}/{r['id']}": r for r in records}


# --- the per-patient records ------------------------------------------------------------------


@dataclass(frozen=True)
class Owner:
    """Whose records are being built: the patient key (A, B) and references into its data."""

    key: str
    patient: str  # "Patient/id"
    coverage: str  # "Coverage/id" (the payer Coverage of seed.py)

    def id(self, name: str) -> str:
        return record_id(self.key, name)

    def ref(self, resource_type: str, name: str) -> str:
        return f"{resource_type}/{self.id(name)}"


Built = tuple[dict[str, Any], dict[str, str]]  # (resource, search parameter -> value)


@dataclass(frozen=True)
class Profile:
    """One US Core 6.1 profile: its record and the SHALL search combinations a patient app sends."""

    slug: str  # Inferno's group name without us_core_
    resource_type: str
    searches: tuple[tuple[str, ...], ...]
    build: Callable[[Owner], Built]
    revinclude_provenance: bool = True


def _subject(owner: Owner) -> dict[str, str]:
    return {"reference": owner.patient}


def _allergy(o: Owner) -> Built:
    return {
        "resourceType": "AllergyIntolerance",
        "id": o.id("allergy"),
        "clinicalStatus": _coding("http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "active"),
        "verificationStatus": _coding(
            "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification", "confirmed"
        ),
        "code": _coding(SNOMED, "91935009", "Allergy to peanut"),
        "patient": _subject(o),
    }, {}


def _care_plan(o: Owner) -> Built:
    return {
        "resourceType": "CarePlan",
        "id": o.id("careplan"),
        "status": "active",
        "intent": "plan",
        "category": [_coding(CAREPLAN_CATEGORY, "assess-plan")],
        "subject": _subject(o),
        "period": {"start": DAY},
        "text": {"status": "generated", "div": "<div>plan</div>"},
    }, {"category": _token(CAREPLAN_CATEGORY, "assess-plan")}


def _care_team(o: Owner) -> Built:
    members = (
        o.patient,
        shared_ref("Practitioner/npi"),
        shared_ref("PractitionerRole/npi"),
        o.ref("RelatedPerson", "relatedperson"),
    )
    return {
        "resourceType": "CareTeam",
        "id": o.id("careteam"),
        "status": "active",
        "subject": _subject(o),
        "participant": [
            {"role": [_coding(SNOMED, "116154003", "Patient")], "member": {"reference": ref}} for ref in members
        ],
    }, {"status": "active"}


def _condition(name: str, system: str, code: str) -> Callable[[Owner], Built]:
    def build(o: Owner) -> Built:
        return {
            "resourceType": "Condition",
            "id": o.id(name),
            "subject": _subject(o),
            "clinicalStatus": _coding("http://terminology.hl7.org/CodeSystem/condition-clinical", "active"),
            "verificationStatus": _coding("http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed"),
            "category": [_coding(system, code)],
            "code": _coding(SNOMED, "38341003", "Hypertension"),
            "recordedDate": AT,
        }, {"category": _token(system, code)}

    return build


def _coverage(o: Owner) -> Built:
    return {"resourceType": "Coverage", "id": o.coverage.split("/")[1]}, {}  # seed.py's payer Coverage


def _device(o: Owner) -> Built:
    return {
        "resourceType": "Device",
        "id": o.id("device"),
        "status": "active",
        "patient": _subject(o),
        "udiCarrier": [{"deviceIdentifier": "09504000059118", "carrierHRF": f"(01)09504000059118(21){o.key}"}],
        "type": _coding(SNOMED, "468063009", "Coated femoral stem prosthesis"),
    }, {}


def _diagnostic_report(name: str, system: str, code: str, loinc: str) -> Callable[[Owner], Built]:
    def build(o: Owner) -> Built:
        report: dict[str, Any] = {
            "resourceType": "DiagnosticReport",
            "id": o.id(name),
            "status": "final",
            "subject": _subject(o),
            "category": [_coding(system, code)],
            "code": _coding(LOINC, loinc),
            "effectiveDateTime": AT,
            "issued": AT,
            "performer": [{"reference": shared_ref("Organization/provider")}],
        }
        if name == "report-lab":
            report["result"] = [{"reference": o.ref("Observation", "lab")}]
        else:
            report["presentedForm"] = [{"contentType": "text/plain", "data": base64.b64encode(b"note").decode()}]
        return report, {"category": _token(system, code), "code": _token(LOINC, loinc), "date": DAY}

    return build


def _document_reference(o: Owner) -> Built:
    return {
        "resourceType": "DocumentReference",
        "id": o.id("document"),
        "status": "current",
        "subject": _subject(o),
        "type": _coding(LOINC, "34117-2", "History and physical note"),
        "category": [_coding(DOC_CATEGORY, "clinical-note")],
        "date": AT,
        "author": [{"reference": shared_ref("Practitioner/npi")}],
        "content": [{"attachment": {"contentType": "text/plain", "url": o.ref("Binary", "binary")}}],
        "context": {"encounter": [{"reference": o.ref("Encounter", "encounter")}]},
    }, {"type": _token(LOINC, "34117-2"), "category": _token(DOC_CATEGORY, "clinical-note"), "date": DAY}


def _encounter(o: Owner) -> Built:
    return {
        "resourceType": "Encounter",
        "id": o.id("encounter"),
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "type": [_coding(SNOMED, "185349003", "Encounter for check up")],
        "subject": _subject(o),
        "participant": [{"individual": {"reference": shared_ref("Practitioner/npi")}}],
        "period": {"start": AT, "end": f"{DAY}T10:00:00Z"},
        "location": [{"location": {"reference": shared_ref("Location/clinic")}}],
        "serviceProvider": {"reference": shared_ref("Organization/provider")},
    }, {"date": DAY}


def _goal(o: Owner) -> Built:
    return {
        "resourceType": "Goal",
        "id": o.id("goal"),
        "lifecycleStatus": "active",
        "description": {"text": "Walk 30 minutes a day"},
        "subject": _subject(o),
        "target": [{"dueDate": "2026-06-30"}],
    }, {}


def _immunization(o: Owner) -> Built:
    return {
        "resourceType": "Immunization",
        "id": o.id("immunization"),
        "status": "completed",
        "vaccineCode": _coding("http://hl7.org/fhir/sid/cvx", "140", "Influenza, seasonal"),
        "patient": _subject(o),
        "occurrenceDateTime": AT,
        "primarySource": True,
    }, {}


def _medication_dispense(o: Owner) -> Built:
    return {
        "resourceType": "MedicationDispense",
        "id": o.id("dispense"),
        "status": "completed",
        "medicationReference": {"reference": shared_ref("Medication/metformin")},
        "subject": _subject(o),
        "authorizingPrescription": [{"reference": o.ref("MedicationRequest", "medrequest")}],
        "whenHandedOver": AT,
    }, {}


def _medication_request(o: Owner) -> Built:
    return {
        "resourceType": "MedicationRequest",
        "id": o.id("medrequest"),
        "status": "active",
        "intent": "order",
        "medicationReference": {"reference": shared_ref("Medication/metformin")},
        "subject": _subject(o),
        "authoredOn": AT,
        "requester": {"reference": shared_ref("Practitioner/npi")},
    }, {"intent": "order", "status": "active"}


def _observation(name: str, category: tuple[str, str], loinc: str, **value: Any) -> Callable[[Owner], Built]:
    def build(o: Owner) -> Built:
        categories = [_coding(*category)]
        if category[1] == "survey":
            categories.append(_coding(US_CORE_CATEGORY, "sdoh"))
        observation = {
            "resourceType": "Observation",
            "id": o.id(name),
            "status": "final",
            "category": categories,
            "code": _coding(LOINC, loinc),
            "subject": _subject(o),
            "effectiveDateTime": AT,
            **(value or {"valueQuantity": {"value": 1, "unit": "1"}}),
        }
        return observation, {"category": _token(*category), "code": _token(LOINC, loinc), "date": DAY}

    return build


def _procedure(o: Owner) -> Built:
    return {
        "resourceType": "Procedure",
        "id": o.id("procedure"),
        "status": "completed",
        "subject": _subject(o),
        "code": _coding(SNOMED, "73761001", "Colonoscopy"),
        "performedDateTime": AT,
    }, {"date": DAY}


def _questionnaire_response(o: Owner) -> Built:
    return {
        "resourceType": "QuestionnaireResponse",
        "id": o.id("questionnaire"),
        "status": "completed",
        "questionnaire": "http://hl7.org/fhir/us/core/Questionnaire/phq-2",
        "subject": _subject(o),
        "authored": AT,
        "item": [{"linkId": "1", "answer": [{"valueInteger": 0}]}],
    }, {}


def _related_person(o: Owner) -> Built:
    return {
        "resourceType": "RelatedPerson",
        "id": o.id("relatedperson"),
        "active": True,
        "patient": _subject(o),
        "relationship": [_coding("http://terminology.hl7.org/CodeSystem/v3-RoleCode", "MTH", "mother")],
        "name": [{"family": "Relative", "given": ["Rae"]}],
    }, {}


def _service_request(o: Owner) -> Built:
    return {
        "resourceType": "ServiceRequest",
        "id": o.id("servicerequest"),
        "status": "active",
        "intent": "order",
        "category": [_coding(SNOMED, "108252007", "Laboratory procedure")],
        "code": _coding(LOINC, "4548-4", "Hemoglobin A1c"),
        "subject": _subject(o),
        "authoredOn": AT,
    }, {"category": _token(SNOMED, "108252007"), "code": _token(LOINC, "4548-4"), "authored": DAY}


def _specimen(o: Owner) -> Built:
    return {
        "resourceType": "Specimen",
        "id": o.id("specimen"),
        "status": "available",
        "type": _coding("http://terminology.hl7.org/CodeSystem/v2-0487", "BLD", "Whole blood"),
        "subject": _subject(o),
        "receivedTime": AT,
    }, {}


def _shared(name: str) -> Callable[[Owner], Built]:
    def build(_o: Owner) -> Built:
        return {"resourceType": name.split("/")[0], "id": shared_ref(name).split("/")[1]}, {
            "name": {
                "Organization/provider": ORGANIZATION_NAME,
                "Location/clinic": LOCATION_NAME,
                "Practitioner/npi": PRACTITIONER_FAMILY,
            }.get(name, ""),
            "address": CITY,
            "identifier": _token(NPI, PRACTITIONER_NPI),
            "specialty": SPECIALTY,
            "practitioner": shared_ref("Practitioner/npi"),
        }

    return build


VITALS = ("patient", "code"), ("patient", "category", "date"), ("patient", "category")
CATEGORY_FIRST = ("patient", "category"), ("patient", "category", "date"), ("patient", "code")
VITAL = (OBS_CATEGORY, "vital-signs")
SOCIAL = (OBS_CATEGORY, "social-history")
REPORTS = ("patient", "category"), ("patient",), ("patient", "category", "date"), ("patient", "code")

PROFILES: tuple[Profile, ...] = (
    Profile("allergyintolerance", "AllergyIntolerance", (("patient",),), _allergy),
    Profile("careplan", "CarePlan", (("patient", "category"),), _care_plan),
    Profile("careteam", "CareTeam", (("patient", "status"),), _care_team),
    Profile(
        "condition_encounter_diagnosis",
        "Condition",
        (("patient", "category"), ("patient",)),
        _condition("condition-encounter", CONDITION_CATEGORY, "encounter-diagnosis"),
    ),
    Profile(
        "condition_problems_health_concerns",
        "Condition",
        (("patient", "category"), ("patient",)),
        _condition("condition-problem", CONDITION_CATEGORY, "problem-list-item"),
    ),
    Profile(
        "condition_health_concern",
        "Condition",
        (("patient", "category"),),
        _condition("condition-concern", US_CORE_CONDITION_CATEGORY, "health-concern"),
    ),
    Profile("coverage", "Coverage", (("patient",),), _coverage),
    Profile("implantable_device", "Device", (("patient",),), _device),
    Profile(
        "diagnosticreport_note",
        "DiagnosticReport",
        REPORTS,
        _diagnostic_report("report-note", LOINC, "LP29684-5", "18748-4"),
    ),
    Profile(
        "diagnosticreport_lab",
        "DiagnosticReport",
        REPORTS,
        _diagnostic_report("report-lab", DR_CATEGORY, "LAB", "58410-2"),
    ),
    Profile(
        "documentreference",
        "DocumentReference",
        (("patient",), ("_id",), ("patient", "type"), ("patient", "category", "date"), ("patient", "category")),
        _document_reference,
    ),
    Profile("encounter", "Encounter", (("patient",), ("_id",), ("date", "patient")), _encounter),
    Profile("goal", "Goal", (("patient",),), _goal),
    Profile("immunization", "Immunization", (("patient",),), _immunization),
    Profile("location", "Location", (("name",), ("address",)), _shared("Location/clinic"), False),
    Profile("medication", "Medication", (), _shared("Medication/metformin"), False),
    Profile("medicationdispense", "MedicationDispense", (("patient",),), _medication_dispense),
    Profile(
        "medicationrequest",
        "MedicationRequest",
        (("patient", "intent"), ("patient", "intent", "status")),
        _medication_request,
    ),
    Profile(
        "observation_lab",
        "Observation",
        CATEGORY_FIRST,
        _observation("lab", (OBS_CATEGORY, "laboratory"), "2339-0", valueQuantity={"value": 101, "unit": "mg/dL"}),
    ),
    Profile(
        "observation_pregnancystatus",
        "Observation",
        VITALS,
        _observation("pregnancy-status", SOCIAL, "82810-3", valueCodeableConcept=_coding(SNOMED, "60001007")),
    ),
    Profile(
        "observation_pregnancyintent",
        "Observation",
        VITALS,
        _observation("pregnancy-intent", SOCIAL, "86645-9", valueCodeableConcept=_coding(SNOMED, "454381000124105")),
    ),
    Profile(
        "observation_occupation",
        "Observation",
        VITALS,
        _observation("occupation", SOCIAL, "11341-5", valueCodeableConcept={"text": "Teacher"}),
    ),
    Profile("respiratory_rate", "Observation", VITALS, _observation("respiratory-rate", VITAL, "9279-1")),
    Profile(
        "simple_observation",
        "Observation",
        CATEGORY_FIRST,
        _observation("sdoh", (US_CORE_CATEGORY, "sdoh"), "88122-7", valueCodeableConcept=_coding(LOINC, "LA28397-0")),
    ),
    Profile("heart_rate", "Observation", VITALS, _observation("heart-rate", VITAL, "8867-4")),
    Profile("body_temperature", "Observation", VITALS, _observation("body-temperature", VITAL, "8310-5")),
    Profile("pediatric_weight_for_height", "Observation", VITALS, _observation("weight-for-height", VITAL, "77606-2")),
    Profile("pulse_oximetry", "Observation", VITALS, _observation("pulse-oximetry", VITAL, "59408-5")),
    Profile(
        "smokingstatus",
        "Observation",
        VITALS,
        _observation("smoking-status", SOCIAL, "72166-2", valueCodeableConcept=_coding(SNOMED, "266919005")),
    ),
    Profile(
        "observation_sexual_orientation",
        "Observation",
        VITALS,
        _observation("sexual-orientation", SOCIAL, "76690-7", valueCodeableConcept=_coding(SNOMED, "20430005")),
    ),
    Profile("head_circumference", "Observation", VITALS, _observation("head-circumference", VITAL, "9843-4")),
    Profile("body_height", "Observation", VITALS, _observation("body-height", VITAL, "8302-2")),
    Profile("bmi", "Observation", VITALS, _observation("bmi", VITAL, "39156-5")),
    Profile(
        "observation_screening_assessment",
        "Observation",
        CATEGORY_FIRST,
        _observation("screening", (OBS_CATEGORY, "survey"), "44249-1", valueInteger=3),
    ),
    Profile("blood_pressure", "Observation", VITALS, _observation("blood-pressure", VITAL, "85354-9")),
    Profile(
        "observation_clinical_result",
        "Observation",
        CATEGORY_FIRST,
        _observation("clinical-test", (OBS_CATEGORY, "exam"), "8601-7", valueString="normal sinus rhythm"),
    ),
    Profile(
        "observation_clinical_result_imaging",
        "Observation",
        CATEGORY_FIRST,
        _observation("imaging", (OBS_CATEGORY, "imaging"), "24627-2", valueString="no acute findings"),
    ),
    Profile("pediatric_bmi_for_age", "Observation", VITALS, _observation("bmi-for-age", VITAL, "59576-9")),
    Profile(
        "head_occipital_frontal_circumference_percentile",
        "Observation",
        VITALS,
        _observation("head-percentile", VITAL, "8289-1"),
    ),
    Profile("body_weight", "Observation", VITALS, _observation("body-weight", VITAL, "29463-7")),
    Profile("organization", "Organization", (("name",), ("address",)), _shared("Organization/provider"), False),
    Profile("practitioner", "Practitioner", (("name",), ("identifier",)), _shared("Practitioner/npi"), False),
    Profile(
        "practitionerrole",
        "PractitionerRole",
        (("specialty",), ("practitioner",)),
        _shared("PractitionerRole/npi"),
        False,
    ),
    Profile("procedure", "Procedure", (("patient",), ("patient", "date")), _procedure),
    Profile("questionnaireresponse", "QuestionnaireResponse", (("patient",), ("_id",)), _questionnaire_response),
    Profile("relatedperson", "RelatedPerson", (("_id",),), _related_person),
    Profile(
        "servicerequest",
        "ServiceRequest",
        (("patient",), ("_id",), ("patient", "category", "authored"), ("patient", "category"), ("patient", "code")),
        _service_request,
    ),
    Profile("specimen", "Specimen", (("_id",),), _specimen, False),
)
PROFILE_BY_SLUG = {profile.slug: profile for profile in PROFILES}
# Searches of types outside the Patient compartment: no binding, no narrowing.
UNBOUND_TYPES = frozenset({"Location", "Medication", "Organization", "Practitioner", "PractitionerRole"})
# Includes US Core lists (CareTeam's and PractitionerRole's are not sent by Inferno 6.1, but a server
# SHOULD support them): (profile slug, include, whether its target types include a compartment type).
INCLUDES: tuple[tuple[str, str, bool], ...] = (
    ("careteam", "CareTeam:participant:Practitioner", False),
    ("careteam", "CareTeam:participant:PractitionerRole", False),
    ("careteam", "CareTeam:participant:Patient", True),
    ("careteam", "CareTeam:participant:RelatedPerson", True),
    ("medicationdispense", "MedicationDispense:medication", False),
    ("medicationrequest", "MedicationRequest:medication", False),
    ("practitionerrole", "PractitionerRole:endpoint", False),
    ("practitionerrole", "PractitionerRole:practitioner", False),
)


def patient_records(owner: Owner) -> dict[str, dict[str, Any]]:
    """The owner's own US Core records (the Coverage comes from seed.py), plus a Binary (the
    DocumentReference's content, securityContext = the patient) and a Provenance that targets
    every one of them and the Patient."""
    records: dict[str, dict[str, Any]] = {}
    for profile in PROFILES:
        resource, _values = profile.build(owner)
        ref = f"{resource['resourceType']}/{resource['id']}"
        if profile.resource_type not in UNBOUND_TYPES and profile.slug != "coverage":
            records[ref] = resource
    binary_id = owner.id("binary")
    records[f"Binary/{binary_id}"] = {
        "resourceType": "Binary",
        "id": binary_id,
        "contentType": "text/plain",
        "securityContext": {"reference": owner.patient},
        "data": base64.b64encode(f"clinical note of {owner.key}".encode()).decode(),
    }
    targets = [owner.patient, owner.coverage, *records]
    provenance_id = owner.id("provenance")
    records[f"Provenance/{provenance_id}"] = {
        "resourceType": "Provenance",
        "id": provenance_id,
        "recorded": AT,
        "target": [{"reference": ref} for ref in targets],
        "agent": [
            {
                "type": _coding("http://terminology.hl7.org/CodeSystem/provenance-participant-type", "author"),
                "who": {"reference": shared_ref("Practitioner/npi")},
                "onBehalfOf": {"reference": shared_ref("Organization/provider")},
            }
        ],
    }
    return records


def provenance_ref(owner: Owner) -> str:
    return owner.ref("Provenance", "provenance")


def profile_record(profile: Profile, owner: Owner) -> str:
    """ "Type/id" of the record a profile's searches must find."""
    resource, _values = profile.build(owner)
    return f"{resource['resourceType']}/{resource['id']}"


def search_values(profile: Profile, owner: Owner) -> dict[str, str]:
    resource, values = profile.build(owner)
    return {"patient": owner.patient.split("/")[1], "_id": resource["id"], **values}


def search_query(profile: Profile, params: tuple[str, ...], owner: Owner) -> str:
    """``Type?p1=v1&p2=v2`` with the owner's values (``|``, ``/`` and ``:`` left as they are)."""
    values = search_values(profile, owner)
    return profile.resource_type + "?" + urlencode([(name, values[name]) for name in params], safe="|/:")
