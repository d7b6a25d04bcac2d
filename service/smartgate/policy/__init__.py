"""The pure decision, as one entry point: ``decide`` dispatches each interaction to the rule module that owns it.

FhirRequest + TokenContext -> Decision, or Pending look-ups the authorizer must run before it
can allow. No I/O, no protobuf, no httpx. The rule modules (``read``, ``search``, ``write``,
``bundle``, ``operation``) import only the kernel in ``base`` (with ``access``, ``plan`` and
``patch``); only this module knows them all, so the import graph has no cycle. Every rule
raises ``DenyError`` with a reason code, and ``decide`` turns it into a Decision.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from smartgate.core.reasons import Reason
from smartgate.fhir.request import FhirRequest, Interaction
from smartgate.policy import bundle, operation, read, search, write
from smartgate.policy.base import DenyError, PolicySettings, Rule, decision
from smartgate.policy.decision import Decision
from smartgate.policy.plan import Pending
from smartgate.tokens.context import TokenContext

__all__ = ["RULES", "DenyError", "PolicySettings", "decide"]


def decide(request: FhirRequest, token: TokenContext, settings: PolicySettings) -> Decision | Pending:
    """Decide ``request`` by the rule of its interaction; an interaction without one is denied."""
    rule = RULES.get(request.interaction, _not_open)
    try:
        return rule(request, token, settings)
    except DenyError as deny:
        return decision(deny.reason, deny.message, request, token)


def _bundle(request: FhirRequest, token: TokenContext, settings: PolicySettings) -> Decision | Pending:
    """Each entry of a Bundle is decided like a request of its own: by ``decide``."""
    return bundle.decide_bundle(request, token, settings, decide)


def _not_open(request: FhirRequest, token: TokenContext, settings: PolicySettings) -> Decision:
    """Interactions no rule opens. The capability statement and SMART discovery are public routes, let through
    before the policy; one that reaches it anyway is denied."""
    raise DenyError(Reason.INTERACTION_NOT_SUPPORTED, f"the {request.interaction.value} interaction is not open")


# Every Interaction has an entry (a test holds this), so a new one is denied until a rule is written for it.
RULES: Mapping[Interaction, Rule] = MappingProxyType(
    {
        Interaction.READ: read.decide,
        Interaction.VREAD: read.decide,
        Interaction.HISTORY_INSTANCE: read.decide,
        Interaction.SEARCH_TYPE: search.decide,
        Interaction.SEARCH_COMPARTMENT: search.decide,
        Interaction.CREATE: write.decide,
        Interaction.UPDATE: write.decide,
        Interaction.PATCH: write.decide,
        Interaction.DELETE: write.decide,
        Interaction.BATCH: _bundle,
        Interaction.OPERATION: operation.decide_operation,
        Interaction.HISTORY_TYPE: operation.decide_type_level,
        Interaction.HISTORY_SYSTEM: operation.decide_type_level,
        Interaction.SEARCH_SYSTEM: operation.decide_type_level,
        Interaction.CAPABILITIES: _not_open,
        Interaction.SMART_CONFIGURATION: _not_open,
    }
)
