"""Write the committed seed corpus: serialized CheckRequests (allowed searches, reads, POST _search,
Bundles, writes, and denials) plus a few structured seeds. Re-run only to change the seeds:

    python fuzz/make_seed_corpus.py
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from fuzz.check_target import STRUCTURED  # noqa: E402
from fuzz.check_world import BASE_PATH, FHIR_BASE_URL, TOKEN_SPECS, check_request, token_for  # noqa: E402

FORM = "application/x-www-form-urlencoded"
FHIR_JSON = "application/fhir+json"
TOKENS = {spec.name: token_for(spec) for spec in TOKEN_SPECS}
ALICE = TOKENS["alice-all"]


def _observation(patient: str, **extra: object) -> bytes:
    resource = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "hr"},
        "subject": {"reference": f"Patient/{patient}"},
        **extra,
    }
    return json.dumps(resource).encode()


def _bundle(*entries: tuple[str, str, object]) -> bytes:
    items = []
    for method, url, resource in entries:
        entry: dict[str, object] = {"request": {"method": method, "url": url}}
        if resource is not None:
            entry["resource"] = resource
        items.append(entry)
    return json.dumps({"resourceType": "Bundle", "type": "batch", "entry": items}).encode()


# (name, path relative to the base, method, token name or None, content type, body)
SEEDS: list[tuple[str, str, str, str | None, str, bytes | None]] = [
    ("allow-search-patient", "Observation?patient=alice7", "GET", "alice-all", "", None),
    ("allow-search-subject-ref", "Observation?subject=Patient/alice7&code=1234", "GET", "alice-all", "", None),
    ("allow-search-absolute", f"Condition?subject={FHIR_BASE_URL}/Patient/alice7", "GET", "alice-all", "", None),
    ("allow-compartment-search", "Patient/alice7/Observation?_count=5", "GET", "alice-all", "", None),
    ("allow-search-include", "Observation?patient=alice7&_include=Observation:patient", "GET", "alice-all", "", None),
    ("allow-read-patient", "Patient/alice7", "GET", "alice-all", "", None),
    ("allow-read-member", "Observation/alice7-o1", "GET", "alice-all", "", None),
    ("allow-vread-member", "Observation/alice7-o1/_history/2", "GET", "alice-all", "", None),
    ("allow-binary", "Binary/alice7-b1", "GET", "alice-all", "", None),
    ("allow-everything", "Patient/alice7/$everything", "GET", "alice-all", "", None),
    ("allow-post-search", "Observation/_search", "POST", "alice-all", FORM, b"patient=alice7&code=1234"),
    ("allow-create", "Observation", "POST", "alice-all", FHIR_JSON, _observation("alice7")),
    ("allow-update", "Observation/alice7-o3", "PUT", "alice-all", FHIR_JSON, _observation("alice7", id="alice7-o3")),
    (
        "allow-patch",
        "Observation/alice7-o3",
        "PATCH",
        "alice-all",
        "application/json-patch+json",
        b'[{"op":"replace","path":"/status","value":"amended"}]',
    ),
    ("allow-delete", "Observation/alice7-o3", "DELETE", "alice-all", "", None),
    (
        "allow-bundle",
        "",
        "POST",
        "alice-all",
        FHIR_JSON,
        _bundle(
            ("GET", "Observation?patient=alice7", None), ("POST", "Observation", json.loads(_observation("alice7")))
        ),
    ),
    (
        "allow-granular",
        "Observation?patient=carol3&category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
        "GET",
        "carol-granular",
        "",
        None,
    ),
    ("allow-bob-encounter", "Encounter?patient=bob9", "GET", "bob-obs", "", None),
    ("allow-user-scope", "Observation?code=1234", "GET", "user-read", "", None),
    ("allow-metadata", "metadata", "GET", None, "", None),
    ("deny-other-patient", "Observation?patient=bob9", "GET", "alice-all", "", None),
    ("deny-other-subject", "Observation?subject=Patient/bob9", "GET", "alice-all", "", None),
    ("deny-comma-list", "Observation?patient=alice7,bob9", "GET", "alice-all", "", None),
    ("deny-chain", "Observation?patient.name=bob", "GET", "alice-all", "", None),
    ("deny-has", "Patient?_has:Observation:patient:_id=bob9-o1", "GET", "alice-all", "", None),
    ("deny-encoded", "Observation?patient=%62ob9", "GET", "alice-all", "", None),
    ("deny-other-compartment", "Patient/bob9/Observation", "GET", "alice-all", "", None),
    ("deny-other-read", "Observation/bob9-o1", "GET", "alice-all", "", None),
    ("allow-narrowed", "Observation?code=1234", "GET", "alice-all", "", None),
    ("deny-unbound", "Observation/_search", "POST", "alice-all", FORM, b"code=1234"),
    (
        "deny-post-search-other",
        "Observation/_search",
        "POST",
        "alice-all",
        FORM,
        b"patient=alice7&subject=Patient/bob9",
    ),
    ("deny-create-other", "Observation", "POST", "alice-all", FHIR_JSON, _observation("bob9")),
    (
        "deny-bundle-other",
        "",
        "POST",
        "alice-all",
        FHIR_JSON,
        _bundle(("GET", "Observation?patient=alice7", None), ("GET", "Observation?patient=bob9", None)),
    ),
    ("deny-no-token", "Observation?patient=alice7", "GET", None, "", None),
    ("deny-scope", "Condition?patient=bob9", "GET", "bob-obs", "", None),
    ("deny-method-override", "Observation?patient=alice7", "GET", "alice-all", "", None),
    ("deny-dpop-bound-as-bearer", "Observation?patient=alice7", "GET", "alice-dpop", "", None),
]


def _write(name: str, data: bytes) -> None:
    with open(os.path.join(REPO, "fuzz", "corpus", name), "wb") as handle:
        handle.write(data)


def main() -> None:
    for name, relative, method, token, content_type, body in SEEDS:
        headers = {} if token is None else {"authorization": f"Bearer {TOKENS[token]}"}
        if content_type:
            headers["content-type"] = content_type
        if name == "deny-method-override":
            headers["x-http-method-override"] = "DELETE"
        path = f"{BASE_PATH}/{relative}" if relative else BASE_PATH
        _write(f"{name}.pb", check_request(path, method, headers, body).SerializeToString())
    tampered = ALICE[:-5] + ("A" if ALICE[-5] != "A" else "B") + ALICE[-4:]
    _write(
        "deny-tampered.pb",
        check_request(
            f"{BASE_PATH}/Patient/alice7", "GET", {"authorization": f"Bearer {tampered}"}
        ).SerializeToString(),
    )
    generator = random.Random(7)  # noqa: S311 - reproducible seed bytes, not secrets
    for _ in range(24):
        data = STRUCTURED + bytes(generator.randrange(256) for _ in range(generator.randrange(16, 160)))
        _write(f"structured-{hashlib.sha1(data).hexdigest()[:12]}", data)  # noqa: S324 - a file name


if __name__ == "__main__":
    main()
