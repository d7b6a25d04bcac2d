"""Stage 3 values: what the policy concluded, and the look-up it may need first."""

from __future__ import annotations

from dataclasses import dataclass

from smartgate.reasons import Reason
from smartgate.token_context import TokenContext


@dataclass(frozen=True, slots=True)
class Decision:
    """Allow or deny, always with a reason code; ``context`` is set when a token was verified."""

    reason: Reason
    message: str
    context: TokenContext | None = None
    interaction: str = ""
    resource_type: str = ""

    @property
    def allowed(self) -> bool:
        return self.reason.allows

    @property
    def http_status(self) -> int:
        return self.reason.http_status


@dataclass(frozen=True, slots=True)
class MembershipCheck:
    """The policy allows the request only if ``resource_type/resource_id`` is in the patient's
    compartment: true when a search on any of ``params`` bound to the patient finds it."""

    resource_type: str
    resource_id: str
    patient_id: str
    params: tuple[str, ...]
