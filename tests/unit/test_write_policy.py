"""Writes under c/u/d scopes (issue 3, items 1 and 4): create, update, patch, delete, conditional
writes, method tunnelling and granular scopes. One behaviour per test, named after the rule.

Unless a test says otherwise the token has patient context 123 and the scope ``patient/*.cruds``.
"""

from __future__ import annotations

from typing import Any

import pytest

from smartgate.core.reasons import Reason
from smartgate.policy.decision import Decision
from smartgate.policy.plan import MembershipCheck, Pending
from tests.unit.policy_helpers import BASE_PATH, FHIR_BASE_URL, decide_body, http, request_error

LAB = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"
LAB_CODING = {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}
VITALS_CODING = {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}
VITALS = "http://terminology.hl7.org/CodeSystem/observation-category|vital-signs"
JSON_PATCH = "application/json-patch+json"
OBSERVATION_LOOKUPS = ((("subject", "Patient/123"),), (("performer", "Patient/123"),))


def observation(subject: Any = "Patient/123", **elements: Any) -> dict[str, Any]:
    """An Observation whose subject is ``subject`` (a reference string, a raw value, or None for none)."""
    resource: dict[str, Any] = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    if isinstance(subject, str):
        resource["subject"] = {"reference": subject}
    elif subject is not None:
        resource["subject"] = subject
    resource.update(elements)
    return resource


def denial(outcome: Decision | Pending) -> Reason:
    """The reason of a decision made without look-ups (a deny, or an allow needing none)."""
    assert isinstance(outcome, Decision), outcome
    return outcome.reason


def lookup(outcome: Decision | Pending) -> MembershipCheck:
    """The single stored-resource look-up a write must pass before it is allowed."""
    assert isinstance(outcome, Pending), outcome
    assert outcome.allow.reason is Reason.ALLOWED_WRITE
    (check,) = outcome.checks
    assert isinstance(check, MembershipCheck), check
    return check


def create(body: Any, scope: str = "patient/*.cruds", path: str = "Observation", **kwargs: Any) -> Reason:
    return denial(decide_body(path, "POST", body, scope, **kwargs))


def fhirpath_patch(path: str, kind: str = "replace", name: str | None = None, **value: Any) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"name": "type", "valueCode": kind}, {"name": "path", "valueString": path}]
    if name is not None:
        parts.append({"name": "name", "valueString": name})
    if value:
        parts.append({"name": "value", **value})
    return {"resourceType": "Parameters", "parameter": [{"name": "operation", "part": parts}]}


def json_patch(*operations: dict[str, Any], scope: str = "patient/*.cruds") -> Decision | Pending:
    return decide_body("Observation/abc", "PATCH", list(operations), scope, content_type=JSON_PATCH)


def fhirpath(document: Any, scope: str = "patient/*.cruds") -> Decision | Pending:
    return decide_body("Observation/abc", "PATCH", document, scope)


def nested(depth: int) -> bytes:
    """A JSON document nested ``depth`` arrays deep inside an Observation."""
    return b'{"resourceType": "Observation", "x": ' + b"[" * depth + b"]" * depth + b"}"


# --- create: the body is a resource of the URL's type, bound to the context patient ---------------------


def test_create_with_subject_the_context_patient_is_allowed_without_lookup() -> None:
    assert create(observation()) is Reason.ALLOWED_WRITE


def test_create_bound_through_performer_is_allowed() -> None:
    assert create(observation("Group/7", performer=[{"reference": "Patient/123"}])) is Reason.ALLOWED_WRITE


def test_create_of_an_encounter_with_subject_the_context_patient_is_allowed() -> None:
    encounter = {
        "resourceType": "Encounter",
        "status": "planned",
        "class": {"code": "AMB"},
        "subject": {"reference": "Patient/123"},
    }
    assert create(encounter, path="Encounter") is Reason.ALLOWED_WRITE


def test_create_with_an_absolute_reference_on_our_base_to_the_context_patient_is_allowed() -> None:
    assert create(observation(f"{FHIR_BASE_URL}/Patient/123")) is Reason.ALLOWED_WRITE


def test_create_with_a_versioned_reference_to_the_context_patient_is_allowed() -> None:
    assert create(observation("Patient/123/_history/2")) is Reason.ALLOWED_WRITE


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("Observation", observation("Patient/456")),
        ("Observation", observation(performer=[{"reference": "Patient/456"}])),
        ("Observation", observation(f"{FHIR_BASE_URL}/Patient/456")),
        ("Encounter", {"resourceType": "Encounter", "subject": {"reference": "Patient/456"}}),
        (
            "Condition",
            {
                "resourceType": "Condition",
                "subject": {"reference": "Patient/123"},
                "asserter": {"reference": "Patient/456"},
            },
        ),
    ],
)
def test_create_with_a_compartment_reference_to_another_patient_is_denied(path: str, body: dict[str, Any]) -> None:
    assert create(body, path=path) is Reason.COMPARTMENT_OTHER_PATIENT


def test_create_referencing_another_patient_outside_the_compartment_elements_is_denied() -> None:
    assert create(observation(focus=[{"reference": "Patient/456"}])) is Reason.COMPARTMENT_OTHER_PATIENT


def test_create_with_a_contained_resource_is_denied() -> None:
    contained = [{"resourceType": "Patient", "id": "p1"}]
    assert create(observation(contained=contained)) is Reason.COMPARTMENT_AMBIGUOUS


def test_create_with_a_contained_reference_as_subject_is_denied() -> None:
    assert create(observation("#p1")) is Reason.COMPARTMENT_AMBIGUOUS


@pytest.mark.parametrize(
    "reference",
    [
        "https://other.example.org/r4/Patient/123",
        "http://fhir.example.org/r4/Patient/123",
        "urn:uuid:0f3c9e1c-8a55-4b64-9d0e-1f6a3c2d4b5e",
        "patient/123",
    ],
)
def test_create_with_an_unresolvable_subject_is_denied(reference: str) -> None:
    assert create(observation(reference)) is Reason.COMPARTMENT_AMBIGUOUS


def test_create_with_a_conditional_reference_is_denied() -> None:
    assert create(observation("Patient?identifier=http://mrn|123")) is Reason.COMPARTMENT_AMBIGUOUS


def test_create_with_a_conditional_reference_outside_the_compartment_elements_is_denied() -> None:
    assert create(observation(focus=[{"reference": "Patient?identifier=x"}])) is Reason.COMPARTMENT_AMBIGUOUS


def test_create_with_a_logical_reference_as_subject_is_denied() -> None:
    assert create(observation({"identifier": {"system": "http://mrn", "value": "123"}})) is (
        Reason.COMPARTMENT_AMBIGUOUS
    )


def test_create_without_a_compartment_reference_is_unbound() -> None:
    assert create(observation(None)) is Reason.COMPARTMENT_UNBOUND


def test_create_bound_only_to_a_non_patient_is_unbound() -> None:
    assert create(observation("Group/7")) is Reason.COMPARTMENT_UNBOUND


def test_create_with_a_compartment_element_that_is_not_a_reference_is_invalid() -> None:
    assert create(observation(["Patient/123"])) is Reason.BODY_INVALID


@pytest.mark.parametrize(
    "body",
    [
        None,
        b"",
        b"not json",
        b"\xff\xfe",
        b"[]",
        b'{"status": "final"}',
        b'{"resourceType": 7}',
    ],
)
def test_create_without_a_resource_body_is_invalid(body: bytes | None) -> None:
    assert create(body) is Reason.BODY_INVALID


def test_create_with_a_body_of_another_type_is_invalid() -> None:
    assert create({"resourceType": "Condition", "subject": {"reference": "Patient/123"}}) is Reason.BODY_INVALID


@pytest.mark.parametrize("content_type", ["application/fhir+xml", "text/plain", "application/json-patch+json"])
def test_create_body_must_be_fhir_json(content_type: str) -> None:
    assert create(observation(), content_type=content_type) is Reason.BODY_INVALID


def test_create_nested_too_deeply_for_the_json_parser_is_invalid() -> None:
    # regression: RecursionError from json.loads (resource_body.parse_resource) is a body_invalid deny
    assert create(nested(10_000)) is Reason.BODY_INVALID


def test_create_nested_deeper_than_the_reference_walk_allows_is_invalid() -> None:
    assert create(nested(100)) is Reason.BODY_INVALID


def test_create_of_a_type_outside_the_compartment_is_decided_by_the_scope() -> None:
    assert create({"resourceType": "Practitioner", "name": [{"family": "X"}]}, path="Practitioner") is (
        Reason.ALLOWED_WRITE
    )


def test_create_of_a_type_outside_the_compartment_may_not_reference_another_patient() -> None:
    practitioner = {
        "resourceType": "Practitioner",
        "extension": [{"url": "http://example.org/x", "valueReference": {"reference": "Patient/456"}}],
    }
    assert create(practitioner, path="Practitioner") is Reason.COMPARTMENT_OTHER_PATIENT


@pytest.mark.parametrize("resource_type", ["Task", "Binary", "Subscription"])
def test_create_of_a_closed_type_is_denied_to_patient_scopes(resource_type: str) -> None:
    assert create({"resourceType": resource_type}, path=resource_type) is Reason.SCOPE_INSUFFICIENT


def test_create_of_a_patient_other_than_the_context_patient_is_denied() -> None:
    assert create({"resourceType": "Patient", "id": "456"}, path="Patient") is Reason.COMPARTMENT_OTHER_PATIENT


def test_create_of_a_patient_with_links_is_denied() -> None:
    patient = {"resourceType": "Patient", "id": "123", "link": [{"other": {"reference": "Patient/123"}}]}
    assert create(patient, path="Patient") is Reason.COMPARTMENT_OTHER_PATIENT


def test_create_under_patient_scopes_needs_the_patient_context() -> None:
    assert create(observation(), patient=None) is Reason.PATIENT_CONTEXT_MISSING


def test_create_under_a_user_scope_is_decided_by_the_scope_alone() -> None:
    assert create(observation("Patient/456"), "user/Observation.c", patient=None) is Reason.ALLOWED_BY_SCOPE


# --- permissions: c for create, u for update and patch, d for delete; write never implies read -----------


def test_create_needs_the_c_permission() -> None:
    assert create(observation(), "patient/Observation.ruds") is Reason.SCOPE_INSUFFICIENT


def test_update_needs_the_u_permission() -> None:
    outcome = decide_body("Observation/abc", "PUT", observation(id="abc"), "patient/Observation.crds")
    assert denial(outcome) is Reason.SCOPE_INSUFFICIENT


def test_patch_needs_the_u_permission() -> None:
    outcome = json_patch({"op": "replace", "path": "/status", "value": "final"}, scope="patient/Observation.crds")
    assert denial(outcome) is Reason.SCOPE_INSUFFICIENT


def test_delete_needs_the_d_permission() -> None:
    assert denial(decide_body("Observation/abc", "DELETE", None, "patient/Observation.crus")) is (
        Reason.SCOPE_INSUFFICIENT
    )


def test_v1_write_scope_grants_create() -> None:
    assert create(observation(), "patient/Observation.write") is Reason.ALLOWED_WRITE


def test_v1_write_scope_grants_update() -> None:
    outcome = decide_body("Observation/abc", "PUT", observation(id="abc"), "patient/Observation.write")
    assert lookup(outcome).queries == OBSERVATION_LOOKUPS


def test_v1_write_scope_grants_delete() -> None:
    assert lookup(decide_body("Observation/abc", "DELETE", None, "patient/Observation.write")).resource_id == "abc"


@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("Observation/abc", "GET"),
        ("Observation?patient=123", "GET"),
        ("Observation/abc/_history", "GET"),
        ("Patient/123", "GET"),
    ],
)
def test_v1_write_scope_does_not_imply_read_or_search(path: str, method: str) -> None:
    assert denial(decide_body(path, method, None, "patient/*.write")) is Reason.SCOPE_INSUFFICIENT


# --- update: the stored resource is in the compartment and the new body stays in it ----------------------


def test_update_needs_a_membership_lookup_of_the_stored_resource() -> None:
    check = lookup(decide_body("Observation/abc", "PUT", observation(id="abc")))
    assert (check.resource_type, check.resource_id, check.queries) == ("Observation", "abc", OBSERVATION_LOOKUPS)


def test_update_to_an_id_that_never_existed_is_an_upsert_allowed_by_the_lookup() -> None:
    assert lookup(decide_body("Observation/new1", "PUT", observation(id="new1"))).absent_ok is True


def test_update_body_moving_the_resource_to_another_patient_is_denied() -> None:
    outcome = decide_body("Observation/abc", "PUT", observation("Patient/456", id="abc"))
    assert denial(outcome) is Reason.COMPARTMENT_OTHER_PATIENT


def test_update_body_leaving_the_compartment_is_unbound() -> None:
    assert denial(decide_body("Observation/abc", "PUT", observation(None, id="abc"))) is Reason.COMPARTMENT_UNBOUND


@pytest.mark.parametrize("body", [observation(id="other"), observation()])
def test_update_body_id_must_equal_the_url_id(body: dict[str, Any]) -> None:
    assert denial(decide_body("Observation/abc", "PUT", body)) is Reason.BODY_INVALID


def test_update_with_a_body_of_another_type_is_invalid() -> None:
    body = {"resourceType": "Condition", "id": "abc", "subject": {"reference": "Patient/123"}}
    assert denial(decide_body("Observation/abc", "PUT", body)) is Reason.BODY_INVALID


def test_update_without_a_body_is_invalid() -> None:
    assert denial(decide_body("Observation/abc", "PUT", None)) is Reason.BODY_INVALID


def test_update_of_the_context_patient_record_needs_no_lookup() -> None:
    assert denial(decide_body("Patient/123", "PUT", {"resourceType": "Patient", "id": "123"})) is (Reason.ALLOWED_WRITE)


def test_update_of_another_patient_record_is_denied() -> None:
    assert denial(decide_body("Patient/456", "PUT", {"resourceType": "Patient", "id": "456"})) is (
        Reason.COMPARTMENT_OTHER_PATIENT
    )


def test_update_of_the_context_patient_record_may_not_add_links() -> None:
    body = {"resourceType": "Patient", "id": "123", "link": [{"other": {"reference": "Patient/456"}}]}
    assert denial(decide_body("Patient/123", "PUT", body)) is Reason.COMPARTMENT_OTHER_PATIENT


def test_update_of_a_type_outside_the_compartment_is_decided_by_the_scope() -> None:
    body = {"resourceType": "Practitioner", "id": "p1"}
    assert denial(decide_body("Practitioner/p1", "PUT", body)) is Reason.ALLOWED_WRITE


def test_update_under_a_user_scope_is_decided_by_the_scope_alone() -> None:
    outcome = decide_body(
        "Observation/abc", "PUT", observation("Patient/456", id="abc"), "user/Observation.u", patient=None
    )
    assert denial(outcome) is Reason.ALLOWED_BY_SCOPE


# --- patch: stored resource look-up; no operation touches a compartment element ---------------------------


def test_json_patch_of_a_harmless_element_needs_the_stored_resource_lookup() -> None:
    check = lookup(json_patch({"op": "replace", "path": "/status", "value": "amended"}))
    assert (check.queries, check.absent_ok) == (OBSERVATION_LOOKUPS, False)


@pytest.mark.parametrize(
    "operation",
    [
        {"op": "replace", "path": "/subject", "value": {"reference": "Patient/123"}},
        {"op": "replace", "path": "/subject/reference", "value": "Group/7"},
        {"op": "add", "path": "/performer/-", "value": {"reference": "Practitioner/1"}},
        {"op": "remove", "path": "/subject"},
        {"op": "move", "from": "/subject", "path": "/focus"},
        {"op": "copy", "from": "/note", "path": "/performer"},
        {"op": "replace", "path": "", "value": {}},
        {"op": "add", "path": "/contained", "value": []},
        {"op": "replace", "path": "/id", "value": "other"},
        {"op": "replace", "path": "/meta", "value": {}},
        {"op": "replace", "path": "/resourceType", "value": "Patient"},
    ],
)
def test_json_patch_touching_a_compartment_or_identity_element_is_denied(operation: dict[str, Any]) -> None:
    assert denial(json_patch(operation)) is Reason.COMPARTMENT_AMBIGUOUS


@pytest.mark.parametrize(
    "operation",
    [
        {"op": "remove", "path": "subject/reference"},
        {"op": "remove", "path": "subject"},
        {"op": "replace", "path": "status", "value": "amended"},
        {"op": "move", "from": "subject/reference", "path": "/note/0/text"},
        {"op": "copy", "from": "subject", "path": "/focus"},
        {"op": "move", "from": "/note/0/text", "path": "subject/reference"},
    ],
)
def test_json_patch_pointer_without_the_leading_slash_is_invalid(operation: dict[str, Any]) -> None:
    """RFC 6901: a non-empty pointer starts with "/". ``subject/reference`` was read as touching the
    element ``reference`` and forwarded; a lenient server would apply it to ``/subject/reference``."""
    assert denial(json_patch(operation)) is Reason.BODY_INVALID


def test_json_patch_pointer_with_the_leading_slash_is_read_as_before() -> None:
    assert denial(json_patch({"op": "remove", "path": "/subject/reference"})) is Reason.COMPARTMENT_AMBIGUOUS


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("DELETE", "Observation/abc?link=Patient/456", None),
        ("DELETE", "Observation/abc?subject=Patient/456", None),
        ("PUT", "Observation/abc?subject=Patient/456", observation("Patient/123", id="abc")),
        ("POST", "Observation?patient=Patient/456", observation("Patient/123")),
    ],
)
def test_write_whose_url_names_another_patient_is_denied(method: str, path: str, body: Any) -> None:
    """Found by the fuzzer: a write's query parameters were never looked at, so DELETE
    Observation/abc?link=Patient/456 was allowed once abc proved the patient's (reads deny it)."""
    assert denial(decide_body(path, method, body)) is Reason.COMPARTMENT_OTHER_PATIENT


@pytest.mark.parametrize("parameter", ["_id=abc", "_revinclude=Provenance:target", "_has:Group:member:_id=1"])
def test_write_with_a_search_control_parameter_is_denied(parameter: str) -> None:
    outcome = decide_body(f"Observation/abc?{parameter}", "DELETE", None)
    assert denial(outcome) is Reason.SEARCH_PARAMETER_NOT_PERMITTED


@pytest.mark.parametrize("parameter", ["_format=json", "_pretty=true", "link=Patient/123"])
def test_write_with_harmless_parameters_is_still_decided_by_the_stored_resource(parameter: str) -> None:
    assert lookup(decide_body(f"Observation/abc?{parameter}", "DELETE", None)).resource_id == "abc"


def test_json_patch_naming_another_patient_is_denied() -> None:
    operation = {"op": "add", "path": "/focus", "value": [{"reference": "Patient/456"}]}
    assert denial(json_patch(operation)) is Reason.COMPARTMENT_OTHER_PATIENT


def test_json_patch_of_the_context_patient_may_not_touch_links() -> None:
    outcome = decide_body(
        "Patient/123", "PATCH", [{"op": "add", "path": "/link", "value": []}], content_type=JSON_PATCH
    )
    assert denial(outcome) is Reason.COMPARTMENT_AMBIGUOUS


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b"{}",
        b'[{"op": "replace"}]',
        b'[{"op": "frobnicate", "path": "/status"}]',
        b'["replace"]',
    ],
)
def test_invalid_json_patch_is_denied(body: bytes) -> None:
    assert denial(decide_body("Observation/abc", "PATCH", body, content_type=JSON_PATCH)) is Reason.BODY_INVALID


def test_json_patch_nested_too_deeply_for_the_json_parser_is_invalid() -> None:
    # regression: RecursionError from json.loads in write_policy._check_patch is a body_invalid deny
    body = b"[" * 10_000 + b"]" * 10_000
    assert denial(decide_body("Observation/abc", "PATCH", body, content_type=JSON_PATCH)) is Reason.BODY_INVALID


def test_fhirpath_patch_of_a_harmless_element_needs_the_stored_resource_lookup() -> None:
    assert lookup(fhirpath(fhirpath_patch("Observation.status", valueCode="amended"))).queries == OBSERVATION_LOOKUPS


def test_fhirpath_patch_below_a_harmless_element_is_allowed_after_lookup() -> None:
    document = fhirpath_patch("Observation.code.coding.where(system='http://loinc.org')", "delete")
    assert lookup(fhirpath(document)).resource_id == "abc"


@pytest.mark.parametrize(
    "document",
    [
        fhirpath_patch("Observation.subject", valueReference={"reference": "Group/7"}),
        fhirpath_patch("Observation.subject", "delete"),
        fhirpath_patch("Observation.performer", "add", valueReference={"reference": "Practitioner/1"}),
        fhirpath_patch("Observation.performer[0]", "delete"),
        fhirpath_patch("Observation", "add", name="performer", valueReference={"reference": "Practitioner/1"}),
        fhirpath_patch("Observation", "delete"),
    ],
)
def test_fhirpath_patch_touching_a_compartment_element_is_denied(document: dict[str, Any]) -> None:
    assert denial(fhirpath(document)) is Reason.COMPARTMENT_AMBIGUOUS


@pytest.mark.parametrize(
    "path",
    [
        "Observation.where(true).subject",
        "Observation.select(subject)",
        "Observation.descendants()",
        "Observation.`subject`",
        "Observation. subject",
        "Observation.code.select(%resource).subject",
        "Observation.code.select(%context)",
        "Observation./* */subject",
        "Observation.note|Observation.subject",
        "Observation.",
    ],
)
def test_fhirpath_patch_path_that_hides_the_element_it_reaches_is_invalid(path: str) -> None:
    # regression: the element was read as the text before '(' or '[' of the second step, so these passed
    document = fhirpath_patch(path, valueReference={"reference": "Group/7"})
    assert denial(fhirpath(document)) is Reason.BODY_INVALID


def test_fhirpath_patch_naming_another_patient_is_denied() -> None:
    document = fhirpath_patch("Observation", "add", name="focus", valueReference={"reference": "Patient/456"})
    assert denial(fhirpath(document)) is Reason.COMPARTMENT_OTHER_PATIENT


@pytest.mark.parametrize(
    "document",
    [
        fhirpath_patch("Condition.status", valueCode="x"),
        fhirpath_patch(" Observation.status", valueCode="x"),
        {"resourceType": "Parameters"},
        {"resourceType": "Parameters", "parameter": []},
        {"resourceType": "Parameters", "parameter": ["operation"]},
        {"resourceType": "Parameters", "parameter": [{"name": "operation", "part": []}]},
        {
            "resourceType": "Parameters",
            "parameter": [{"name": "other", "part": [{"name": "path", "valueString": "Observation.status"}]}],
        },
        {"resourceType": "Observation", "status": "final"},
    ],
)
def test_invalid_fhirpath_patch_is_denied(document: dict[str, Any]) -> None:
    assert denial(fhirpath(document)) is Reason.BODY_INVALID


@pytest.mark.parametrize("content_type", ["application/fhir+xml", "application/merge-patch+json", "text/plain"])
def test_patch_content_type_must_be_json_patch_or_fhir_json(content_type: str) -> None:
    outcome = decide_body(
        "Observation/abc", "PATCH", [{"op": "replace", "path": "/status", "value": "x"}], content_type=content_type
    )
    assert denial(outcome) is Reason.BODY_INVALID


def test_json_patch_sent_as_fhir_json_is_invalid() -> None:
    outcome = decide_body("Observation/abc", "PATCH", [{"op": "replace", "path": "/status", "value": "x"}])
    assert denial(outcome) is Reason.BODY_INVALID


def test_fhirpath_patch_sent_as_json_patch_is_invalid() -> None:
    outcome = decide_body(
        "Observation/abc", "PATCH", fhirpath_patch("Observation.status", valueCode="x"), content_type=JSON_PATCH
    )
    assert denial(outcome) is Reason.BODY_INVALID


# --- delete ---------------------------------------------------------------------------------------------------


def test_delete_needs_a_membership_lookup_of_the_stored_resource() -> None:
    check = lookup(decide_body("Observation/abc", "DELETE", None))
    assert (check.resource_id, check.queries, check.absent_ok) == ("abc", OBSERVATION_LOOKUPS, False)


def test_delete_of_another_patient_record_is_denied() -> None:
    assert denial(decide_body("Patient/456", "DELETE", None)) is Reason.COMPARTMENT_OTHER_PATIENT


# --- conditional writes: they act on resources we cannot see ---------------------------------------------


def test_conditional_create_with_if_none_exist_is_denied_to_patient_tokens() -> None:
    outcome = decide_body("Observation", "POST", observation(), headers={"if-none-exist": "identifier=x|1"})
    assert denial(outcome) is Reason.CONDITIONAL_NOT_PERMITTED


def test_conditional_update_by_identifier_is_denied_to_patient_tokens() -> None:
    outcome = decide_body("Observation?identifier=x|1", "PUT", observation())
    assert denial(outcome) is Reason.CONDITIONAL_NOT_PERMITTED


def test_conditional_delete_by_identifier_is_denied_to_patient_tokens() -> None:
    assert denial(decide_body("Observation?identifier=x|1", "DELETE", None)) is Reason.CONDITIONAL_NOT_PERMITTED


def test_conditional_writes_are_left_to_user_scopes() -> None:
    outcome = decide_body("Observation?identifier=x|1", "DELETE", None, "user/Observation.d", patient=None)
    assert denial(outcome) is Reason.ALLOWED_BY_SCOPE


# --- method tunnelling ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("header", ["x-http-method-override", "x-http-method", "x-method-override"])
def test_method_override_on_an_otherwise_allowed_create_is_refused(header: str) -> None:
    request = http(
        f"{BASE_PATH}/Observation",
        "POST",
        {"content-type": "application/fhir+json", header: "DELETE"},
        b'{"resourceType": "Observation", "subject": {"reference": "Patient/123"}}',
    )
    assert request_error(request).reason is Reason.METHOD_OVERRIDE


# --- granular scopes: writes only when the body matches the constraint ----------------------------------------


def test_granular_create_is_allowed_when_the_body_matches_the_constraint() -> None:
    body = observation(category=[{"coding": [LAB_CODING]}])
    assert create(body, f"patient/Observation.c?category={LAB}") is Reason.ALLOWED_WRITE


def test_granular_create_is_denied_when_the_body_does_not_match_the_constraint() -> None:
    body = observation(category=[{"coding": [VITALS_CODING]}])
    assert create(body, f"patient/Observation.c?category={LAB}") is Reason.SCOPE_INSUFFICIENT


def test_granular_create_without_the_constrained_element_is_denied() -> None:
    assert create(observation(), f"patient/Observation.c?category={LAB}") is Reason.SCOPE_INSUFFICIENT


def test_granular_create_needs_the_system_of_the_constraint() -> None:
    body = observation(category=[{"coding": [{"code": "laboratory"}]}])
    assert create(body, f"patient/Observation.c?category={LAB}") is Reason.SCOPE_INSUFFICIENT


def test_granular_create_is_still_bound_to_the_context_patient() -> None:
    body = observation("Patient/456", category=[{"coding": [LAB_CODING]}])
    assert create(body, f"patient/Observation.c?category={LAB}") is Reason.COMPARTMENT_OTHER_PATIENT


def test_several_granular_scopes_grant_their_union_for_writes() -> None:
    scope = f"patient/Observation.c?category={LAB} patient/Observation.c?category={VITALS}"
    assert create(observation(category=[{"coding": [VITALS_CODING]}]), scope) is Reason.ALLOWED_WRITE
    assert create(observation(category=[{"coding": [LAB_CODING]}]), scope) is Reason.ALLOWED_WRITE


def test_several_granular_scopes_grant_nothing_outside_their_union() -> None:
    scope = f"patient/Observation.c?category={LAB} patient/Observation.c?category={VITALS}"
    other = {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "imaging"}
    assert create(observation(category=[{"coding": [other]}]), scope) is Reason.SCOPE_INSUFFICIENT


def test_plain_scope_supersedes_a_granular_one_for_writes() -> None:
    scope = f"patient/Observation.c?category={LAB} patient/Observation.c"
    assert create(observation(category=[{"coding": [VITALS_CODING]}]), scope) is Reason.ALLOWED_WRITE


def test_granular_update_body_must_match_the_constraint() -> None:
    body = observation(id="abc", category=[{"coding": [VITALS_CODING]}])
    outcome = decide_body("Observation/abc", "PUT", body, f"patient/Observation.u?category={LAB}")
    assert denial(outcome) is Reason.SCOPE_INSUFFICIENT


def test_granular_update_lookup_proves_the_stored_resource_matches_the_constraint() -> None:
    body = observation(id="abc", category=[{"coding": [LAB_CODING]}])
    check = lookup(decide_body("Observation/abc", "PUT", body, f"patient/Observation.u?category={LAB}"))
    category = ("category", LAB)
    assert check.queries == ((("subject", "Patient/123"), category), (("performer", "Patient/123"), category))


def test_granular_patch_may_not_touch_the_constrained_element() -> None:
    outcome = json_patch(
        {"op": "replace", "path": "/category", "value": []}, scope=f"patient/Observation.u?category={LAB}"
    )
    assert denial(outcome) is Reason.COMPARTMENT_AMBIGUOUS


def test_granular_patch_may_not_hide_the_constrained_element_in_a_fhirpath_function() -> None:
    # regression: "where" was taken for the touched element, so the category could be deleted
    outcome = fhirpath(
        fhirpath_patch("Observation.where(true).category", "delete"), scope=f"patient/Observation.u?category={LAB}"
    )
    assert denial(outcome) is Reason.BODY_INVALID


def test_granular_user_scope_write_body_must_match_the_constraint() -> None:
    body = observation("Patient/456", category=[{"coding": [VITALS_CODING]}])
    assert create(body, f"user/Observation.c?category={LAB}", patient=None) is Reason.SCOPE_INSUFFICIENT
