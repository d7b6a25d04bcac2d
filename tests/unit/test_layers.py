"""The import rules of pyproject.toml's import-linter contracts, checked once more by really importing.

import-linter reads the source; these tests run the interpreter. Each starts a fresh Python in which the
forbidden packages cannot be imported at all, so an import the static graph misses (one built with
``importlib``, say) still fails here. The lists come from the contracts themselves, so the rule is written once.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import smartgate

REPO = Path(__file__).resolve().parents[2]
PACKAGE_DIR = Path(smartgate.__file__).resolve().parent

# Run in a fresh interpreter: argv[1] is the comma-separated top-level packages to refuse, the rest are the
# modules to import. Prints one line per module that fails, and exits 1 if any did.
REFUSING_IMPORTER = """
import importlib
import importlib.abc
import sys

refused = frozenset(sys.argv[1].split(","))


class RefuseForbidden(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in refused:
            raise ImportError(f"import of {name} refused")
        return None


already_loaded = sorted(name for name in sys.modules if name.partition(".")[0] in refused)
if already_loaded:
    print(f"loaded before any smartgate module: {already_loaded}")
    sys.exit(1)
sys.meta_path.insert(0, RefuseForbidden())
failed = False
for module in sys.argv[2:]:
    try:
        importlib.import_module(module)
    except Exception as exc:
        failed = True
        print(f"{module}: {type(exc).__name__}: {exc}")
sys.exit(1 if failed else 0)
"""


def contract(contract_id: str) -> dict[str, Any]:
    """One import-linter contract from pyproject.toml, by its id."""
    with (REPO / "pyproject.toml").open("rb") as file:
        contracts: list[dict[str, Any]] = tomllib.load(file)["tool"]["importlinter"]["contracts"]
    return next(entry for entry in contracts if entry["id"] == contract_id)


def modules_under(package: str) -> list[str]:
    """Every module of a smartgate subpackage, found from the files so none is skipped by a failed import."""
    relative = package.removeprefix("smartgate.").replace(".", "/")
    names = []
    for path in sorted((PACKAGE_DIR / relative).rglob("*.py")):
        parts = path.relative_to(PACKAGE_DIR).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(("smartgate", *parts)))
    return names


def import_refusing(refused: list[str], modules: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", REFUSING_IMPORTER, ",".join(refused), *modules],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_every_module_of_core_fhir_and_policy_imports_without_grpc_envoy_httpx_metrics_or_yaml() -> None:
    pure = contract("pure-core")
    modules = [module for package in pure["source_modules"] for module in modules_under(package)]
    assert "smartgate.policy" in modules and "smartgate.core.reasons" in modules

    result = import_refusing(pure["forbidden_modules"], modules)

    assert result.returncode == 0, result.stdout + result.stderr


def test_the_refusing_importer_does_refuse() -> None:
    """Without this, a finder that refused nothing would pass the test above."""
    result = import_refusing(["yaml"], ["smartgate.core.reasons", "yaml"])

    assert result.returncode == 1
    assert result.stdout.strip() == "yaml: ImportError: import of yaml refused"


def test_the_supervisor_imports_no_metrics_module() -> None:
    forbidden = contract("supervisor-no-metrics")["forbidden_modules"]
    assert forbidden == ["smartgate.telemetry.metrics"]
    script = (
        "import sys, smartgate.runtime.supervisor\n"
        "loaded = [name for name in sys.argv[1:] if name in sys.modules]\n"
        "sys.exit(f'the supervisor loaded {loaded}' if loaded else 0)\n"
    )

    result = subprocess.run(
        [sys.executable, "-c", script, *forbidden], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )

    assert result.returncode == 0, result.stderr
