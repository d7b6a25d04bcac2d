"""Every seed and every crash or wrong decision the fuzzer found, replayed through the Check
path and the same invariant checker (one test per file), plus the rule each fix established."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fuzz.check_target import CheckTarget
from fuzz.check_world import BASE_PATH, CheckWorld, check_request

pytestmark = pytest.mark.fuzz

FUZZ_DIR = Path(__file__).resolve().parents[2] / "fuzz"
FILES = sorted(
    path
    for folder in ("corpus", "regressions")
    for path in (FUZZ_DIR / folder).iterdir()
    if path.is_file() and not path.name.startswith(".")
)


def test_the_corpus_and_the_regressions_are_there() -> None:
    names = {path.name for path in FILES}
    expected = {"allow-search-patient.pb", "post-everything-with-body.pb", "batch-get-entry-with-foreign-resource.pb"}
    assert expected <= names


@pytest.mark.parametrize("path", FILES, ids=[f"{path.parent.name}/{path.name}" for path in FILES])
def test_the_input_holds_every_invariant(target: CheckTarget, path: Path) -> None:
    target.run(path.read_bytes())


def test_seeds_named_allow_are_allowed_and_deny_are_denied(target: CheckTarget) -> None:
    """The seeds mean what their names say (so the corpus keeps reaching the allow paths)."""
    for path in FILES:
        expected = {"allow": "ok_response", "deny": "denied_response"}.get(path.name.split("-")[0])
        if expected is None or path.parent.name != "corpus":
            continue
        request = target.request_for(path.read_bytes())
        assert request is not None
        assert target.judge(request).WhichOneof("http_response") == expected, path.name


def test_post_everything_with_a_parameters_body_is_denied(target: CheckTarget, world: CheckWorld) -> None:
    """Found by the fuzzer: the body of POST Patient/[ctx]/$everything was never looked at, so a
    Parameters body could carry _type (or anything) past the scope check. Now: query only."""
    body = json.dumps(
        {"resourceType": "Parameters", "parameter": [{"name": "_type", "valueString": "Condition"}]}
    ).encode()
    headers = {"authorization": f"Bearer {world.tokens['bob-obs']}", "content-type": "application/fhir+json"}
    request = check_request(f"{BASE_PATH}/Patient/bob9/$everything?_type=Observation", "POST", headers, body)
    response = target.judge(request)
    assert response.WhichOneof("http_response") == "denied_response"
    assert "search_parameter_not_permitted" in response.denied_response.body


def test_post_everything_without_a_body_is_still_allowed(target: CheckTarget, world: CheckWorld) -> None:
    headers = {"authorization": f"Bearer {world.tokens['alice-all']}", "content-length": "0"}
    response = target.judge(check_request(f"{BASE_PATH}/Patient/alice7/$everything", "POST", headers))
    assert response.WhichOneof("http_response") == "ok_response"
