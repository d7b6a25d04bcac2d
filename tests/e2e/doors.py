"""Every door of a FHIR API that a patient-context token might use to reach another patient's
data: reads, vreads, every search parameter form, POST _search bodies, includes, _has, history,
operations, batch/transaction Bundles, writes, conditional writes and method tunnelling.

``doors_into(other, ctx, ...)`` lists requests that a token for ``ctx`` sends at ``other``'s
data. ``must_deny`` is False only for requests that may legitimately pass because they stay
bound to ``ctx`` (the FHIR server's AND semantics keep ``other``'s records out): those must
still not leak.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlencode

from .seed import Dataset, PatientData

FHIR_JSON = "application/fhir+json"
FORM = "application/x-www-form-urlencoded"
JSON_PATCH = "application/json-patch+json"


@dataclass(frozen=True)
class Door:
    category: str
    name: str
    method: str
    path: str  # relative to the FHIR base ("" is the base itself; "?..." a query on it)
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    must_deny: bool = True
    enforcing_may_pass: bool = False  # may pass when response verification enforces (see below)


# Searches that name no patient: with search narrowing on (the default) smartgate narrows them to ctx
# (Envoy sets patient=ctx, or _id=ctx for Patient), so they reach the FHIR server bound to ctx. And
# _revinclude=Provenance:target on a bound search, allowed in every mode. They must not leak.
MAY_PASS = frozenset(
    {
        "unbound",
        "unbound by code",
        "unbound _id",
        "Patient by name",
        "Patient by family",
        "Patient by identifier",
        "Patient unbound",
        "Patient by general-practitioner",
        "Coverage by payor",
        "Coverage by subscriber-id",
        "EOB by insurer",
        "EOB by coverage",
        "Observation by practitioner",
        "_revinclude Provenance",
    }
)
# Includes and revincludes that can bring in compartment types: allowed when response verification
# enforces (every included resource is verified; a foreign one withholds the whole response).
MAY_PASS_WHEN_ENFORCING = frozenset(
    {
        "_include subject through performer",
        "_include patient through performer",
        "_include subject:Patient through performer",
        "_include encounter",
        "_revinclude from Practitioner",
        "_revinclude from all Practitioners",
        "_revinclude Coverage from payer",
        "_revinclude EOB from payer",
        "_revinclude DiagnosticReport",
    }
)


def _classified(doors: list[Door]) -> list[Door]:
    names = {door.name for door in doors}
    assert names >= MAY_PASS | MAY_PASS_WHEN_ENFORCING, sorted((MAY_PASS | MAY_PASS_WHEN_ENFORCING) - names)
    return [
        replace(door, must_deny=False)
        if door.name in MAY_PASS
        else replace(door, enforcing_may_pass=True)
        if door.name in MAY_PASS_WHEN_ENFORCING
        else door
        for door in doors
    ]


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def _form(*pairs: tuple[str, str]) -> bytes:
    return urlencode(pairs).encode()


def _observation(subject: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
        "subject": {"reference": subject},
        "valueQuantity": {"value": 71, "unit": "/min"},
        **extra,
    }


def _bundle(kind: str, *entries: dict[str, Any]) -> bytes:
    return _json({"resourceType": "Bundle", "type": kind, "entry": list(entries)})


def _linked_patient_doors(other: PatientData, ctx: PatientData) -> list[Door]:
    """When other's Patient.link points to ctx, the official compartment definition puts other's
    Patient in ctx's compartment; smartgate keeps it out by default. These may pass (what comes back
    must hold only ctx's data), and must not leak."""
    links = other.resources[other.reference].get("link", [])
    if not any(link["other"]["reference"] == ctx.reference for link in links):
        return []
    a, o = ctx.patient_id, other.patient_id
    doors = [
        Door("linked", name, "GET", f"/{path}", must_deny=False)
        for name, path in [
            ("_revinclude Patient:link", f"Patient?_id={a}&_revinclude=Patient:link"),
            ("_revinclude:iterate Patient:link", f"Patient?_id={a}&_revinclude:iterate=Patient:link"),
            ("compartment Patient/ctx/Patient", f"Patient/{a}/Patient"),
            ("compartment Patient/ctx/Patient by _id", f"Patient/{a}/Patient?_id={o}"),
            ("search by link", f"Patient?link=Patient/{a}"),
            ("search by link bare id", f"Patient?link={a}"),
            ("Observation of linked patient via link chain", f"Observation?patient.link=Patient/{a}"),
        ]
    ]
    doors.append(
        Door(
            "linked",
            "POST _search by link",
            "POST",
            "/Patient/_search",
            _form(("link", f"Patient/{a}")),
            {"content-type": FORM},
            must_deny=False,
        )
    )
    doors.append(
        Door(
            "linked",
            "batch search by link",
            "POST",
            "",
            _bundle("batch", {"request": {"method": "GET", "url": f"Patient?link=Patient/{a}"}}),
            {"content-type": FHIR_JSON},
            must_deny=False,
        )
    )
    return doors


def doors_into(
    other: PatientData, ctx: PatientData, data: Dataset, base_url: str, direct_url: str, versions: dict[str, str]
) -> list[Door]:
    """``versions``: "Type/id" -> current versionId of ``other``'s resources (for vread)."""
    o, a = other.patient_id, ctx.patient_id
    obs, a_obs = other.ids("Observation")[0], ctx.ids("Observation")[0]
    cov, eob, cond = other.ids("Coverage")[0], other.ids("ExplanationOfBenefit")[0], other.ids("Condition")[0]
    practitioner = other.practitioner
    payer = next(ref for ref in data.shared if ref.startswith("Organization/"))
    family, ident = other.family, other.identifier
    doors: list[Door] = []

    def add(
        category: str,
        name: str,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str | None = None,
        must_deny: bool = True,
        **headers: str,
    ) -> None:
        all_headers = {k.replace("_", "-"): v for k, v in headers.items()}
        if content_type:
            all_headers["content-type"] = content_type
        doors.append(Door(category, name, method, path, body, all_headers, must_deny))

    # --- reads and vreads -------------------------------------------------------------------
    for ref in sorted(other.resources):
        add("read", f"read {ref.split('/')[0]}", "GET", f"/{ref}")
    add("read", "HEAD Patient", "HEAD", f"/Patient/{o}")
    add("read", "read with _elements", "GET", f"/Patient/{o}?_elements=name,identifier")
    add("read", "read with _summary", "GET", f"/Patient/{o}?_summary=true")
    add("read", "read with _format", "GET", f"/Patient/{o}?_format=json")
    add("read", "read naming ctx in _id", "GET", f"/Patient/{o}?_id={a}")
    add("read", "read with trailing slash", "GET", f"/Patient/{o}/")
    add("read", "read with double slash", "GET", f"//Patient/{o}")
    add("read", "read via dot segment", "GET", f"/Patient/{a}/../{o}")
    add("read", "read with escaped slash", "GET", f"/Patient%2F{o}")
    add("read", "read with escaped id character", "GET", f"/Patient/%{ord(o[0]):02X}{o[1:]}")
    add("read", "read with spoofed context header", "GET", f"/Patient/{o}", x_smart_patient=o)
    add(
        "read",
        "read with spoofed scope header",
        "GET",
        f"/Observation/{obs}",
        x_smart_patient=o,
        x_smart_scope="user/*.rs",
    )
    for ref in (f"Patient/{o}", f"Observation/{obs}", f"Coverage/{cov}"):
        add("vread", f"vread {ref.split('/')[0]}", "GET", f"/{ref}/_history/{versions[ref]}")

    # --- searches ---------------------------------------------------------------------------
    searches = [
        ("patient=id", f"Observation?patient={o}"),
        ("patient=Patient/id", f"Observation?patient=Patient/{o}"),
        ("subject=Patient/id", f"Observation?subject=Patient/{o}"),
        ("subject:Patient=id", f"Observation?subject:Patient={o}"),
        ("subject:Patient=Patient/id", f"Observation?subject:Patient=Patient/{o}"),
        ("patient:Patient=id", f"Observation?patient:Patient={o}"),
        ("subject=bare id", f"Observation?subject={o}"),
        ("subject=our absolute URL", f"Observation?subject={base_url}/Patient/{o}"),
        ("subject=upstream absolute URL", f"Observation?subject={direct_url}/Patient/{o}"),
        ("subject=foreign absolute URL", f"Observation?subject=https://other.example.org/fhir/Patient/{o}"),
        ("subject=versioned reference", f"Observation?subject=Patient/{o}/_history/1"),
        ("performer=Patient/id", f"Observation?performer=Patient/{o}"),
        ("patient=encoded slash", f"Observation?patient=Patient%2F{o}"),
        ("patient=double-encoded", f"Observation?patient=Patient%252F{o}"),
        ("patient=encoded id", "Observation?patient=" + "".join(f"%{ord(c):02X}" for c in o)),
        ("comma list ids", f"Observation?patient={a},{o}"),
        ("comma list references", f"Observation?subject=Patient/{a},Patient/{o}"),
        ("encoded comma list", f"Observation?patient={a}%2C{o}"),
        ("duplicate patient", f"Observation?patient={a}&patient={o}"),
        ("patient and subject", f"Observation?patient={a}&subject=Patient/{o}"),
        ("duplicate subject", f"Observation?subject=Patient/{a}&subject=Patient/{o}"),
        ("upper-case parameter", f"Observation?PATIENT={o}"),
        ("case-variant parameter", f"Observation?Patient={o}"),
        ("bound plus case-variant parameter", f"Observation?patient={a}&Patient={o}"),
        ("bound plus case-variant subject", f"Observation?patient={a}&Subject=Patient/{o}"),
        ("bracketed parameter", f"Observation?patient[]={o}"),
        ("unbound", "Observation"),
        ("unbound by code", "Observation?code=http://loinc.org|8867-4"),
        ("unbound _id", f"Observation?_id={obs}"),
        ("_summary=count of other", f"Observation?patient={o}&_summary=count"),
        ("missing modifier", "Observation?patient:missing=false"),
        ("chain subject:Patient.name", f"Observation?subject:Patient.name={family}"),
        ("chain patient.name", f"Observation?patient.name={family}"),
        ("chain patient.identifier", f"Observation?patient.identifier={ident}"),
        ("bound plus chain", f"Observation?patient={a}&subject:Patient.family={family}"),
        ("_has on Patient", f"Patient?_has:Observation:patient:_id={obs}"),
        ("_has bound", f"Observation?patient={a}&_has:Observation:has-member:subject=Patient/{o}"),
        ("_has via Practitioner", f"Practitioner?_has:Observation:performer:patient={o}"),
        ("_filter", f"Observation?_filter=subject eq Patient/{o}"),
        ("_filter bound", f"Observation?patient={a}&_filter=subject eq Patient/{o}"),
        ("_query", f"Observation?_query=everything&patient={o}"),
        ("_contained", f"Observation?patient={a}&_contained=true"),
        ("_type on a type", f"Observation?patient={a}&_type=Patient"),
        ("Patient _id", f"Patient?_id={o}"),
        ("Patient _id list", f"Patient?_id={a},{o}"),
        ("Patient _id twice", f"Patient?_id={a}&_id={o}"),
        ("Patient _id:not", f"Patient?_id:not={a}"),
        ("Patient by name", f"Patient?name={family}"),
        ("Patient by family", f"Patient?family={family}"),
        ("Patient by identifier", f"Patient?identifier={ident}"),
        ("Patient unbound", "Patient"),
        ("Patient link", f"Patient?link=Patient/{o}"),
        ("Patient by general-practitioner", f"Patient?general-practitioner={practitioner}"),
        ("Coverage beneficiary", f"Coverage?beneficiary=Patient/{o}"),
        ("Coverage patient", f"Coverage?patient={o}"),
        ("Coverage by payor", f"Coverage?payor={payer}"),
        ("Coverage by subscriber-id", f"Coverage?identifier={other.member_id}"),
        ("EOB patient", f"ExplanationOfBenefit?patient={o}"),
        ("EOB by insurer", f"ExplanationOfBenefit?insurer={payer}"),
        ("EOB by coverage", f"ExplanationOfBenefit?coverage=Coverage/{cov}"),
        ("Condition by patient", f"Condition?patient={o}"),
        ("Encounter by subject", f"Encounter?subject=Patient/{o}"),
        ("Observation by practitioner", f"Observation?performer={practitioner}"),
        ("AuditEvent by patient", f"AuditEvent?patient={o}"),
        ("Provenance by patient", f"Provenance?patient={o}"),
        ("_include subject through performer", f"Observation?performer=Patient/{a}&_include=Observation:subject"),
        ("_include patient through performer", f"Observation?performer=Patient/{a}&_include=Observation:patient"),
        (
            "_include subject:Patient through performer",
            f"Observation?performer=Patient/{a}&_include=Observation:subject:Patient",
        ),
        ("_include encounter", f"Observation?patient={a}&_include=Observation:encounter"),
        ("_include:iterate", f"Observation?patient={a}&_include:iterate=Observation:subject"),
        ("_include wildcard", f"Observation?patient={a}&_include=*"),
        ("_include from another type", f"Observation?patient={a}&_include=Condition:subject"),
        (
            "_revinclude from Practitioner",
            f"Practitioner?_id={practitioner.split('/')[1]}&_revinclude=Observation:performer",
        ),
        ("_revinclude from all Practitioners", "Practitioner?_revinclude=Observation:performer"),
        ("_revinclude Coverage from payer", f"Organization?_id={payer.split('/')[1]}&_revinclude=Coverage:payor"),
        ("_revinclude EOB from payer", "Organization?_revinclude=ExplanationOfBenefit:insurer"),
        ("_revinclude from other patient", f"Patient?_id={o}&_revinclude=Observation:subject"),
        ("_revinclude DiagnosticReport", f"Observation?patient={a}&_revinclude=DiagnosticReport:result"),
        ("_revinclude Provenance", f"Observation?patient={a}&_revinclude=Provenance:target"),
        ("_revinclude:iterate", f"Patient?_id={a}&_revinclude:iterate=Observation:subject"),
        ("compartment path", f"Patient/{o}/Observation"),
        ("compartment path Coverage", f"Patient/{o}/Coverage"),
        ("compartment path EOB", f"Patient/{o}/ExplanationOfBenefit"),
        ("compartment path with ctx param", f"Patient/{o}/Observation?patient={a}"),
        ("ctx compartment naming other", f"Patient/{a}/Observation?subject=Patient/{o}"),
        ("ctx compartment other patient=", f"Patient/{a}/Observation?patient={o}"),
        ("system search _type", f"?_type=Observation&patient={o}"),
        ("system search _type Patient", f"?_type=Patient&_id={o}"),
        ("system search unbound", "?_type=Observation,Condition"),
        ("system search with slash", "/?_type=Observation"),
    ]
    for name, path in searches:
        add("search", name, "GET", "/" + path.lstrip("/") if not path.startswith("?") else path)
    # Bound to ctx and ANDed with the other patient's ids: may pass, must not leak.
    add("search", "bound _id of other", "GET", f"/Observation?patient={a}&_id={obs}", must_deny=False)
    add("search", "bound _id list", "GET", f"/Observation?patient={a}&_id={obs},{a_obs}", must_deny=False)
    add("search", "bound practitioner", "GET", f"/Observation?patient={a}&performer={practitioner}", must_deny=False)
    add("search", "ctx compartment _id of other", "GET", f"/Patient/{a}/Observation?_id={obs}", must_deny=False)
    add("search", "ctx patient by other's name", "GET", f"/Patient?_id={a}&name={family}", must_deny=False)
    add(
        "search",
        "_include Practitioner",
        "GET",
        f"/Observation?patient={a}&_include=Observation:performer:Practitioner",
        must_deny=False,
    )
    add("search", "performer=ctx (cross-patient record)", "GET", f"/Observation?performer=Patient/{a}", must_deny=False)
    add(
        "search",
        "_revinclude performer from ctx",
        "GET",
        f"/Patient?_id={a}&_revinclude=Observation:performer",
        must_deny=False,
    )

    doors.extend(_linked_patient_doors(other, ctx))

    # --- POST _search -----------------------------------------------------------------------
    post_searches: list[tuple[str, str, bytes, str]] = [
        ("body patient", "Observation/_search", _form(("patient", o)), FORM),
        ("body overrides query", f"Observation/_search?patient={a}", _form(("patient", o)), FORM),
        ("body duplicates query", f"Observation/_search?patient={a}", _form(("subject", f"Patient/{o}")), FORM),
        ("body list", "Observation/_search", _form(("patient", f"{a},{o}")), FORM),
        ("body twice", "Observation/_search", _form(("patient", a), ("patient", o)), FORM),
        ("body _has", "Patient/_search", _form(("_has:Observation:patient:_id", obs)), FORM),
        ("body Patient _id", "Patient/_search", _form(("_id", o)), FORM),
        ("body charset", "Observation/_search", _form(("patient", o)), FORM + "; charset=utf-8"),
        ("body text/plain", "Observation/_search", f"patient={o}".encode(), "text/plain"),
        ("body JSON", "Observation/_search", _json({"patient": o}), "application/json"),
        (
            "body query-bound, body names other",
            f"Observation/_search?patient={a}",
            _form(("_include", "Observation:subject"), ("performer", f"Patient/{o}")),
            FORM,
        ),
        ("compartment _search", f"Patient/{o}/Observation/_search", _form(("code", "8867-4")), FORM),
        (
            "ctx compartment _search naming other",
            f"Patient/{a}/Observation/_search",
            _form(("subject", f"Patient/{o}")),
            FORM,
        ),
        ("system _search", "_search", _form(("_type", "Observation"), ("patient", o)), FORM),
        ("access_token in body", "Observation/_search", _form(("patient", o), ("access_token", "x")), FORM),
    ]
    for name, path, body, content_type in post_searches:
        add("post-search", name, "POST", f"/{path}", body, content_type)
    add("post-search", "empty body declared", "POST", "/Observation/_search", b"", FORM)
    add(
        "post-search",
        "oversized body",
        "POST",
        "/Observation/_search",
        _form(("patient", a), ("_elements", "x" * 70_000), ("subject", f"Patient/{o}")),
        FORM,
    )

    # --- history and operations -------------------------------------------------------------
    for name, path in [
        ("instance history Patient", f"Patient/{o}/_history"),
        ("instance history Observation", f"Observation/{obs}/_history"),
        ("instance history with _since", f"Patient/{o}/_history?_since=2000-01-01"),
        ("type history Observation", "Observation/_history"),
        ("type history Patient", "Patient/_history"),
        ("type history bound", f"Observation/_history?patient={a}"),
        ("system history", "_history"),
        ("$everything of other", f"Patient/{o}/$everything"),
        ("$everything of other _type", f"Patient/{o}/$everything?_type=Observation"),
        ("type-level $everything", "Patient/$everything"),
        ("type-level $everything with patient", f"Patient/$everything?patient={o}"),
        ("system $export", "$export"),
        ("Patient $export", "Patient/$export"),
        ("Group $export", "Group/all/$export"),
        ("instance $export", f"Patient/{o}/$export"),
        ("$lastn", f"Observation/$lastn?patient={o}"),
        ("unknown instance operation", f"Observation/{obs}/$meta"),
        ("$validate of other", f"Observation/{obs}/$validate"),
    ]:
        add("history-operation", name, "GET", f"/{path}")
    add(
        "history-operation",
        "POST $everything of other",
        "POST",
        f"/Patient/{o}/$everything",
        _json({"resourceType": "Parameters"}),
        FHIR_JSON,
    )
    graphql = '{ ObservationList(subject: "Patient/' + o + '") { id subject { reference } } }'
    add("history-operation", "$graphql", "POST", "/$graphql", _json({"query": graphql}), "application/json")
    add(
        "history-operation",
        "$graphql PatientList",
        "POST",
        "/$graphql",
        _json({"query": '{ PatientList(name: "' + family + '") { id name { family } } }'}),
        "application/json",
    )

    # --- batch / transaction ----------------------------------------------------------------
    def get_entry(url: str) -> dict[str, Any]:
        return {"request": {"method": "GET", "url": url}}

    bundles: list[tuple[str, str, list[dict[str, Any]]]] = [
        ("batch read", "batch", [get_entry(f"Patient/{o}")]),
        ("batch search", "batch", [get_entry(f"Observation?patient={o}")]),
        ("batch mixed", "batch", [get_entry(f"Patient/{a}/Observation"), get_entry(f"Observation/{obs}")]),
        ("batch absolute URL", "batch", [get_entry(f"{base_url}/Patient/{o}")]),
        ("batch upstream URL", "batch", [get_entry(f"{direct_url}/Patient/{o}")]),
        ("batch foreign URL", "batch", [get_entry(f"https://other.example.org/fhir/Patient/{o}")]),
        ("batch $everything", "batch", [get_entry(f"Patient/{o}/$everything")]),
        ("batch history", "batch", [get_entry(f"Patient/{o}/_history")]),
        ("batch _has", "batch", [get_entry(f"Patient?_has:Observation:patient:_id={obs}")]),
        ("batch leading slash", "batch", [get_entry(f"/Patient/{o}")]),
        ("batch query-only url", "batch", [get_entry(f"?_type=Observation&patient={o}")]),
        (
            "transaction update other",
            "transaction",
            [
                {
                    "resource": {**_observation(f"Patient/{a}"), "id": obs},
                    "request": {"method": "PUT", "url": f"Observation/{obs}"},
                }
            ],
        ),
        ("transaction delete other", "transaction", [{"request": {"method": "DELETE", "url": f"Patient/{o}"}}]),
        (
            "transaction create for other",
            "transaction",
            [
                {
                    "fullUrl": "urn:uuid:5e6f0000-0000-4000-8000-000000000001",
                    "resource": _observation(f"Patient/{o}"),
                    "request": {"method": "POST", "url": "Observation"},
                }
            ],
        ),
        (
            "transaction conditional delete",
            "transaction",
            [{"request": {"method": "DELETE", "url": f"Observation?patient={o}"}}],
        ),
        (
            "transaction conditional create",
            "transaction",
            [
                {
                    "resource": _observation(f"Patient/{a}"),
                    "request": {"method": "POST", "url": "Observation", "ifNoneExist": f"_id={obs}"},
                }
            ],
        ),
        (
            "transaction patch other",
            "transaction",
            [
                {
                    "resource": {
                        "resourceType": "Binary",
                        "contentType": JSON_PATCH,
                        "data": "W3sib3AiOiJyZXBsYWNlIiwicGF0aCI6Ii9zdGF0dXMiLCJ2YWx1ZSI6ImNhbmNlbGxlZCJ9XQ==",
                    },
                    "request": {"method": "PATCH", "url": f"Observation/{obs}"},
                }
            ],
        ),
        (
            "transaction urn:uuid patient",
            "transaction",
            [
                {
                    "fullUrl": "urn:uuid:5e6f0000-0000-4000-8000-000000000002",
                    "resource": {"resourceType": "Patient", "id": o, "name": [{"family": "Overwritten"}]},
                    "request": {"method": "PUT", "url": f"Patient/{o}"},
                },
                {
                    "resource": _observation("urn:uuid:5e6f0000-0000-4000-8000-000000000002"),
                    "request": {"method": "POST", "url": "Observation"},
                },
            ],
        ),
        (
            "nested batch",
            "batch",
            [
                {
                    "resource": {"resourceType": "Bundle", "type": "batch", "entry": [get_entry(f"Patient/{o}")]},
                    "request": {"method": "POST", "url": ""},
                }
            ],
        ),
        ("collection posted to base", "collection", [{"resource": _observation(f"Patient/{o}")}]),
    ]
    for name, kind, entries in bundles:
        add("bundle", name, "POST", "", _bundle(kind, *entries), FHIR_JSON)
    add("bundle", "batch to base with slash", "POST", "/", _bundle("batch", get_entry(f"Patient/{o}")), FHIR_JSON)
    add(
        "bundle",
        "Bundle resource create",
        "POST",
        "/Bundle",
        _bundle("collection", {"resource": _observation(f"Patient/{o}")}),
        FHIR_JSON,
    )

    # --- writes -----------------------------------------------------------------------------
    writes: list[tuple[str, str, str, bytes, str]] = [
        ("create for other", "POST", "Observation", _json(_observation(f"Patient/{o}")), FHIR_JSON),
        (
            "create performer other",
            "POST",
            "Observation",
            _json(_observation(f"Patient/{a}", performer=[{"reference": f"Patient/{o}"}])),
            FHIR_JSON,
        ),
        (
            "create focus other",
            "POST",
            "Observation",
            _json(_observation(f"Patient/{a}", focus=[{"reference": f"Patient/{o}"}])),
            FHIR_JSON,
        ),
        ("create absolute subject", "POST", "Observation", _json(_observation(f"{base_url}/Patient/{o}")), FHIR_JSON),
        (
            "create conditional reference",
            "POST",
            "Observation",
            _json(_observation(f"Patient?identifier={ident}")),
            FHIR_JSON,
        ),
        (
            "create contained patient",
            "POST",
            "Observation",
            _json(
                {
                    **_observation("#p1"),
                    "contained": [
                        {
                            "resourceType": "Patient",
                            "id": "p1",
                            "link": [{"other": {"reference": f"Patient/{o}"}, "type": "seealso"}],
                        }
                    ],
                }
            ),
            FHIR_JSON,
        ),
        (
            "create type mismatch",
            "POST",
            "Observation",
            _json({"resourceType": "Patient", "id": o, "name": [{"family": "Overwritten"}]}),
            FHIR_JSON,
        ),
        (
            "create Patient linking other",
            "POST",
            "Patient",
            _json({"resourceType": "Patient", "link": [{"other": {"reference": f"Patient/{o}"}, "type": "seealso"}]}),
            FHIR_JSON,
        ),
        (
            "create Coverage for other",
            "POST",
            "Coverage",
            _json(
                {
                    "resourceType": "Coverage",
                    "status": "active",
                    "beneficiary": {"reference": f"Patient/{o}"},
                    "payor": [{"reference": payer}],
                }
            ),
            FHIR_JSON,
        ),
        (
            "update other's record to ctx",
            "PUT",
            f"Observation/{obs}",
            _json({**_observation(f"Patient/{a}"), "id": obs}),
            FHIR_JSON,
        ),
        (
            "update other's record",
            "PUT",
            f"Observation/{obs}",
            _json({**_observation(f"Patient/{o}"), "id": obs}),
            FHIR_JSON,
        ),
        (
            "update other Patient",
            "PUT",
            f"Patient/{o}",
            _json({"resourceType": "Patient", "id": o, "name": [{"family": "Overwritten"}]}),
            FHIR_JSON,
        ),
        (
            "move ctx record to other",
            "PUT",
            f"Observation/{a_obs}",
            _json({**_observation(f"Patient/{o}"), "id": a_obs}),
            FHIR_JSON,
        ),
        (
            "update id mismatch",
            "PUT",
            f"Observation/{a_obs}",
            _json({**_observation(f"Patient/{a}"), "id": obs}),
            FHIR_JSON,
        ),
        (
            "upsert for other",
            "PUT",
            "Observation/e2e-upsert-for-other",
            _json({**_observation(f"Patient/{o}"), "id": "e2e-upsert-for-other"}),
            FHIR_JSON,
        ),
        (
            "update Coverage of other",
            "PUT",
            f"Coverage/{cov}",
            _json(
                {
                    "resourceType": "Coverage",
                    "id": cov,
                    "status": "cancelled",
                    "beneficiary": {"reference": f"Patient/{a}"},
                    "payor": [{"reference": payer}],
                }
            ),
            FHIR_JSON,
        ),
        (
            "patch other's record",
            "PATCH",
            f"Observation/{obs}",
            _json([{"op": "replace", "path": "/status", "value": "cancelled"}]),
            JSON_PATCH,
        ),
        (
            "patch other's record to ctx",
            "PATCH",
            f"Observation/{obs}",
            _json([{"op": "replace", "path": "/subject/reference", "value": f"Patient/{a}"}]),
            JSON_PATCH,
        ),
        (
            "patch ctx record to other",
            "PATCH",
            f"Observation/{a_obs}",
            _json([{"op": "replace", "path": "/subject/reference", "value": f"Patient/{o}"}]),
            JSON_PATCH,
        ),
        (
            "patch ctx record add performer",
            "PATCH",
            f"Observation/{a_obs}",
            _json([{"op": "add", "path": "/performer", "value": [{"reference": f"Patient/{o}"}]}]),
            JSON_PATCH,
        ),
        (
            "patch other Patient",
            "PATCH",
            f"Patient/{o}",
            _json([{"op": "replace", "path": "/name/0/family", "value": "Overwritten"}]),
            JSON_PATCH,
        ),
        (
            "FHIRPath patch other",
            "PATCH",
            f"Condition/{cond}",
            _json(
                {
                    "resourceType": "Parameters",
                    "parameter": [
                        {
                            "name": "operation",
                            "part": [
                                {"name": "type", "valueCode": "replace"},
                                {"name": "path", "valueString": "Condition.subject"},
                                {"name": "value", "valueReference": {"reference": f"Patient/{a}"}},
                            ],
                        }
                    ],
                }
            ),
            FHIR_JSON,
        ),
        ("delete other's record", "DELETE", f"Observation/{obs}", b"", ""),
        ("delete other Patient", "DELETE", f"Patient/{o}", b"", ""),
        ("delete other's Coverage", "DELETE", f"Coverage/{cov}", b"", ""),
        ("delete other's EOB", "DELETE", f"ExplanationOfBenefit/{eob}", b"", ""),
        (
            "conditional update by patient",
            "PUT",
            f"Observation?patient={o}",
            _json(_observation(f"Patient/{a}")),
            FHIR_JSON,
        ),
        ("conditional update by _id", "PUT", f"Observation?_id={obs}", _json(_observation(f"Patient/{a}")), FHIR_JSON),
        ("conditional delete by patient", "DELETE", f"Observation?patient={o}", b"", ""),
        ("conditional delete by _id", "DELETE", f"Observation?_id={obs}", b"", ""),
        ("conditional delete Patient", "DELETE", f"Patient?_id={o}", b"", ""),
        ("conditional delete bound to ctx", "DELETE", f"Observation?patient={a}&_id={obs}", b"", ""),
        (
            "conditional patch",
            "PATCH",
            f"Observation?_id={obs}",
            _json([{"op": "replace", "path": "/status", "value": "cancelled"}]),
            JSON_PATCH,
        ),
    ]
    for name, method, path, body, content_type in writes:
        add("write", name, method, f"/{path}", body or None, content_type or None)
    add(
        "write",
        "conditional create matching other's record",
        "POST",
        "/Observation",
        _json(_observation(f"Patient/{a}")),
        FHIR_JSON,
        if_none_exist=f"_id={obs}",
    )
    add(
        "write",
        "conditional create by other patient",
        "POST",
        "/Observation",
        _json(_observation(f"Patient/{a}")),
        FHIR_JSON,
        if_none_exist=f"patient={o}",
    )
    add(
        "write",
        "update with If-Match",
        "PUT",
        f"/Observation/{obs}",
        _json({**_observation(f"Patient/{a}"), "id": obs}),
        FHIR_JSON,
        if_match=f'W/"{versions[f"Observation/{obs}"]}"',
    )

    # --- method tunnelling and preflight ----------------------------------------------------
    for header in ("X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override"):
        doors.append(Door("override", f"{header}: GET", "POST", f"/Patient/{o}", None, {header: "GET"}))
        doors.append(Door("override", f"{header}: DELETE", "POST", f"/Observation/{obs}", None, {header: "DELETE"}))
    doors.append(
        Door(
            "override",
            "override on a bound search",
            "POST",
            f"/Observation/_search?patient={a}",
            _form(("patient", a)),
            {"content-type": FORM, "x-http-method-override": "DELETE"},
        )
    )
    doors.append(
        Door(
            "override",
            "override PATCH",
            "POST",
            f"/Observation/{obs}",
            _json([{"op": "replace", "path": "/status", "value": "cancelled"}]),
            {"content-type": JSON_PATCH, "x-http-method-override": "PATCH"},
        )
    )
    doors.append(Door("override", "_method query parameter", "POST", f"/Observation/{obs}?_method=DELETE"))
    doors.append(
        Door(
            "override",
            "CORS preflight",
            "OPTIONS",
            f"/Patient/{o}",
            None,
            {"origin": "https://app.example.org", "access-control-request-method": "GET"},
            must_deny=False,
        )
    )
    doors.append(Door("override", "OPTIONS without preflight headers", "OPTIONS", f"/Patient/{o}"))
    doors.append(Door("override", "TRACE", "TRACE", f"/Patient/{o}"))
    return _classified(doors)
