"""The fault tests' shared stand-ins: a recording FHIR upstream, rotating signing keys, and the
identity provider stand-in serving those keys (each test gets fresh ones)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.fhir_upstream import RecordingUpstream
from tests.support.idp import IdentityProvider, RotatingKeys


@pytest.fixture
def upstream() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream()
    yield server
    server.close()


@pytest.fixture
def keys() -> RotatingKeys:
    return RotatingKeys.generate()


@pytest.fixture
def idp(keys: RotatingKeys) -> Iterator[IdentityProvider]:
    provider = IdentityProvider(keys)
    yield provider
    provider.close()
