"""Reading smartgate's decision and audit logs from a test.

smartgate writes log lines from a writer thread (a bounded queue, so a slow stream never blocks a
Check): a line can land a few milliseconds after the response it belongs to. A test that reads the
log right after a request reads it once the file has stopped changing."""

from __future__ import annotations

import time
from pathlib import Path

QUIET_SECONDS = 0.05
TIMEOUT_SECONDS = 3.0


def settled_text(path: Path, quiet: float = QUIET_SECONDS, timeout: float = TIMEOUT_SECONDS) -> str:
    """The file's text once it has not changed for ``quiet`` seconds (or after ``timeout``)."""
    deadline = time.monotonic() + timeout
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    while time.monotonic() < deadline:
        time.sleep(quiet)
        again = path.read_text(encoding="utf-8") if path.exists() else ""
        if again == text and (not text or text.endswith("\n")):
            return text
        text = again
    return text
