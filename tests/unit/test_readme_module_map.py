"""README's module map is the tree: every module under service/smartgate is named in it, under its
package, and it names no module that does not exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "service" / "smartgate"


def _section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return text[text.index("## The request path") : text.index("## Rules")]


def mapped_modules(section: str) -> set[str]:
    """``package/module.py`` for every row of the table (a row with an empty package cell continues
    the package above; the ``(top)`` package is the package root)."""
    mapped: set[str] = set()
    package = ""
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] in ("package", "---"):
            continue
        if cells[0]:
            package = "" if cells[0] == "(top)" else cells[0].strip("`").rstrip("/") + "/"
        for name in re.findall(r"`([a-z_]+\.py|[a-z_]+/)`", cells[1]):
            mapped.add(package + name)
    return mapped


def tree_modules() -> set[str]:
    found: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith("dev/demo/"):
            found.add("dev/demo/")  # the demo is mapped as one folder
        elif not (relative.endswith("__init__.py") and relative != "policy/__init__.py"):
            found.add(relative)
    found.update(f"{path.parent.relative_to(PACKAGE).as_posix()}/{path.name}/" for path in PACKAGE.glob("*/data"))
    return found


def test_every_module_of_the_tree_is_in_the_readme_module_map() -> None:
    assert tree_modules() - mapped_modules(_section()) == set()


def test_the_readme_module_map_names_no_module_that_does_not_exist() -> None:
    assert mapped_modules(_section()) - tree_modules() == set()


def test_the_reader_sees_a_missing_row() -> None:
    section = _section().replace("| | `bootstrap.py` |", "| | |")
    assert "envoy_glue/bootstrap.py" in tree_modules() - mapped_modules(section)
