"""Properties of the whole Check path (real protobufs, real verifier and authorizer, a
deterministic look-up): every CheckResponse is explicit, nothing escapes, and a patient-context
token is never allowed a request that names another patient, in any form."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
from envoy.service.auth.v3 import external_auth_pb2
from fuzz.check_target import CheckTarget
from fuzz.check_world import BASE_PATH, FHIR_BASE_URL, CheckWorld, check_request
from fuzz.decision_oracle import decision_problem
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.fuzz

PROPERTY = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
OTHERS = st.sampled_from(["bob9", "carol3", "dave4"])
FORM = "application/x-www-form-urlencoded"


def _denied(response: external_auth_pb2.CheckResponse) -> bool:
    kind: str | None = response.WhichOneof("http_response")  # the protobuf modules ship no stubs
    return kind == "denied_response"


@PROPERTY
@given(
    method=st.text(max_size=8),
    path=st.text(max_size=120)
    | st.binary(max_size=120).map(
        lambda raw: raw.decode("utf-8", errors="surrogateescape").encode("utf-8", "replace").decode()
    ),
    headers=st.dictionaries(st.text(max_size=20), st.text(max_size=200), max_size=6),
    body=st.binary(max_size=300),
    token=st.sampled_from(["alice-all", "bob-obs", "user-read", None]),
)
def test_any_check_request_gets_an_explicit_response(
    target: CheckTarget,
    world: CheckWorld,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes,
    token: str | None,
) -> None:
    if token is not None:
        headers["authorization"] = f"Bearer {world.tokens[token]}"
    request = check_request(BASE_PATH + "/" + path.lstrip("/"), method, headers, body or None)
    target.judge(request)  # raises on a missing status or a wrong allow


@PROPERTY
@given(raw=st.binary(max_size=600))
def test_any_bytes_that_parse_as_a_check_request_get_an_explicit_response(target: CheckTarget, raw: bytes) -> None:
    target.run(raw)


@PROPERTY
@given(size=st.sampled_from([17_000, 100_000, 1_000_000]), where=st.sampled_from(["token", "path", "header", "body"]))
def test_huge_values_get_an_explicit_response(target: CheckTarget, world: CheckWorld, size: int, where: str) -> None:
    headers = {"authorization": f"Bearer {world.tokens['alice-all']}"}
    path, body = f"{BASE_PATH}/Observation?patient=alice7", None
    if where == "token":
        headers["authorization"] = "Bearer " + "a" * size
    elif where == "path":
        path += "&code=" + "1" * size
    elif where == "header":
        headers["x-big"] = "v" * size
    else:
        path, body = f"{BASE_PATH}/Observation/_search", b"patient=alice7&code=" + b"1" * size
        headers["content-type"] = FORM
    target.judge(check_request(path, "POST" if body else "GET", headers, body))


def test_invalid_utf8_in_the_raw_body_gets_an_explicit_deny(target: CheckTarget, world: CheckWorld) -> None:
    headers = {"authorization": f"Bearer {world.tokens['alice-all']}", "content-type": FORM}
    response = target.judge(check_request(f"{BASE_PATH}/Observation/_search", "POST", headers, b"patient=\xff\xfe"))
    assert _denied(response)


def _encodings(other: str) -> list[str]:
    return [other, quote(other, safe=""), "".join(f"%{ord(char):02x}" for char in other)]


def _mentions(other: str, encoded: str) -> list[tuple[str, str, bytes | None]]:
    """(method, base-relative URL, form body) that each name ``other`` somewhere a server would read."""
    return [
        ("GET", f"Observation?patient={encoded}", None),
        ("GET", f"Observation?patient=Patient/{encoded}", None),
        ("GET", f"Observation?subject=Patient/{encoded}", None),
        ("GET", f"Observation?subject:Patient={encoded}", None),
        ("GET", f"Observation?subject={quote(FHIR_BASE_URL, safe='')}/Patient/{encoded}", None),
        ("GET", f"Observation?patient=alice7&subject=Patient/{encoded}", None),
        ("GET", f"Observation?patient=alice7,{encoded}", None),
        ("GET", f"Observation?patient={encoded},alice7", None),
        ("GET", f"Observation?patient=alice7&patient={encoded}", None),
        ("GET", f"Observation?patient=alice7&Patient={encoded}", None),  # a case variant (issue 15)
        ("GET", f"Observation?code=1234&PATIENT={encoded}", None),
        ("GET", f"Device?type=x&patient={encoded}", None),
        ("GET", f"Observation?patient.identifier={encoded}", None),
        ("GET", f"Observation?patient._id={encoded}&patient=alice7", None),
        ("GET", f"Observation?subject:Patient._id={encoded}", None),
        ("GET", f"Patient?_has:Observation:patient:_id={encoded}", None),
        ("GET", f"Patient?_id={encoded}", None),
        ("GET", f"Patient?link=Patient/{encoded}", None),
        ("GET", f"Encounter?patient=alice7&_include=Encounter:subject&subject=Patient/{encoded}", None),
        ("GET", f"Patient/{other}", None),
        ("GET", f"Patient/{other}/Observation", None),
        ("GET", f"Patient/{other}/$everything", None),
        ("GET", f"Observation/{other}-o1", None),
        ("GET", f"Observation/{other}-o1/_history/1", None),
        ("GET", f"Binary/{other}-b1", None),
        ("POST", "Observation/_search", f"patient={encoded}".encode()),
        ("POST", "Observation/_search", f"patient=alice7&subject=Patient/{encoded}".encode()),
        ("POST", f"Observation/_search?patient={encoded}", b"code=1234"),
        ("POST", f"Patient/{other}/Observation/_search", b"code=1234"),
    ]


@PROPERTY
@given(other=OTHERS, choice=st.integers(0, 10_000), encoding=st.integers(0, 2), via_bundle=st.booleans())
def test_another_patient_named_in_any_form_is_denied(
    target: CheckTarget, world: CheckWorld, other: str, choice: int, encoding: int, via_bundle: bool
) -> None:
    forms = _mentions(other, _encodings(other)[encoding])
    method, url, body = forms[choice % len(forms)]
    headers = {"authorization": f"Bearer {world.tokens['alice-all']}"}
    if via_bundle and body is None:
        entries = [
            {"request": {"method": "GET", "url": "Observation?patient=alice7"}},
            {"request": {"method": method, "url": url}},
        ]
        method, path = "POST", BASE_PATH
        body = json.dumps({"resourceType": "Bundle", "type": "batch", "entry": entries}).encode()
        headers["content-type"] = "application/fhir+json"
    else:
        path = f"{BASE_PATH}/{url}"
        if body is not None:
            headers["content-type"] = FORM
    response = target.judge(check_request(path, method, headers, body))
    assert _denied(response), (method, path, body)


@PROPERTY
@given(
    other=OTHERS,
    element=st.sampled_from(["subject", "performer", "focus", "hasMember", "derivedFrom"]),
    form=st.sampled_from(["Patient/{}", FHIR_BASE_URL + "/Patient/{}"]),
    method=st.sampled_from(["POST", "PUT", "bundle"]),
)
def test_a_write_that_references_another_patient_is_denied(
    target: CheckTarget, world: CheckWorld, other: str, element: str, form: str, method: str
) -> None:
    resource = {
        "resourceType": "Observation",
        "id": "alice7-o9",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": "Patient/alice7"},
    }
    resource[element] = {"reference": form.format(other)}
    headers = {"authorization": f"Bearer {world.tokens['alice-all']}", "content-type": "application/fhir+json"}
    if method == "bundle":
        entry = {"request": {"method": "POST", "url": "Observation"}, "resource": resource}
        body = json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [entry]}).encode()
        request = check_request(BASE_PATH, "POST", headers, body)
    else:
        path = f"{BASE_PATH}/Observation" + ("/alice7-o9" if method == "PUT" else "")
        request = check_request(path, method, headers, json.dumps(resource).encode())
    assert _denied(target.judge(request))


def test_the_same_requests_for_the_context_patient_are_allowed(target: CheckTarget, world: CheckWorld) -> None:
    """The deny properties above would pass trivially if nothing were ever allowed."""
    headers = {"authorization": f"Bearer {world.tokens['alice-all']}"}
    for path in (
        "Observation?patient=alice7",
        "Observation?subject=Patient/alice7",
        "Patient/alice7/Observation",
        "Observation/alice7-o1",
        "Patient?_id=alice7",
        "Binary/alice7-b1",
    ):
        request = check_request(f"{BASE_PATH}/{path}", "GET", headers)
        response = target.judge(request)
        assert response.WhichOneof("http_response") == "ok_response", path
        assert decision_problem(request, response) is None
