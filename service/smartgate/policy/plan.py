"""The look-ups a decision may need first, as data: the policy stays pure, the pipeline runs them on the FHIR server."""

from __future__ import annotations

from dataclasses import dataclass

from smartgate.policy.decision import Decision

Query = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class MembershipCheck:
    """Allowed only if the FHIR server finds ``resource_type/resource_id`` with one of ``queries``
    (each a set of search parameters, e.g. ``(("subject", "Patient/123"),)``). With
    ``absent_ok`` (an upsert), a resource that never existed passes too."""

    resource_type: str
    resource_id: str
    queries: tuple[Query, ...]
    absent_ok: bool = False
    label: str = ""


def compartment_check(
    resource_type: str,
    resource_id: str,
    patient_id: str,
    params: tuple[str, ...],
    constraints: tuple[Query, ...] = ((),),
    absent_ok: bool = False,
    label: str = "",
) -> MembershipCheck:
    """Membership through any compartment parameter, and any one of the granular constraint sets."""
    queries = tuple(((param, f"Patient/{patient_id}"), *constraint) for param in params for constraint in constraints)
    return MembershipCheck(resource_type, resource_id, queries, absent_ok, label)


@dataclass(frozen=True, slots=True)
class BinaryCheck:
    """A Binary is readable under patient/ scopes only when its securityContext is in the compartment."""

    resource_id: str
    patient_id: str
    label: str = ""


@dataclass(frozen=True, slots=True)
class VersionCheck:
    """vread and instance history show past versions: each one shown must be the patient's too
    (a resource whose subject changed must not reveal the earlier patient's version)."""

    resource_type: str
    resource_id: str
    version_id: str | None  # None: every version in the instance history
    patient_id: str
    label: str = ""


LookupCheck = MembershipCheck | BinaryCheck | VersionCheck


@dataclass(frozen=True, slots=True)
class Pending:
    """The policy allows with ``allow`` once every check passes; any failing check denies."""

    checks: tuple[LookupCheck, ...]
    allow: Decision
