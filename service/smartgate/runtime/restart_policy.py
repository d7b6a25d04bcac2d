"""When the supervisor restarts a dead worker, and when it gives up.

A worker that dies soon after it started is crash-looping (a port in use, an unreadable
certificate): restarting it at once, forever, only burns CPU and hides the fault. So each
quick crash doubles the wait before the next start, up to a cap, and after
``max_quick_crashes`` quick crashes in a row the supervisor stops everything and exits
non-zero, leaving the next attempt to Kubernetes (whose own back-off then shows as
CrashLoopBackOff). A worker that stayed up for ``stable_after_seconds`` was healthy: its next
crash starts the count again.

Pure bookkeeping: the caller passes the time in, so the schedule is tested without sleeping.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FIRST_RESTART_DELAY_SECONDS = 1.0
MAX_RESTART_DELAY_SECONDS = 30.0
STABLE_AFTER_SECONDS = 60.0  # up this long, a worker's next crash is not part of a crash loop
MAX_QUICK_CRASHES = 5  # quick crashes in a row (of one worker) before the supervisor gives up


@dataclass(frozen=True)
class RestartPolicy:
    first_delay_seconds: float = FIRST_RESTART_DELAY_SECONDS
    max_delay_seconds: float = MAX_RESTART_DELAY_SECONDS
    stable_after_seconds: float = STABLE_AFTER_SECONDS
    max_quick_crashes: int = MAX_QUICK_CRASHES

    def delay(self, quick_crashes: int) -> float:
        """The wait before the restart that follows the ``quick_crashes``-th quick crash in a row."""
        return min(self.first_delay_seconds * 2.0 ** (quick_crashes - 1), self.max_delay_seconds)


@dataclass
class WorkerRestarts:
    """One worker slot's crash history under a policy."""

    policy: RestartPolicy = field(default_factory=RestartPolicy)
    started_at: float = 0.0
    quick_crashes: int = 0

    def started(self, now: float) -> None:
        self.started_at = now

    def crashed(self, now: float) -> float | None:
        """The seconds to wait before starting the worker again, or None: give up."""
        if now - self.started_at >= self.policy.stable_after_seconds:
            self.quick_crashes = 0
        self.quick_crashes += 1
        if self.quick_crashes >= self.policy.max_quick_crashes:
            return None
        return self.policy.delay(self.quick_crashes)
