"""The bounded coverage-guided pass CI runs: atheris over the Check path for a fixed number of
inputs with a fixed seed, starting from the committed corpus. Any crash or broken invariant fails it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.fuzz

REPO = Path(__file__).resolve().parents[2]
RUNS = 40_000


def test_a_bounded_fuzz_pass_finds_nothing(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "fuzz" / "fuzz_check_request.py"),
            f"-runs={RUNS}",
            "-seed=1",
            "-max_total_time=150",
            f"-artifact_prefix={tmp_path}/",
            "-print_final_stats=1",
            str(work),
            str(REPO / "fuzz" / "corpus"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    output = result.stderr + result.stdout
    crashes = sorted(path.name for path in tmp_path.iterdir() if path.name.startswith(("crash-", "timeout-", "oom-")))
    assert result.returncode == 0 and not crashes, output[-4000:]
    done = re.search(r"#(\d+)\s+DONE\s+cov: (\d+) ft: (\d+) corp: (\d+)", output)
    assert done is not None, output[-2000:]
    inputs, coverage, features, corpus = (int(value) for value in done.groups())
    print(f"\nbounded fuzz pass: {inputs} inputs, cov {coverage}, ft {features}, corpus {corpus}")
    assert inputs >= RUNS  # it ran the whole pass (initial corpus + mutations), not an early exit
