"""The in-process Check world shared by the property tests and the corpus replay."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fuzz.check_target import CheckTarget
from fuzz.check_world import CheckWorld, write_jwks


@pytest.fixture(scope="package")  # closed (and the smartgate loggers restored) when tests/fuzz is done
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CheckWorld]:
    directory: Path = tmp_path_factory.mktemp("fuzz-world")
    checks = CheckWorld(write_jwks(str(directory / "jwks.json")))
    yield checks
    checks.close()


@pytest.fixture(scope="package")
def target(world: CheckWorld) -> CheckTarget:
    return CheckTarget(world)
