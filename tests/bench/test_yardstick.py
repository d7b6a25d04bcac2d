"""The busy no-op yardstick's arithmetic (bench/report.py): where smartgate's figure falls on the curve of
no-op servers busy-waiting N µs per Check. Pure functions, no processes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import report  # a bench script, imported as the bench scripts import each other

pytestmark = pytest.mark.bench


def test_throughput_is_placed_on_the_time_per_request_line() -> None:
    curve = [(0.0, 2000.0), (100.0, 1000.0)]  # 500 µs per request, then 1000 µs
    assert report.equivalent_busy_us(curve, 1500.0, falling=True) == pytest.approx(100 / 3)


def test_latency_is_placed_on_its_own_line() -> None:
    assert report.equivalent_busy_us([(0.0, 600.0), (200.0, 1000.0)], 700.0, falling=False) == pytest.approx(50)


def test_as_good_as_the_no_op_reads_zero() -> None:
    assert report.equivalent_busy_us([(0.0, 2000.0), (100.0, 1000.0)], 2500.0, falling=True) == 0


def test_a_curve_that_noise_left_flat_or_upside_down_gives_no_figure() -> None:
    assert report.equivalent_busy_us([(0.0, 1000.0), (100.0, 1200.0)], 900.0, falling=True) is None
    assert report.equivalent_busy_us([(0.0, 1000.0)], 900.0, falling=True) is None


def test_the_target_row_reads_the_yardstick_for_smartgate() -> None:
    runs = [
        {"setup": setup, "workload": "search_cached", "load": "c16", "rps": rps, "p50": 1, "p90": 1, "p99": 1}
        for setup, rps in (("C-aio", 2000.0), ("C-busy50", 1600.0), ("C-busy100", 1000.0), ("D", 1500.0))
    ]
    rows = {target: (measured, met) for target, measured, met in report.targets({"runs": runs})}
    assert rows["the busy no-op matching D's throughput (16 connections): ≤ 50 µs"][1] is True


def test_every_c_setup_is_measured_once_on_the_reference_workload() -> None:
    assert all(report.is_generic(setup) for setup in ("A", "C-aio", "C-threaded", "C-busy100"))
    assert not any(report.is_generic(setup) for setup in ("D", "E", "D-uds", "F-enforce"))
