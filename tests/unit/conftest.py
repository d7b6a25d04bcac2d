"""Fixtures shared by the unit tests."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest


@pytest.fixture
def cli_isolation(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """For tests that call ``smartgate.cli.main``: no stray SMARTGATE_CONFIG, and pytest's SIGHUP handler
    back after ``main`` replaced it."""
    monkeypatch.delenv("SMARTGATE_CONFIG", raising=False)
    previous = signal.getsignal(signal.SIGHUP)
    yield
    signal.signal(signal.SIGHUP, previous)
