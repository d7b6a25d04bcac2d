"""`make help` documents every target the Makefile declares, so a new target cannot be added without its line."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def declared_targets() -> list[str]:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    phony = re.search(r"^\.PHONY:(.*)$", makefile, re.MULTILINE)
    assert phony is not None
    return phony.group(1).split()


def test_make_help_prints_a_documentation_line_for_every_phony_target() -> None:
    make = shutil.which("make")
    assert make is not None, "the Makefile is the developer workflow; make must be installed"

    result = subprocess.run(
        [make, "--no-print-directory", "-s", "help"], cwd=REPO, capture_output=True, text=True, timeout=30, check=True
    )

    documented = {
        match.group(1): match.group(2) for match in re.finditer(r"^([a-z0-9-]+): (\S.*)$", result.stdout, re.MULTILINE)
    }
    undocumented = [target for target in declared_targets() if target not in documented]
    assert not undocumented, f"targets without a `## name: doc` line: {undocumented}"
