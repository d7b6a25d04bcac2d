"""What the policy concluded, as a value of its own so every stage (and the decision log) can carry it."""

from __future__ import annotations

from dataclasses import dataclass

from smartgate.core.reasons import Reason
from smartgate.tokens.context import TokenContext


@dataclass(frozen=True, slots=True)
class Decision:
    """Allow or deny, always with a reason code; ``context`` is set when a token was verified."""

    reason: Reason
    message: str
    context: TokenContext | None = None
    interaction: str = ""
    resource_type: str = ""
    # Search narrowing: parameters Envoy sets on the request before it goes upstream (replacing any of the
    # same name), e.g. (("patient", "123"),) for a patient/ search that named no patient.
    query_parameters_to_set: tuple[tuple[str, str], ...] = ()

    @property
    def allowed(self) -> bool:
        return self.reason.allows

    @property
    def http_status(self) -> int:
        return self.reason.http_status
