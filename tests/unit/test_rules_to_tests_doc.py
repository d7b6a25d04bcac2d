"""docs/rules-to-tests.md names the tests that prove each rule; every name it gives must exist.

A reference is ``ALIAS::test_name`` or ``ALIAS::{test_a, test_b}``. Each issue's section defines
its aliases (a table, ``ALIAS = path`` or `` `ALIAS` = path``; ``…_x.py`` reuses the previous
path up to its last ``_``); an alias holds until a later section redefines it. An alias naming a
directory stands for every test file under it. Issue 3's section names tests without ``::``: those
names are checked to exist somewhere under tests/.
"""

from __future__ import annotations

import ast
import itertools
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "rules-to-tests.md"

_SECTION = re.compile(r"^## Issue ", re.M)
_TABLE_ALIAS = re.compile(r"\|\s*([A-Z][A-Z0-9]*)\s*\|\s*(tests/[\w/.]+)\s*(?=\|)")
_ASSIGNED_ALIAS = re.compile(
    r"`?\b([A-Z][A-Z0-9]*(?:/[A-Z][A-Z0-9]*)*)`?\s*=\s*(tests/[\w/.]+|…_[\w.]+|test_[\w.]+\.py)"
)
_REFERENCE = re.compile(r"\b([A-Z][A-Z0-9]*)::(\{[^}]*\}|test_\w+)")
_TEST_NAME = re.compile(r"\btest_\w+\b(?![./\w])")


@dataclass(frozen=True)
class Reference:
    alias: str
    name: str
    line: int


def functions_named_test_in(path: Path) -> frozenset[str]:
    """Names of the ``test_*`` functions (sync or async, at any depth) a module defines."""
    return _functions_named_test_in(path.resolve())


@cache
def _functions_named_test_in(path: Path) -> frozenset[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return frozenset(
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_")
    )


def modules_for(target: str) -> list[Path]:
    """The test module an alias names, or every test module under the directory it names."""
    path = REPO / target
    return sorted(path.rglob("test_*.py")) if path.is_dir() else [path]


def _resolve(alias_names: str, target: str, previous: str) -> list[tuple[str, str]]:
    """(alias, path) pairs for one definition; compound aliases (``A/B = dir``) map to the directory."""
    if target.startswith("…_"):
        target = previous.rpartition("_")[0] + target.removeprefix("…")
    elif target.startswith("test_"):
        target = previous.rpartition("/")[0] + "/" + target
    aliases = alias_names.split("/")
    if len(aliases) > 1:
        while not (REPO / target).is_dir():
            target = target.rpartition("/")[0]
    return [(alias, target) for alias in aliases]


def aliases_defined(section: str) -> list[tuple[str, str]]:
    found: list[tuple[int, str, str]] = [(m.start(), m[1], m[2]) for m in _TABLE_ALIAS.finditer(section)]
    found += [(m.start(), m[1], m[2]) for m in _ASSIGNED_ALIAS.finditer(section)]
    pairs: list[tuple[str, str]] = []
    previous = ""
    for _, alias_names, target in sorted(found):
        resolved = _resolve(alias_names, target, previous)
        pairs += resolved
        previous = resolved[-1][1] if target.startswith("tests/") else previous  # "…_x.py" reuses the last full path
    return pairs


def references_with_files(text: str) -> list[tuple[Reference, list[Path]]]:
    """Every ``ALIAS::name`` in ``text`` with the files its alias stands for (empty when undefined)."""
    aliases: dict[str, str] = {}
    found: list[tuple[Reference, list[Path]]] = []
    starts = [0, *(m.start() for m in _SECTION.finditer(text)), len(text)]
    for start, end in itertools.pairwise(starts):
        section = text[start:end]
        aliases.update(aliases_defined(section))
        for match in _REFERENCE.finditer(section):
            line = text.count("\n", 0, start + match.start()) + 1
            listed = re.sub(r"\([^)]*\)", "", match[2].strip("{}"))  # "(p jku, x5u)": parametrization notes
            names = [name.strip() for name in listed.split(",")]
            target = aliases.get(match[1])
            files = modules_for(target) if target is not None else []
            found += [(Reference(match[1], name.split()[0], line), files) for name in names if name]
    return found


def unknown_references(text: str) -> list[str]:
    missing = []
    for reference, files in references_with_files(text):
        if reference.alias == "ALIAS":  # the header's own example
            continue
        if not any(file.exists() and reference.name in functions_named_test_in(file) for file in files):
            missing.append(f"line {reference.line}: {reference.alias}::{reference.name}")
    return missing


def unknown_test_names(text: str) -> list[str]:
    """Names shaped like a test (``test_…``, not a file name) that no test module under tests/ defines."""
    defined = frozenset().union(
        *(
            functions_named_test_in(path)
            for path in (REPO / "tests").rglob("test_*.py")
            if "node_modules" not in path.parts
        )
    )
    return sorted({name for name in _TEST_NAME.findall(text) if name not in defined and name != "test_name"})


def test_every_alias_reference_in_the_doc_names_a_test_that_exists() -> None:
    assert unknown_references(DOC.read_text(encoding="utf-8")) == []


def test_every_test_name_in_the_doc_exists_somewhere_under_tests() -> None:
    assert unknown_test_names(DOC.read_text(encoding="utf-8")) == []


def test_the_doc_has_references_for_every_issue_section() -> None:
    """Guards the parser: if the doc's format drifts, the checks above must not pass on nothing."""
    text = DOC.read_text(encoding="utf-8")
    assert len(references_with_files(text)) > 400
    assert len(_SECTION.findall(text)) >= 6


@pytest.mark.parametrize(
    ("made_up", "reported"),
    [
        ("V::test_this_test_was_never_written", "V::test_this_test_was_never_written"),
        ("CM::{test_the_service_exposes_only_envoy, test_nor_was_this_one (p)}", "CM::test_nor_was_this_one"),
        ("IA::test_no_token_is_denied_with_401", "IA::test_no_token_is_denied_with_401"),  # exists, but in CR's file
    ],
)
def test_a_made_up_or_misplaced_name_is_reported(made_up: str, reported: str) -> None:
    text = DOC.read_text(encoding="utf-8") + f"\n- invented: {made_up}\n"
    assert any(entry.endswith(reported) for entry in unknown_references(text))
