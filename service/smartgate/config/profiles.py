"""Identity-provider profiles: where each provider puts the SMART values in its tokens.

| profile  | scopes                      | patient                    | fhirUser            | client id      |
|----------|-----------------------------|----------------------------|---------------------|----------------|
| generic  | ``scope`` string (or ``scp``) | ``patient``              | ``fhirUser``        | ``client_id``  |
| okta     | ``scp`` array               | ``launch_response_patient`` | ``fhirUser`` (URL)  | ``cid``        |
| auth0    | ``scope`` string            | ``{ns}patient``, ``{ns}patient_id`` | ``{ns}fhirUser``    | ``azp``        |
| keycloak | ``scope`` string            | ``patient_id``             | ``fhirUser``        | ``azp``        |
| entra    | ``scp`` string, dotted      | ``patient``                | ``fhirUser``        | ``azp``/``appid`` |

Entra ID does not allow ``/`` or ``*`` in scope names, so SMART scopes are registered as
``patient.Observation.read`` and ``patient.all.read``; the ``entra`` profile maps them back to
``patient/Observation.read`` and ``patient/*.read``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, get_args

from smartgate.config.checks import check, string_list


@dataclass(frozen=True)
class ClaimNames:
    """Where each SMART value is read from in a token (a list of claim names; the first present wins).
    These are the generic profile's; ``claim_names_for`` gives the others, and config keys override either."""

    scope: tuple[str, ...] = field(default=("scope", "scp"), metadata=check(string_list))
    patient: tuple[str, ...] = field(default=("patient",), metadata=check(string_list))
    fhir_user: tuple[str, ...] = field(default=("fhirUser",), metadata=check(string_list))
    client_id: tuple[str, ...] = field(default=("client_id", "azp", "cid"), metadata=check(string_list))
    subject: tuple[str, ...] = field(default=("sub",), metadata=check(string_list))


ProfileName = Literal["generic", "okta", "auth0", "keycloak", "entra"]
PROFILE_NAMES: tuple[ProfileName, ...] = get_args(ProfileName)
_DOTTED_SCOPE = re.compile(r"^(patient|user|system)\.([A-Za-z]+)\.([A-Za-z*]+(?:\?.*)?)\Z")


def claim_names_for(profile: ProfileName, namespace: str = "") -> ClaimNames:
    if profile == "okta":
        return ClaimNames(
            scope=("scp", "scope"),
            patient=("launch_response_patient", "patient"),
            fhir_user=("fhirUser",),
            client_id=("cid", "client_id"),
            subject=("sub",),
        )
    if profile == "auth0":
        # The Auth0 guide's Rule adds a namespaced ``patient_id``; a namespaced ``patient`` is read first.
        return ClaimNames(
            scope=("scope",),
            patient=(f"{namespace}patient", f"{namespace}patient_id", "patient"),
            fhir_user=(f"{namespace}fhirUser", "fhirUser"),
            client_id=("azp", "client_id"),
            subject=("sub",),
        )
    if profile == "keycloak":
        return ClaimNames(
            scope=("scope",),
            patient=("patient_id", "patient"),
            fhir_user=("fhirUser",),
            client_id=("azp", "client_id"),
            subject=("sub",),
        )
    if profile == "entra":
        return ClaimNames(
            scope=("scp",),
            patient=("patient",),
            fhir_user=("fhirUser",),
            client_id=("azp", "appid"),
            subject=("oid", "sub"),
        )
    return ClaimNames()


def undot_scope(scope: str) -> str:
    """``patient.Observation.read`` -> ``patient/Observation.read``; ``all`` stands for ``*``."""
    match = _DOTTED_SCOPE.match(scope)
    if match is None:
        return scope
    context, resource_type, permissions = match.groups()
    return f"{context}/{'*' if resource_type == 'all' else resource_type}.{permissions}"
