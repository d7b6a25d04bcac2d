"""helm lint (Helm v4, in-process through helm-python-sdk) of a chart with each of its ci/*-values.yaml
files, strict (warnings fail) and against the chart's values.schema.json. Exits 1 on any error or warning.

Usage: python tools/chart_lint.py charts/smartgate
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml
from helm_python import lint

SEVERITY = {0: "unknown", 1: "info", 2: "warning", 3: "error"}
KUBE_VERSION = "v1.33.0"


def lint_chart(chart: Path) -> int:
    values_files = sorted((chart / "ci").glob("*-values.yaml"))
    if not values_files:
        print(f"{chart}: no ci/*-values.yaml to lint with", file=sys.stderr)
        return 1
    failed = 0
    for values_file in values_files:
        values = yaml.safe_load(values_file.read_text(encoding="utf-8")) or {}
        report = lint(str(chart), values, strict=True, namespace="smartgate", kube_version=KUBE_VERSION)
        problems = [m for m in report["messages"] if m["severity"] >= 2] + [
            {"severity": 3, "path": "", "error": error} for error in report["errors"]
        ]
        for message in report["messages"]:
            severity = SEVERITY.get(message["severity"], "?")
            print(f"{values_file.name}: [{severity}] {message['path']}: {message['error']}")
        status = "FAILED" if problems else "ok"
        print(f"{values_file.name}: helm lint --strict {status}")
        failed += bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(lint_chart(Path(sys.argv[1])))
