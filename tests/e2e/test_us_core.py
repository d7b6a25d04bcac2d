"""US Core 6.1 and CARIN Blue Button traffic of a patient app, through each gateway, with patient A's
token: every US Core profile's SHALL searches (each also with ``_revinclude=Provenance:target`` and
as POST ``_search``), reads by id, the narrowed Patient searches, the US Core and CARIN includes, and
CARIN's EOB/Coverage/Patient/Practitioner/Organization requests. Each returns 200 with A's record and
nothing of anyone else's. The same requests with B's values are refused, or return nothing of B's.

The records and the searches are in ``us_core.py``; the search values are A's (or B's) own.
"""

from __future__ import annotations

from urllib.parse import urlencode

import httpx
import pytest

from . import us_core
from .checks import assert_no_foreign_data, assert_ok, assert_only_patients_data, entry_refs, smartgate_reason
from .conftest import E2EStack
from .seed import PatientData

pytestmark = pytest.mark.e2e

SCOPE = "launch/patient patient/*.rs"
CARIN_SCOPE = (
    "launch/patient patient/ExplanationOfBenefit.read patient/Coverage.read patient/Patient.read "
    "patient/Practitioner.read patient/Organization.read patient/PractitionerRole.read "
    "patient/RelatedPerson.read"
)
PROVENANCE = "_revinclude=Provenance:target"
FORM = {"content-type": "application/x-www-form-urlencoded"}
ENFORCE_HINT = "response_verification.mode: enforce"

SEARCHES = [(p.slug, params) for p in us_core.PROFILES for params in p.searches]
BOUND_SEARCHES = [
    (slug, params)
    for slug, params in SEARCHES
    if us_core.PROFILE_BY_SLUG[slug].resource_type not in us_core.UNBOUND_TYPES
]
PATIENT_SEARCHES = (("_id",), ("identifier",), ("name",), ("birthdate", "name"), ("gender", "name"))
READS = [p.slug for p in us_core.PROFILES if p.resource_type not in us_core.UNBOUND_TYPES]
# (include, whether it can bring in a compartment type other than through the binding parameter).
# ``:patient`` follows the binding parameter itself, so it brings only the context patient: every mode.
CARIN_INCLUDES = (
    ("ExplanationOfBenefit:*", True),
    ("ExplanationOfBenefit:patient", False),
    ("ExplanationOfBenefit:coverage", True),
    ("ExplanationOfBenefit:payee", True),
    ("ExplanationOfBenefit:provider", False),
    ("ExplanationOfBenefit:care-team", False),
    ("ExplanationOfBenefit:insurer", False),
)
LAB = f"{us_core.OBS_CATEGORY}|laboratory"
VITAL_SIGNS = f"{us_core.OBS_CATEGORY}|vital-signs"
GRANULAR_SCOPE = f"launch/patient patient/Observation.rs?category={LAB} patient/Observation.rs?category={VITAL_SIGNS}"


def _search_id(value: tuple[str, ...] | str) -> str:
    return "+".join(value) if isinstance(value, tuple) else value


def _query(params: list[tuple[str, str]]) -> str:
    return urlencode(params, safe="|/:*")


def _bundle_refs(response: httpx.Response) -> set[str]:
    return entry_refs(assert_ok(response))


def _assert_refused_or_nothing_of(stack: E2EStack, response: httpx.Response, record: str) -> None:
    """Denied (403), or a 200 that holds nothing of the other patient's."""
    assert response.status_code in (200, 403), f"{response.request.url}: {response.status_code} {response.text[:300]}"
    if response.status_code == 200:
        assert record not in _bundle_refs(response)
    assert_only_patients_data(stack, "A", response)


def _assert_needs_enforcing_verification(response: httpx.Response) -> None:
    assert response.status_code == 403, f"{response.request.url}: {response.status_code} {response.text[:300]}"
    assert ENFORCE_HINT in response.text, response.text[:500]


# --- US Core searches ------------------------------------------------------------------------


@pytest.mark.parametrize(("slug", "params"), SEARCHES, ids=[f"{s}:{_search_id(p)}" for s, p in SEARCHES])
def test_us_core_shall_search_returns_the_patients_record_and_nothing_of_anyone_elses(
    gateway: E2EStack, slug: str, params: tuple[str, ...]
) -> None:
    profile, owner = us_core.PROFILE_BY_SLUG[slug], gateway.data.patients["A"].owner()
    token = gateway.token("alice", SCOPE)
    query = us_core.search_query(profile, params, owner)
    response = gateway.get(f"/{query}", token)
    assert us_core.profile_record(profile, owner) in _bundle_refs(response)
    assert_only_patients_data(gateway, "A", response)
    if profile.revinclude_provenance:
        with_provenance = gateway.get(f"/{query}&{PROVENANCE}", token)
        refs = _bundle_refs(with_provenance)
        assert {us_core.profile_record(profile, owner), us_core.provenance_ref(owner)} <= refs
        assert_only_patients_data(gateway, "A", with_provenance)


@pytest.mark.parametrize(("slug", "params"), BOUND_SEARCHES, ids=[f"{s}:{_search_id(p)}" for s, p in BOUND_SEARCHES])
def test_us_core_search_with_another_patients_values_is_refused_or_finds_nothing_of_theirs(
    gateway: E2EStack, slug: str, params: tuple[str, ...]
) -> None:
    """Naming B is a 403 (never narrowed to an empty result); B's record id alone is narrowed to A."""
    profile, b = us_core.PROFILE_BY_SLUG[slug], gateway.data.patients["B"].owner()
    token = gateway.token("alice", SCOPE)
    query = us_core.search_query(profile, params, b)
    suffixes = ("", f"&{PROVENANCE}") if profile.revinclude_provenance else ("",)
    for suffix in suffixes:
        response = gateway.get(f"/{query}{suffix}", token)
        if "patient" in params:
            assert response.status_code == 403, f"{query}{suffix}: {response.status_code} {response.text[:300]}"
        _assert_refused_or_nothing_of(gateway, response, us_core.profile_record(profile, b))


@pytest.mark.parametrize(("slug", "params"), SEARCHES, ids=[f"{s}:{_search_id(p)}" for s, p in SEARCHES])
def test_us_core_search_by_post_with_the_parameters_in_the_body(
    e2e: E2EStack, slug: str, params: tuple[str, ...]
) -> None:
    """Inferno repeats each search as POST [type]/_search with a form body. Bound in the body, by one
    ``_id`` the look-up proves the patient's, or a type outside the compartment: served. Otherwise
    refused, because Medplum ignores URL parameters on POST _search, so narrowing could not work
    (test_post_search_naming_no_patient_is_refused)."""
    profile, owner = us_core.PROFILE_BY_SLUG[slug], e2e.data.patients["A"].owner()
    values = us_core.search_values(profile, owner)
    body = urlencode([(name, values[name]) for name in params])
    response = e2e.request(
        "POST", f"/{profile.resource_type}/_search", e2e.token("alice", SCOPE), content=body, headers=FORM
    )
    if "patient" in params or params == ("_id",) or profile.resource_type in us_core.UNBOUND_TYPES:
        assert us_core.profile_record(profile, owner) in _bundle_refs(response)
    else:
        assert response.status_code == 403, f"{response.status_code} {response.text[:300]}"
    assert_only_patients_data(e2e, "A", response)


# --- reads ------------------------------------------------------------------------------------


def _own_ref(patient: PatientData, name: str) -> str:
    owner = patient.owner()
    extra = {
        "patient": patient.reference,
        "binary": owner.ref("Binary", "binary"),
        "provenance": us_core.provenance_ref(owner),
        "coverage": owner.coverage,
        "explanationofbenefit": next(r for r in patient.resources if r.startswith("ExplanationOfBenefit/")),
    }
    return extra[name] if name in extra else us_core.profile_record(us_core.PROFILE_BY_SLUG[name], owner)


OWN_READS = [*READS, "patient", "binary", "provenance", "explanationofbenefit"]
SHARED_READS = sorted(us_core.SHARED_NAMES)


@pytest.mark.parametrize("name", OWN_READS)
def test_read_of_the_patients_own_record(gateway: E2EStack, name: str) -> None:
    ref = _own_ref(gateway.data.patients["A"], name)
    response = gateway.get(f"/{ref}", gateway.token("alice", SCOPE))
    assert assert_ok(response)["id"] == ref.split("/")[1]
    assert_only_patients_data(gateway, "A", response)


@pytest.mark.parametrize("name", SHARED_READS)
def test_read_of_a_shared_record_outside_the_compartment(gateway: E2EStack, name: str) -> None:
    ref = us_core.shared_ref(name)
    assert assert_ok(gateway.get(f"/{ref}", gateway.token("alice", SCOPE)))["id"] == ref.split("/")[1]


@pytest.mark.parametrize("name", OWN_READS)
def test_read_of_another_patients_record_is_refused(gateway: E2EStack, name: str) -> None:
    ref = _own_ref(gateway.data.patients["B"], name)
    response = gateway.get(f"/{ref}", gateway.token("alice", SCOPE))
    assert response.status_code == 403, f"{ref}: {response.status_code} {response.text[:300]}"
    assert_no_foreign_data(gateway, "A", response)


# --- Patient searches ---------------------------------------------------------------------------


def _patient_values(patient: PatientData) -> dict[str, str]:
    resource = patient.resources[patient.reference]
    identifier = resource["identifier"][0]
    return {
        "_id": patient.patient_id,
        "identifier": f"{identifier['system']}|{identifier['value']}",
        "name": patient.family,
        "birthdate": resource["birthDate"],
        "gender": resource["gender"],
    }


@pytest.mark.parametrize("params", PATIENT_SEARCHES, ids=_search_id)
def test_patient_search_with_the_patients_own_values_returns_the_patient(
    gateway: E2EStack, params: tuple[str, ...]
) -> None:
    """``_id`` is bound; the others name no patient and are narrowed to ``_id=A``."""
    a = gateway.data.patients["A"]
    values = _patient_values(a)
    query = _query([(name, values[name]) for name in params])
    token = gateway.token("alice", SCOPE)
    for suffix in ("", f"&{PROVENANCE}"):
        response = gateway.get(f"/Patient?{query}{suffix}", token)
        refs = _bundle_refs(response)
        assert a.reference in refs
        if suffix:
            assert us_core.provenance_ref(a.owner()) in refs
        assert_only_patients_data(gateway, "A", response)


@pytest.mark.parametrize("params", PATIENT_SEARCHES, ids=_search_id)
def test_patient_search_with_another_patients_values_finds_nothing_of_theirs(
    gateway: E2EStack, params: tuple[str, ...]
) -> None:
    b = gateway.data.patients["B"]
    values = _patient_values(b)
    query = _query([(name, values[name]) for name in params])
    for suffix in ("", f"&{PROVENANCE}"):
        response = gateway.get(f"/Patient?{query}{suffix}", gateway.token("alice", SCOPE))
        if params == ("_id",):
            assert response.status_code == 403, f"{response.status_code} {response.text[:300]}"
        _assert_refused_or_nothing_of(gateway, response, b.reference)


# --- includes -----------------------------------------------------------------------------------


def _include_target(stack: E2EStack, include: str) -> str:
    a = stack.data.patients["A"]
    return {
        "CareTeam:participant:Practitioner": us_core.shared_ref("Practitioner/npi"),
        "CareTeam:participant:PractitionerRole": us_core.shared_ref("PractitionerRole/npi"),
        "CareTeam:participant:Patient": a.reference,
        "CareTeam:participant:RelatedPerson": a.owner().ref("RelatedPerson", "relatedperson"),
        "MedicationDispense:medication": us_core.shared_ref("Medication/metformin"),
        "MedicationRequest:medication": us_core.shared_ref("Medication/metformin"),
        "PractitionerRole:endpoint": us_core.shared_ref("Endpoint/direct"),
        "PractitionerRole:practitioner": us_core.shared_ref("Practitioner/npi"),
    }[include]


@pytest.mark.parametrize(
    ("slug", "include", "compartment_target"), us_core.INCLUDES, ids=[include for _, include, _ in us_core.INCLUDES]
)
def test_us_core_include(gateway: E2EStack, slug: str, include: str, compartment_target: bool) -> None:
    """Includes of types outside the compartment: every mode. Of compartment types: only when response
    verification enforces (every included resource is verified), otherwise 403 naming the setting."""
    profile, owner = us_core.PROFILE_BY_SLUG[slug], gateway.data.patients["A"].owner()
    query = us_core.search_query(profile, profile.searches[0], owner)
    response = gateway.get(f"/{query}&_include={include}", gateway.token("alice", SCOPE))
    if compartment_target and not _enforcing(gateway):
        _assert_needs_enforcing_verification(response)
        return
    refs = _bundle_refs(response)
    assert {us_core.profile_record(profile, owner), _include_target(gateway, include)} <= refs
    assert_only_patients_data(gateway, "A", response)


def _enforcing(stack: E2EStack) -> bool:
    """Whether the gateway enforces response verification (conftest's "verified" gateway)."""
    return stack.workdir.name == "verified"


# --- CARIN Blue Button ---------------------------------------------------------------------------


def _carin_refs(stack: E2EStack, patient: PatientData) -> dict[str, str]:
    payer = next(
        ref
        for ref in stack.data.shared
        if ref.startswith("Organization/") and stack.data.shared[ref].get("name") == "E2E Health Plan"
    )
    return {
        "eob": next(r for r in patient.resources if r.startswith("ExplanationOfBenefit/")),
        "coverage": next(r for r in patient.resources if r.startswith("Coverage/")),
        "patient": patient.reference,
        "practitioner": patient.practitioner,
        "payer": payer,
        "provider": us_core.shared_ref("Organization/provider"),
    }


def _carin_include_targets(refs: dict[str, str], include: str) -> set[str]:
    by_name = {
        "patient": {refs["patient"]},
        "coverage": {refs["coverage"]},
        "payee": {refs["patient"]},
        "provider": {refs["provider"]},
        "care-team": {refs["practitioner"]},
        "insurer": {refs["payer"]},
    }
    name = include.split(":")[1]
    return set().union(*by_name.values()) if name == "*" else by_name[name]


def _carin_requests(refs: dict[str, str], patient_id: str) -> list[str]:
    eob_id, cov_id = refs["eob"].split("/")[1], refs["coverage"].split("/")[1]
    return [
        f"ExplanationOfBenefit?patient={patient_id}",
        f"ExplanationOfBenefit?_id={eob_id}",
        f"/{refs['eob']}",
        f"Coverage?patient={patient_id}",
        f"Coverage?_id={cov_id}",
        f"/{refs['coverage']}",
        f"/{refs['patient']}",
        f"Patient?_id={patient_id}",
    ]


CARIN_READS = (
    "eob by patient",
    "eob by _id",
    "eob read",
    "coverage by patient",
    "coverage by _id",
    "coverage read",
    "patient read",
    "patient by _id",
)


@pytest.mark.parametrize("index", range(len(CARIN_READS)), ids=CARIN_READS)
def test_carin_request_returns_the_patients_record(gateway: E2EStack, index: int) -> None:
    a = gateway.data.patients["A"]
    refs = _carin_refs(gateway, a)
    path = _carin_requests(refs, a.patient_id)[index]
    response = gateway.get("/" + path.lstrip("/"), gateway.token("alice", CARIN_SCOPE))
    body = assert_ok(response)
    found = entry_refs(body) if body["resourceType"] == "Bundle" else {f"{body['resourceType']}/{body['id']}"}
    assert found & {refs["eob"], refs["coverage"], refs["patient"]}, found
    assert_only_patients_data(gateway, "A", response)


@pytest.mark.parametrize("index", range(len(CARIN_READS)), ids=CARIN_READS)
def test_carin_request_for_another_patient_is_refused_or_finds_nothing_of_theirs(gateway: E2EStack, index: int) -> None:
    b = gateway.data.patients["B"]
    refs = _carin_refs(gateway, b)
    path = _carin_requests(refs, b.patient_id)[index]
    response = gateway.get("/" + path.lstrip("/"), gateway.token("alice", CARIN_SCOPE))
    if "?_id=" not in path or path.startswith("Patient"):
        assert response.status_code == 403, f"{path}: {response.status_code} {response.text[:300]}"
    assert response.status_code in (200, 403)
    assert_only_patients_data(gateway, "A", response)


@pytest.mark.parametrize("name", ["practitioner", "payer", "provider"])
def test_carin_read_of_a_practitioner_or_organization(gateway: E2EStack, name: str) -> None:
    ref = _carin_refs(gateway, gateway.data.patients["A"])[name]
    token = gateway.token("alice", CARIN_SCOPE)
    assert assert_ok(gateway.get(f"/{ref}", token))["id"] == ref.split("/")[1]
    resource_type, resource_id = ref.split("/")
    assert ref in _bundle_refs(gateway.get(f"/{resource_type}?_id={resource_id}", token))


@pytest.mark.parametrize(("include", "compartment_target"), CARIN_INCLUDES, ids=[i for i, _ in CARIN_INCLUDES])
@pytest.mark.parametrize("bound_by", ["patient", "_id"])
def test_carin_eob_include(gateway: E2EStack, include: str, compartment_target: bool, bound_by: str) -> None:
    """``EOB?patient=A&_include=…`` and Inferno's ``EOB?_id=<A's EOB>&_include=…`` (narrowed)."""
    a = gateway.data.patients["A"]
    refs = _carin_refs(gateway, a)
    value = a.patient_id if bound_by == "patient" else refs["eob"].split("/")[1]
    response = gateway.get(
        f"/ExplanationOfBenefit?{bound_by}={value}&_include={include}",
        gateway.token("alice", _carin_include_scope(include)),
    )
    if compartment_target and not _enforcing(gateway):
        _assert_needs_enforcing_verification(response)
        return
    assert {refs["eob"], *_carin_include_targets(refs, include)} <= _bundle_refs(response)
    assert_only_patients_data(gateway, "A", response)


def _carin_include_scope(include: str) -> str:
    """The CARIN scopes grant what the named includes bring; ``:*`` can bring any type an EOB references
    (Claim, Encounter, Location, Device, ...), so it needs scopes that grant them all."""
    return SCOPE if include.endswith(":*") else CARIN_SCOPE


def test_carin_wildcard_include_needs_scopes_for_every_type_it_can_include(gateway: E2EStack) -> None:
    a = gateway.data.patients["A"]
    response = gateway.get(
        f"/ExplanationOfBenefit?patient={a.patient_id}&_include=ExplanationOfBenefit:*",
        gateway.token("alice", CARIN_SCOPE),
    )
    assert response.status_code == 403 and smartgate_reason(response) == "include_not_permitted", response.text[:300]


@pytest.mark.parametrize(("include", "compartment_target"), CARIN_INCLUDES, ids=[i for i, _ in CARIN_INCLUDES])
def test_carin_eob_include_of_another_patients_eob_finds_nothing_of_theirs(
    gateway: E2EStack, include: str, compartment_target: bool
) -> None:
    b = gateway.data.patients["B"]
    refs = _carin_refs(gateway, b)
    token = gateway.token("alice", _carin_include_scope(include))
    by_patient = gateway.get(f"/ExplanationOfBenefit?patient={b.patient_id}&_include={include}", token)
    assert by_patient.status_code == 403, by_patient.text[:300]
    by_id = gateway.get(f"/ExplanationOfBenefit?_id={refs['eob'].split('/')[1]}&_include={include}", token)
    _assert_refused_or_nothing_of(gateway, by_id, refs["eob"])


def test_carin_coverage_include_of_the_payor(gateway: E2EStack) -> None:
    """Inferno's ``Coverage?_id=…&_include=Coverage:payor``: payor may be a Patient or RelatedPerson."""
    refs = _carin_refs(gateway, gateway.data.patients["A"])
    response = gateway.get(
        f"/Coverage?_id={refs['coverage'].split('/')[1]}&_include=Coverage:payor", gateway.token("alice", CARIN_SCOPE)
    )
    if not _enforcing(gateway):
        _assert_needs_enforcing_verification(response)
        return
    assert {refs["coverage"], refs["payer"]} <= _bundle_refs(response)
    assert_only_patients_data(gateway, "A", response)


@pytest.mark.parametrize(
    "params",
    [
        ("identifier", "{claim}"),
        ("type", "professional"),
        ("service-date", "2026-01-01"),
        ("_lastUpdated", "gt2000-01-01"),
    ],
    ids=lambda p: p[0],
)
def test_carin_eob_search_by_one_parameter_is_narrowed_to_the_patient(
    gateway: E2EStack, params: tuple[str, str]
) -> None:
    """CARIN's test kit sends each EOB search parameter alone, without a patient."""
    a = gateway.data.patients["A"]
    refs = _carin_refs(gateway, a)
    eob = a.resources[refs["eob"]]
    name, value = params
    value = value.format(claim=eob["identifier"][0]["value"])
    response = gateway.get(f"/ExplanationOfBenefit?{name}={value}", gateway.token("alice", CARIN_SCOPE))
    assert refs["eob"] in _bundle_refs(response)
    assert_only_patients_data(gateway, "A", response)


# --- granular scopes, POST _search ----------------------------------------------------------------


def test_comma_list_of_categories_each_granted_by_a_granular_scope(gateway: E2EStack) -> None:
    owner = gateway.data.patients["A"].owner()
    token = gateway.token("alice", GRANULAR_SCOPE)
    response = gateway.get(f"/Observation?patient={owner.patient.split('/')[1]}&category={LAB},{VITAL_SIGNS}", token)
    refs = _bundle_refs(response)
    assert {owner.ref("Observation", "lab"), owner.ref("Observation", "heart-rate")} <= refs
    assert owner.ref("Observation", "smoking-status") not in refs
    assert_only_patients_data(gateway, "A", response)


def test_comma_list_with_a_category_no_scope_grants_is_refused(gateway: E2EStack) -> None:
    owner = gateway.data.patients["A"].owner()
    token = gateway.token("alice", GRANULAR_SCOPE)
    social = f"{us_core.OBS_CATEGORY}|social-history"
    response = gateway.get(f"/Observation?patient={owner.patient.split('/')[1]}&category={LAB},{social}", token)
    assert response.status_code == 403, response.text[:300]
    assert smartgate_reason(response) is not None


def test_post_search_naming_no_patient_is_refused(e2e: E2EStack) -> None:
    """Medplum's POST [type]/_search reads only the body (test_fhir_server pins it): a patient parameter
    set on the URL would be ignored, so smartgate cannot narrow a POST _search and refuses it."""
    owner = e2e.data.patients["A"].owner()
    response = e2e.request(
        "POST",
        "/Observation/_search",
        e2e.token("alice", SCOPE),
        content=urlencode({"code": f"{us_core.LOINC}|2339-0"}),
        headers=FORM,
    )
    assert response.status_code == 403, response.text[:300]
    assert_no_foreign_data(e2e, "A", response)
    bound = e2e.request(
        "POST",
        "/Observation/_search",
        e2e.token("alice", SCOPE),
        content=urlencode({"code": f"{us_core.LOINC}|2339-0", "patient": owner.patient.split("/")[1]}),
        headers=FORM,
    )
    assert owner.ref("Observation", "lab") in _bundle_refs(bound)
    assert_only_patients_data(e2e, "A", bound)


@pytest.mark.parametrize("slug", ["encounter", "documentreference", "relatedperson", "specimen"])
def test_post_search_by_another_patients_id_is_refused_by_the_look_up(e2e: E2EStack, slug: str) -> None:
    """A POST _search by one ``_id`` is proven by the membership look-up: B's record is refused."""
    profile, b = us_core.PROFILE_BY_SLUG[slug], e2e.data.patients["B"].owner()
    resource_type, resource_id = us_core.profile_record(profile, b).split("/")
    response = e2e.request(
        "POST",
        f"/{resource_type}/_search",
        e2e.token("alice", SCOPE),
        content=urlencode({"_id": resource_id}),
        headers=FORM,
    )
    assert response.status_code == 403, response.text[:300]
    assert smartgate_reason(response) == "not_in_compartment"
    assert_no_foreign_data(e2e, "A", response)
