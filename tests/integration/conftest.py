"""The integration suite's session stack: IdP stand-in + demo FHIR server + smartgate + real Envoy
(built by ``tests.support.stack.start_stack``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.stack import Stack, start_stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with start_stack(tmp_path_factory.mktemp("stack")) as started:
        yield started
