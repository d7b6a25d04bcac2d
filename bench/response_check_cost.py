"""Cost of response verification per response size (pure check, no Envoy): prints a Markdown table.

Usage: .venv/bin/python bench/response_check_cost.py
"""

from __future__ import annotations

import json
import time

from smartgate.policy.response_rules import ResponseContext, check_response_body
from smartgate.tokens.scopes import parse_scopes


def searchset(count: int) -> bytes:
    entries = [
        {
            "fullUrl": f"http://x/fhir/Observation/o{i}",
            "search": {"mode": "match"},
            "resource": {
                "resourceType": "Observation",
                "id": f"o{i}",
                "status": "final",
                "category": [
                    {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                "code": "vital-signs",
                            }
                        ]
                    }
                ],
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
                "subject": {"reference": "Patient/123"},
                "effectiveDateTime": "2024-01-01T10:00:00Z",
                "valueQuantity": {
                    "value": 72,
                    "unit": "beats/minute",
                    "system": "http://unitsofmeasure.org",
                    "code": "/min",
                },
            },
        }
        for i in range(count)
    ]
    return json.dumps({"resourceType": "Bundle", "type": "searchset", "total": count, "entry": entries}).encode()


def measure() -> list[dict[str, float]]:
    """p50 time to verify a searchset of 1 to 5000 Observations, and its cost per KB."""
    context = ResponseContext("123", parse_scopes(["patient/*.rs"]), "http://x/fhir", frozenset({"Binary"}))
    rows = []
    for count in (1, 10, 100, 1000, 5000):
        body = searchset(count)
        runs = max(5, 2000 // count)
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            checked, findings = check_response_body(body, context)
            times.append(time.perf_counter() - started)
            assert checked == count and not findings
        p50 = sorted(times)[len(times) // 2]
        kb = len(body) / 1024
        rows.append({"resources": count, "kb": kb, "p50_ms": p50 * 1000, "us_per_kb": p50 * 1e6 / kb})
    return rows


def main() -> None:
    print("| resources | body KB | check p50 (ms) | µs per KB |")
    print("| --- | --- | --- | --- |")
    for row in measure():
        print(f"| {row['resources']} | {row['kb']:.1f} | {row['p50_ms']:.3f} | {row['us_per_kb']:.1f} |")


if __name__ == "__main__":
    main()
