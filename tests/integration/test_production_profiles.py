"""Identity-provider profiles: tokens shaped as Okta, Auth0, Keycloak, Microsoft Entra and generic
SMART servers issue them, each from its own issuer configured with its profile, are accepted
through Envoy with the right verified x-smart-* headers; fhirUser on our base becomes relative."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support.idp import IdentityProvider, base_claims, new_keys, sign
from tests.support.stack import GatedFhir, gated_fhir, received_smart_headers

pytestmark = pytest.mark.integration

NAMESPACE = "https://smartgate.example/"
OKTA_AUDIENCE, AUTH0_AUDIENCE, KEYCLOAK_AUDIENCE = "api://smartgate", "https://fhir.example.org/r4", "fhir-api"
ENTRA_AUDIENCE = "api://7d1c0ffe-5b6a-4c8e-9f1e-2a3b4c5d6e7f"


@dataclass
class Profiles:
    gated: GatedFhir
    idps: dict[str, IdentityProvider]  # profile -> its issuer's stand-in

    def token(
        self,
        profile: str,
        claims: dict[str, Any],
        audience: str | None = None,
        alg: str = "ES256",
        typ: str | None = "at+jwt",
    ) -> str:
        issuer = self.idps[profile].issuer
        return sign(self.gated.keys, {**base_claims(issuer, audience or self.gated.base_url), **claims}, alg, typ)


@pytest.fixture(scope="module")
def profiles(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Profiles]:
    keys = new_keys()
    others = {name: IdentityProvider(keys, name=name) for name in ("okta", "auth0", "keycloak", "entra")}

    def issuers(generic: IdentityProvider) -> list[dict[str, Any]]:
        return [
            {"issuer": generic.issuer},
            {"issuer": others["okta"].issuer, "profile": "okta", "audiences": [OKTA_AUDIENCE]},
            {
                "issuer": others["auth0"].issuer,
                "profile": "auth0",
                "claims_namespace": NAMESPACE,
                "audiences": [AUTH0_AUDIENCE],
            },
            {"issuer": others["keycloak"].issuer, "profile": "keycloak", "audiences": [KEYCLOAK_AUDIENCE]},
            {"issuer": others["entra"].issuer, "profile": "entra", "audiences": [ENTRA_AUDIENCE]},
        ]

    try:
        with gated_fhir(tmp_path_factory.mktemp("profiles"), keys=keys, issuers=issuers) as gated:
            yield Profiles(gated, {"generic": gated.idp, **others})
    finally:
        for idp in others.values():
            idp.close()


def _through_envoy(profiles: Profiles, token: str, path: str = "/Observation?patient=123") -> dict[str, str] | None:
    response = profiles.gated.get(path, token)
    assert response.status_code == 200, response.text
    return received_smart_headers(response)


def test_okta_scp_array_cid_and_launch_response_patient(profiles: Profiles) -> None:
    token = profiles.token(
        "okta",
        {
            "ver": 1,
            "jti": "AT.q1w2e3r4t5y6",
            "cid": "0oa8okta2smart",
            "uid": "00u1ana",
            "sub": "ana@example.org",
            "scp": ["openid", "fhirUser", "launch/patient", "patient/Observation.read"],
            "launch_response_patient": "123",
            "fhirUser": f"{profiles.gated.base_url}/Patient/123",
            "auth_time": 1700000000,
        },
        audience=OKTA_AUDIENCE,
        alg="RS256",
        typ=None,
    )
    assert _through_envoy(profiles, token) == {
        "x-smart-patient": "123",
        "x-smart-fhir-user": "Patient/123",  # absolute on our base: made relative
        "x-smart-scope": "openid fhirUser launch/patient patient/Observation.read",
        "x-smart-client-id": "0oa8okta2smart",
        "x-smart-subject": "ana@example.org",
        "x-smart-issuer": profiles.idps["okta"].issuer,
    }


def test_auth0_namespaced_claims_and_no_fhir_user(profiles: Profiles) -> None:
    token = profiles.token(
        "auth0",
        {
            "sub": "auth0|65f0c0ffee",
            "azp": "auth0SmartClient1",
            "scope": "openid launch/patient patient/Observation.rs",
            f"{NAMESPACE}patient": "123",
            "gty": "authorization_code",
            "aud": [AUTH0_AUDIENCE, "https://tenant.example.auth0.com/userinfo"],
        },
        alg="RS256",
    )
    assert _through_envoy(profiles, token) == {
        "x-smart-patient": "123",
        "x-smart-scope": "openid launch/patient patient/Observation.rs",
        "x-smart-client-id": "auth0SmartClient1",
        "x-smart-subject": "auth0|65f0c0ffee",
        "x-smart-issuer": profiles.idps["auth0"].issuer,
    }


def test_auth0_namespaced_patient_id_as_the_auth0_guide_adds_it(profiles: Profiles) -> None:
    """The Auth0 SMART guide's Rule adds a namespaced ``patient_id`` claim (it was a 401 before)."""
    token = profiles.token(
        "auth0",
        {
            "sub": "auth0|65f0c0ffee",
            "azp": "auth0SmartClient1",
            "scope": "launch/patient patient/Observation.rs",
            f"{NAMESPACE}patient_id": "123",
            "aud": AUTH0_AUDIENCE,
        },
        alg="RS256",
    )
    headers = _through_envoy(profiles, token)
    assert headers is not None and headers["x-smart-patient"] == "123"


def test_keycloak_patient_id_and_azp(profiles: Profiles) -> None:
    token = profiles.token(
        "keycloak",
        {
            "sub": "f1e2d3c4-0000-4000-8000-000000000001",
            "typ": "Bearer",
            "azp": "kc-smart-app",
            "session_state": str(uuid.uuid4()),
            "preferred_username": "ana",
            "scope": "openid profile launch/patient patient/Observation.rs",
            "patient_id": "123",
            "fhirUser": "Patient/123",
            "aud": ["account", KEYCLOAK_AUDIENCE],
        },
        alg="RS256",
        typ="JWT",
    )
    assert _through_envoy(profiles, token) == {
        "x-smart-patient": "123",
        "x-smart-fhir-user": "Patient/123",
        "x-smart-scope": "openid profile launch/patient patient/Observation.rs",
        "x-smart-client-id": "kc-smart-app",
        "x-smart-subject": "f1e2d3c4-0000-4000-8000-000000000001",
        "x-smart-issuer": profiles.idps["keycloak"].issuer,
    }


def _entra(profiles: Profiles, scp: str) -> str:
    return profiles.token(
        "entra",
        {
            "ver": "2.0",
            "tid": "72f988bf-0000-0000-0000-2d7cd011db47",
            "oid": "0b7e6c1a-oid-ana",
            "sub": "pairwise-sub-for-this-app",
            "azp": "c0ffee00-app-0000-0000-000000000001",
            "azpacr": "0",
            "scp": scp,
            "patient": "123",
            "name": "Ana Alvarez",
        },
        audience=ENTRA_AUDIENCE,
        alg="RS256",
        typ="JWT",
    )


def test_entra_dotted_scp_string_and_azp(profiles: Profiles) -> None:
    token = _entra(profiles, "patient.Observation.read patient.all.read")
    assert _through_envoy(profiles, token) == {
        "x-smart-patient": "123",
        "x-smart-scope": "patient/Observation.read patient/*.read",
        "x-smart-client-id": "c0ffee00-app-0000-0000-000000000001",
        "x-smart-subject": "0b7e6c1a-oid-ana",
        "x-smart-issuer": profiles.idps["entra"].issuer,
    }
    coverage = _through_envoy(profiles, token, "/Coverage?beneficiary=Patient/123")  # patient.all.read
    assert coverage is not None and coverage["x-smart-scope"] == "patient/Observation.read patient/*.read"


def test_entra_dotted_scope_grants_only_what_it_names(profiles: Profiles) -> None:
    response = profiles.gated.get("/Coverage?beneficiary=Patient/123", _entra(profiles, "patient.Observation.read"))
    assert response.status_code == 403
    assert "scope_insufficient" in response.text


def test_generic_smart_token_with_fhir_user_on_our_base(profiles: Profiles) -> None:
    token = profiles.gated.token(
        fhirUser=f"{profiles.gated.base_url}/Patient/123", client_id="generic-app", sub="user-9"
    )
    assert _through_envoy(profiles, token) == {
        "x-smart-patient": "123",
        "x-smart-fhir-user": "Patient/123",
        "x-smart-scope": "launch/patient patient/*.rs",
        "x-smart-client-id": "generic-app",
        "x-smart-subject": "user-9",
        "x-smart-issuer": profiles.idps["generic"].issuer,
    }


@pytest.mark.parametrize(
    ("fhir_user", "forwarded"),
    [
        ("{base}/Patient/123", "Patient/123"),
        ("{base}/Practitioner/prac-1", "Practitioner/prac-1"),
        ("Patient/123", "Patient/123"),
        ("https://other.example.org/fhir/Practitioner/9", "https://other.example.org/fhir/Practitioner/9"),
    ],
)
def test_fhir_user_is_relative_on_our_base_and_kept_elsewhere(
    profiles: Profiles, fhir_user: str, forwarded: str
) -> None:
    token = profiles.gated.token(fhirUser=fhir_user.format(base=profiles.gated.base_url))
    headers = _through_envoy(profiles, token)
    assert headers is not None and headers["x-smart-fhir-user"] == forwarded


def test_okta_shaped_token_under_the_generic_profile_has_no_patient_context(profiles: Profiles) -> None:
    token = profiles.token(
        "generic",
        {
            "cid": "0oa8okta2smart",
            "sub": "ana@example.org",
            "scp": ["launch/patient", "patient/Observation.read"],
            "launch_response_patient": "123",
        },
    )
    response = profiles.gated.get("/Observation?patient=123", token)
    assert response.status_code == 401
    assert "patient_context_missing" in response.text
