"""One JSON line per decision. Never a token, a secret or a query value."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

from smartgate.core.http import HttpRequest
from smartgate.policy.decision import Decision


class DecisionLog:
    def __init__(self, destination: str) -> None:
        self._stream: TextIO | None
        if destination == "off":
            self._stream = None
        elif destination == "stdout":
            self._stream = sys.stdout
        elif destination == "stderr":
            self._stream = sys.stderr
        else:
            self._stream = open(destination, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the server

    def write(self, entry: dict[str, Any]) -> None:
        """One line; also used by the response stage (``"stage": "response"`` entries)."""
        if self._stream is None:
            return
        self._stream.write(json.dumps(entry, separators=(",", ":")) + "\n")
        self._stream.flush()

    def record(self, http: HttpRequest, decision: Decision, latency_seconds: float, dry_run: bool = False) -> None:
        if self._stream is None:
            return
        context = decision.context
        entry = {
            "time": round(time.time(), 3),
            "request_id": http.request_id,
            "method": http.method,
            "resource_type": decision.resource_type,
            "interaction": decision.interaction,
            "outcome": "allow" if decision.allowed else ("error" if decision.http_status >= 500 else "deny"),
            "reason": decision.reason.code,
            "status": decision.http_status,
            "client_id": context.client_id if context else "",
            "subject": context.subject if context else "",
            "issuer": context.issuer if context else "",
            "patient": (context.patient or "") if context else "",
            "latency_ms": round(latency_seconds * 1000, 3),
        }
        if dry_run:
            entry["dry_run"] = True
        self.write(entry)
