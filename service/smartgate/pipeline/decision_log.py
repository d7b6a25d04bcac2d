"""One JSON line per decision. Never a token, a secret or a query value.

Lines are encoded on the caller's thread (orjson, about a microsecond) and written by a writer
thread from a bounded queue, so a slow stdout pipe or disk never stalls a Check: when the queue is
full the line is dropped and counted (``smartgate_decision_log_dropped_total``). While traffic
flows the writer wakes every ``LINGER_SECONDS`` and writes what gathered in one call (waking it
per line would cost each Check a GIL hand-off); a quiet writer is woken by each line. ``close()``
(a reload's replaced logs, shutdown) writes out everything queued before it returns.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import logging
import sys
import threading
import time
from typing import Any, TextIO

import orjson

from smartgate.core.http import HttpRequest
from smartgate.policy.decision import Decision
from smartgate.telemetry import metrics

log = logging.getLogger("smartgate.decision_log")

QUEUE_LINES = 10_000  # about 3 s of decisions at full speed per worker; a few MB at most
LINGER_SECONDS = 0.002  # how long the writer lets lines gather before one write + flush, when busy
BUSY_BATCH_LINES = 8  # a batch this large means traffic is flowing: linger before the next one
CLOSE_TIMEOUT_SECONDS = 5.0  # how long close() waits for a stalled stream before giving up on it


class JsonLines:
    """Where JSON lines go: ``off``, ``stdout``, ``stderr`` or an absolute file path.

    Shared by the decision log and the audit-event log so that both open, queue, write and close
    a destination the same way. Only a file opened here is closed here; stdout and stderr belong
    to the process. The writer thread starts with the first line.
    """

    def __init__(self, destination: str, name: str = "decision", capacity: int = QUEUE_LINES) -> None:
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
        self._name = name
        self._capacity = capacity
        self._dropped = metrics.LOG_LINES_DROPPED[name]
        self._pending: collections.deque[bytes] = collections.deque()  # append and popleft are atomic
        self._wake = threading.Event()
        self._idle = False  # the writer is waiting for a line (set by it, cleared by the line that wakes it)
        self._closing = False
        self._writer: threading.Thread | None = None
        self._starting = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._stream is not None

    def write(self, entry: dict[str, Any]) -> None:
        """Queue one compact JSON line; never waits. A full queue drops the line and counts it.

        After ``close()`` a write raises ``ValueError``: a Check still running on a replaced pipeline
        fails, and so is denied by Envoy, rather than being allowed with its line silently lost.
        """
        if self._stream is None:
            return
        if self._closing:
            raise ValueError(f"the {self._name} log is closed")
        if self._writer is None:
            self._start_writer()
        if len(self._pending) >= self._capacity:
            self._dropped.inc()
            return
        self._pending.append(orjson.dumps(entry))
        if self._idle:
            self._idle = False
            self._wake.set()

    def _start_writer(self) -> None:
        with self._starting:
            if self._writer is None:
                writer = threading.Thread(target=self._drain, name=f"smartgate-{self._name}-log", daemon=True)
                writer.start()
                atexit.register(self.close)  # a process that never calls close() still writes what it queued
                self._writer = writer

    def _drain(self) -> None:
        """The writer thread: every queued line, in order. After a large batch it lets the next one gather
        for ``LINGER_SECONDS`` (one wake-up per batch, not per line, while traffic flows); otherwise it waits
        idle, and the next line wakes it and is written at once (a quiet log stays current to the request)."""
        stream = self._stream
        if stream is None:  # never: the writer starts only for a destination
            return
        while self._pending or not self._closing:
            if self._pending:
                batch = [self._pending.popleft() for _ in range(len(self._pending))]
                self._write_batch(stream, batch)
                if len(batch) >= BUSY_BATCH_LINES and not self._closing:
                    time.sleep(LINGER_SECONDS)  # the GIL is free meanwhile
                continue
            self._idle = True
            if not self._pending and not self._closing:  # a line queued before it saw the flag
                self._wake.wait()
            self._wake.clear()
            self._idle = False
        if self._owns_stream:
            stream.close()

    def _write_batch(self, stream: TextIO, batch: list[bytes]) -> None:
        try:
            stream.write((b"\n".join(batch) + b"\n").decode("utf-8"))
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: the lines are lost, say so and count them
            log.exception("cannot write the %s log; %d lines lost", self._name, len(batch))
            self._dropped.inc(len(batch))

    def close(self, timeout: float = CLOSE_TIMEOUT_SECONDS) -> None:
        """Write out every queued line, then close the file this object opened (stdout, stderr and
        ``off`` are left open). Waits at most ``timeout`` for a stalled stream."""
        if self._closing:
            return
        self._closing = True
        with self._starting:
            writer = self._writer
        if writer is None:
            if self._owns_stream and self._stream is not None:
                self._stream.close()
            return
        with contextlib.suppress(ValueError):
            atexit.unregister(self.close)
        self._wake.set()
        writer.join(timeout)
        if writer.is_alive():
            log.error(
                "the %s log's stream is stalled; closed without writing its last %d lines",
                self._name,
                len(self._pending),
            )


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
