"""The chart README documents every value the schema accepts, so no value is a secret of the templates."""

from __future__ import annotations

import json
import re
from typing import Any

from .rendering import CHART

VALUE_CELL = re.compile(r"^\| ([^|]*`[^|]*) \|", re.MULTILINE)


def _schema_values(node: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of every value in the schema (``[]`` dropped), leaves and objects alike."""
    names: list[str] = []
    properties = node.get("properties")
    if node.get("type") == "array" and isinstance(node.get("items"), dict):
        properties = node["items"].get("properties")
    for key, child in (properties or {}).items():
        name = f"{prefix}.{key}" if prefix else key
        names.append(name)
        names.extend(_schema_values(child, name))
    return names


def _documented_values(readme: str) -> set[str]:
    """First-column names of the Values table; `` `a.b` / `.c` `` shorthand expands to ``a.c``."""
    documented: set[str] = set()
    for cell in VALUE_CELL.findall(readme):
        first = ""
        for name in re.findall(r"`([^`]+)`", cell):
            if name.startswith(".") and first:
                name = first.rsplit(".", 1)[0] + name
            elif not first:
                first = name
            documented.add(name.replace("[]", ""))
    return documented


def _undocumented(schema: dict[str, Any], readme: str) -> list[str]:
    documented = _documented_values(readme)

    def is_documented(name: str) -> bool:
        parent = name.rsplit(".", 1)[0]
        return name in documented or parent in documented or any(doc.startswith(name + ".") for doc in documented)

    return [name for name in _schema_values(schema) if not is_documented(name)]


def test_every_value_in_the_schema_is_in_the_chart_readme() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    readme = (CHART / "README.md").read_text()
    assert _undocumented(schema, readme) == []


def test_a_value_missing_from_the_readme_is_found() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    schema["properties"]["tokens"]["properties"]["newKnob"] = {"type": "integer"}
    readme = (CHART / "README.md").read_text()
    assert _undocumented(schema, readme) == ["tokens.newKnob"]
