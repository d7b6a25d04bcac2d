"""One JSON line per decision. Never a token, a secret or a query value."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

from smartgate.core.http import HttpRequest
from smartgate.policy.decision import Decision


class JsonLines:
    """Where JSON lines go: ``off``, ``stdout``, ``stderr`` or an absolute file path.

    Shared by the decision log and the audit-event log so that both open, write and close a
    destination the same way. Only a file opened here is closed here; stdout and stderr belong
    to the process.
    """

    def __init__(self, destination: str) -> None:
        self._owns_stream = destination not in ("off", "stdout", "stderr")
        self._stream: TextIO | None
        if destination == "off":
            self._stream = None
        elif destination == "stdout":
            self._stream = sys.stdout
        elif destination == "stderr":
            self._stream = sys.stderr
        else:
            self._stream = open(destination, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()

    @property
    def enabled(self) -> bool:
        return self._stream is not None

    def write(self, entry: dict[str, Any]) -> None:
        """One compact JSON line, flushed at once so that a crash loses no decision.

        After ``close()`` a write raises ``ValueError`` (a closed file): a Check still running on
        a replaced pipeline fails, and so is denied by Envoy, rather than being allowed unlogged.
        """
        if self._stream is None:
            return
        self._stream.write(json.dumps(entry, separators=(",", ":")) + "\n")
        self._stream.flush()

    def close(self) -> None:
        """Close the file this object opened; stdout, stderr and ``off`` are left alone."""
        if self._owns_stream and self._stream is not None:
            self._stream.close()


class DecisionLog:
    def __init__(self, destination: str) -> None:
        self._lines = JsonLines(destination)

    def write(self, entry: dict[str, Any]) -> None:
        """One line; also used by the response stage (``"stage": "response"`` entries)."""
        self._lines.write(entry)

    def close(self) -> None:
        """Called when a config reload has replaced this log and the grace period is over."""
        self._lines.close()

    def record(self, http: HttpRequest, decision: Decision, latency_seconds: float, dry_run: bool = False) -> None:
        if not self._lines.enabled:
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
        if decision.query_parameters_to_set:  # the parameter names only: never a query value
            entry["narrowed_by"] = [key for key, _ in decision.query_parameters_to_set]
        if dry_run:
            entry["dry_run"] = True
        self.write(entry)
