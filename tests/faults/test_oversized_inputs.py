"""Oversized and malformed inputs through real Envoy: headers over Envoy's limit, a 100 KB token,
a body over max_request_bytes, invalid UTF-8, JSON nested 10,000 deep and Bundles of 10,000
entries. Each gets a clear 4xx (never a 5xx, never an allow), none reaches the FHIR server,
smartgate stays up, and its memory stays bounded."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.support.fhir_upstream import RecordingUpstream
from tests.support.idp import IdentityProvider, RotatingKeys
from tests.support.stack import FaultStack, fault_stack

from .fault_report import report_faults

pytestmark = pytest.mark.faults

MAX_REQUEST_BYTES = 256 * 1024  # max_request_bytes, rendered into Envoy's ext_authz buffer (413 above it)
MAX_BUNDLE_ENTRIES = 500  # smartgate's fixed limit on batch/transaction entries
FHIR_JSON = {"content-type": "application/fhir+json"}
FORM = {"content-type": "application/x-www-form-urlencoded"}


@dataclass
class Oversized:
    stack: FaultStack
    token: str
    sent: int = 0

    def send(
        self,
        method: str,
        path: str,
        *,
        token: bool = True,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        self.sent += 1
        return self.stack.send(
            method,
            path,
            self.token if token else None,
            request_id=f"oversized-{self.sent}",
            headers=headers,
            content=content,
        )

    def reached_upstream(self) -> int:
        return len(self.stack.upstream.forwarded("oversized-"))


@pytest.fixture(scope="module")
def oversized(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Oversized]:
    keys = RotatingKeys.generate()
    idp = IdentityProvider(keys)
    upstream = RecordingUpstream()
    try:
        with fault_stack(
            tmp_path_factory.mktemp("oversized"),
            keys=keys,
            issuers=[{"issuer": idp.issuer}],
            upstream=upstream,
            max_request_bytes=MAX_REQUEST_BYTES,
        ) as stack:
            yield Oversized(stack, stack.token())
            assert stack.smartgate.process.poll() is None, "smartgate died"
    finally:
        upstream.close()
        idp.close()


def nested(depth: int) -> bytes:
    return (
        b'{"resourceType":"Observation","status":"final","subject":{"reference":"Patient/123"},'
        b'"extension":' + b"[" * depth + b"]" * depth + b"}"
    )


def bundle(entries: int) -> bytes:
    entry = {"request": {"method": "GET", "url": "Observation?patient=123"}}
    return json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [entry] * entries}).encode()


def raw_status(stack: FaultStack, request_line: bytes, token: str) -> int:
    """Send bytes httpx would escape (raw non-UTF-8 in the request target) over a plain socket."""
    host, port = stack.base_url.split("/")[2].split(":")
    with socket.create_connection((host, int(port)), timeout=5) as connection:
        connection.sendall(
            request_line
            + b"\r\nhost: "
            + host.encode()
            + b"\r\nauthorization: Bearer "
            + token.encode()
            + b"\r\nx-request-id: oversized-raw\r\nconnection: close\r\n\r\n"
        )
        reply = connection.recv(4096)
    return int(reply.split(b" ", 2)[1])


def check(
    name: str,
    oversized: Oversized,
    responses: list[httpx.Response],
    expected: set[int],
    reason: str | None = None,
    raw_statuses: tuple[int, ...] = (),
) -> None:
    statuses = [response.status_code for response in responses] + list(raw_statuses)
    reached = oversized.reached_upstream()
    wrong = sum(1 for status in statuses if status not in expected) + reached
    report_faults(name, injected=len(statuses), requests=len(statuses), wrong=wrong, statuses=sorted(set(statuses)))
    assert set(statuses) <= expected, [(r.status_code, r.text[:200]) for r in responses] + list(raw_statuses)
    if reason is not None:
        assert all(reason in response.text for response in responses), [r.text[:300] for r in responses]
    assert reached == 0
    assert oversized.stack.smartgate.process.poll() is None


def test_headers_over_envoys_limit_are_refused_by_envoy(oversized: Oversized) -> None:
    many = {f"x-filler-{index}": "a" * 1000 for index in range(80)}  # 80 KB of headers; Envoy allows 60 KB
    one_huge = {"x-filler": "a" * 100_000}
    responses = [
        oversized.send("GET", "/Observation?patient=123", headers=many),
        oversized.send("GET", "/Observation?patient=123", headers=one_huge),
    ]
    check("headers_over_envoy_limit", oversized, responses, {431})


def test_a_100kb_token_is_refused_with_a_4xx(oversized: Oversized) -> None:
    huge = "e" * 50_000 + "." + "p" * 50_000 + "." + "s" * 500
    responses = [oversized.stack.get("/Observation?patient=123", huge, request_id="oversized-token")]
    check("token_100kb", oversized, responses, {431})


def test_a_token_over_smartgates_limit_but_under_envoys_is_a_401(oversized: Oversized) -> None:
    large = "e" * 20_000 + "." + "p" * 20_000 + "." + "s" * 500  # over tokens.max_token_bytes (16 KB)
    responses = [oversized.stack.get("/Observation?patient=123", large, request_id="oversized-token")]
    check("token_over_max_token_bytes", oversized, responses, {401}, reason="token_malformed")


def test_a_body_over_max_request_bytes_is_a_413_and_never_reaches_the_upstream(oversized: Oversized) -> None:
    body = b'{"resourceType":"Observation","note":[{"text":"' + b"x" * (MAX_REQUEST_BYTES + 1) + b'"}]}'
    form = b"patient=123&code=" + b"x" * (MAX_REQUEST_BYTES + 1)
    responses = [
        oversized.send("POST", "/Observation", headers=FHIR_JSON, content=body),
        oversized.send("POST", "/Observation/_search", headers=FORM, content=form),
    ]
    check("body_over_max_request_bytes", oversized, responses, {413})


def test_invalid_utf8_in_path_query_or_body_is_a_400(oversized: Oversized) -> None:
    responses = [
        oversized.send("GET", "/Observation/%FF%FE"),
        oversized.send("GET", "/Observation?patient=%FF%FE"),
        oversized.send("GET", "/Observation?patient=123&code=%C3%28"),
        oversized.send("POST", "/Observation/_search", headers=FORM, content=b"patient=%FF"),
        oversized.send("POST", "/Observation/_search", headers=FORM, content=b"patient=123&code=\xff\xfe"),
        oversized.send(
            "POST", "/Observation", headers=FHIR_JSON, content=b'{"resourceType":"Observation","status":"\xff\xfe"}'
        ),
        oversized.send(
            "POST",
            "",
            headers=FHIR_JSON,
            content=b'{"resourceType":"Bundle","type":"batch","entry":[{"request":\xff}]}',
        ),
    ]
    raw = (
        raw_status(oversized.stack, b"GET /fhir/Observation/\xff\xfe HTTP/1.1", oversized.token),
        raw_status(oversized.stack, b"GET /fhir/Observation?patient=\xff HTTP/1.1", oversized.token),
    )
    check("invalid_utf8", oversized, responses, {400}, raw_statuses=raw)


@pytest.mark.parametrize("depth", [10_000, 900])
def test_deeply_nested_json_is_a_400_and_smartgate_stays_up(oversized: Oversized, depth: int) -> None:
    body = nested(depth)
    patch_body = b"[" * depth + b"]" * depth
    bundle_body = b'{"resourceType":"Bundle","type":"transaction","entry":' + b"[" * depth + b"]" * depth + b"}"
    responses = [
        oversized.send("POST", "/Observation", headers=FHIR_JSON, content=body),
        oversized.send("PUT", "/Observation/obs-1", headers=FHIR_JSON, content=body),
        oversized.send(
            "PATCH", "/Observation/obs-1", headers={"content-type": "application/json-patch+json"}, content=patch_body
        ),
        oversized.send("POST", "", headers=FHIR_JSON, content=bundle_body),
    ]
    check(f"nested_json_{depth}", oversized, responses, {400}, reason="body_invalid")


def test_a_bundle_of_10000_entries_is_refused_by_the_body_limit(oversized: Oversized) -> None:
    body = bundle(10_000)
    assert len(body) > MAX_REQUEST_BYTES
    responses = [oversized.send("POST", "", headers=FHIR_JSON, content=body)]
    check("bundle_10000_entries", oversized, responses, {413})


def test_a_bundle_under_the_body_limit_but_over_the_entry_limit_is_a_400(oversized: Oversized) -> None:
    body = bundle(MAX_BUNDLE_ENTRIES + 1)
    assert len(body) < MAX_REQUEST_BYTES
    responses = [oversized.send("POST", "", headers=FHIR_JSON, content=body)]
    check("bundle_over_entry_limit", oversized, responses, {400}, reason="body_invalid")
    assert f"more than {MAX_BUNDLE_ENTRIES} entries" in responses[0].text


def test_a_bundle_at_the_entry_limit_is_decided_entry_by_entry(oversized: Oversized) -> None:
    allowed = oversized.stack.send(
        "POST", "", oversized.token, request_id="at-entry-limit", headers=FHIR_JSON, content=bundle(MAX_BUNDLE_ENTRIES)
    )
    assert allowed.status_code == 200, allowed.text[:300]  # the limit is exactly the limit
    assert len(oversized.stack.upstream.forwarded("at-entry-limit")) == 1


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_memory_stays_bounded_under_200_oversized_and_nested_requests(oversized: Oversized) -> None:
    pid = oversized.stack.smartgate.process.pid
    large_token = "e" * 20_000 + "." + "p" * 20_000 + "." + "s" * 500
    other_patient = (
        b'{"resourceType":"Observation","status":"final","subject":{"reference":"Patient/456"},'
        b'"note":[{"text":"' + b"x" * 200_000 + b'"}]}'
    )
    shapes: list[tuple[str, str, dict[str, str], bytes | None]] = [  # every one a 4xx from smartgate
        ("POST", "/Observation", FHIR_JSON, nested(10_000)),
        ("POST", "", FHIR_JSON, bundle(MAX_BUNDLE_ENTRIES + 1)),
        ("GET", "/Observation?patient=123", {"authorization": f"Bearer {large_token}"}, None),
        ("POST", "/Observation", FHIR_JSON, other_patient),
        ("POST", "/Observation/_search", FORM, b"patient=456&code=" + b"y" * 200_000),
    ]

    def send(method: str, path: str, headers: dict[str, str], content: bytes | None) -> int:
        return oversized.send(
            method, path, token="authorization" not in headers, headers=headers, content=content
        ).status_code

    for shape in shapes:  # warm-up: first use of each path
        send(*shape)
    before = rss_kb(pid)
    statuses = []
    for index in range(200):
        statuses.append(send(*shapes[index % len(shapes)]))
    after = rss_kb(pid)
    growth_mb = (after - before) / 1024
    wrong = sum(1 for status in statuses if not 400 <= status < 500) + oversized.reached_upstream()
    report_faults(
        "memory_under_oversized",
        injected=len(statuses),
        requests=len(statuses),
        wrong=wrong,
        rss_before_mb=f"{before / 1024:.1f}",
        rss_after_mb=f"{after / 1024:.1f}",
    )
    assert wrong == 0, sorted(set(statuses))
    assert growth_mb < 30
