"""The one line per fault test the lead adds up: faults injected, requests sent, wrong outcomes."""

from __future__ import annotations


def report_faults(name: str, *, injected: int, requests: int, wrong: int, **figures: object) -> None:
    extra = "".join(f" {key}={value}" for key, value in figures.items())
    print(f"\nFAULTS: name={name} injected={injected} requests={requests} wrong={wrong}{extra}")
