"""Decision-log and audit lines are written off the event loop: encoded by the caller, queued (bounded),
written in order by one writer thread. A slow stream never blocks a Check; what does not fit is dropped and
counted; ``close()`` writes out everything queued (the contract a config reload and shutdown rely on)."""

from __future__ import annotations

import io
import json
import sys
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from smartgate.pipeline.decision_log import JsonLines


def dropped(log: str = "decision") -> float:
    return REGISTRY.get_sample_value("smartgate_decision_log_dropped_total", {"log": log}) or 0.0


class BlockingStream(io.StringIO):
    """A stream whose writes wait until ``release`` is set: a stalled stdout pipe."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def write(self, text: str) -> int:
        self.entered.set()
        self.release.wait(10)
        return super().write(text)


def lines_of(text: str) -> list[dict[str, int]]:
    return [json.loads(line) for line in text.splitlines()]


def test_lines_are_written_in_order_and_flushed_on_close(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    lines = JsonLines(str(path))
    for number in range(2000):
        lines.write({"n": number})
    lines.close()
    assert lines_of(path.read_text(encoding="utf-8")) == [{"n": number} for number in range(2000)]


def test_a_line_is_written_soon_without_waiting_for_close(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    lines = JsonLines(str(path))
    try:
        lines.write({"n": 1})
        deadline = time.monotonic() + 5
        while not path.read_text(encoding="utf-8") and time.monotonic() < deadline:
            time.sleep(0.001)
        assert lines_of(path.read_text(encoding="utf-8")) == [{"n": 1}]
    finally:
        lines.close()


def test_a_stalled_stream_never_blocks_the_caller_and_a_full_queue_drops_and_counts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = BlockingStream()
    monkeypatch.setattr(sys, "stdout", stream)
    lines = JsonLines("stdout", capacity=4)
    before = dropped()
    lines.write({"n": 0})
    assert stream.entered.wait(5)  # the writer holds line 0 and is stuck in the stream
    started = time.monotonic()
    for number in range(1, 11):
        lines.write({"n": number})  # 1-4 fit the queue, 5-10 do not
    assert time.monotonic() - started < 1.0
    assert dropped() - before == 6
    stream.release.set()
    lines.close()
    assert lines_of(stream.getvalue()) == [{"n": number} for number in range(5)]


def test_close_gives_up_on_a_stream_stalled_past_its_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = BlockingStream()
    monkeypatch.setattr(sys, "stdout", stream)
    lines = JsonLines("stdout")
    lines.write({"n": 0})
    assert stream.entered.wait(5)
    started = time.monotonic()
    lines.close(timeout=0.1)
    assert time.monotonic() - started < 2.0
    stream.release.set()


def test_the_audit_log_counts_its_drops_under_its_own_label(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = BlockingStream()
    monkeypatch.setattr(sys, "stdout", stream)
    lines = JsonLines("stdout", name="audit", capacity=1)
    before = dropped("audit"), dropped("decision")
    lines.write({"n": 0})
    assert stream.entered.wait(5)
    lines.write({"n": 1})
    lines.write({"n": 2})
    assert (dropped("audit") - before[0], dropped("decision") - before[1]) == (1, 0)
    stream.release.set()
    lines.close()


def test_a_broken_stream_loses_its_lines_counted_and_the_writer_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError("reader gone")

    monkeypatch.setattr(sys, "stdout", Broken())
    lines = JsonLines("stdout")
    before = dropped()
    lines.write({"n": 0})
    lines.close()
    assert dropped() - before == 1
