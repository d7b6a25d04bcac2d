"""The patch readers have their own module because they answer one narrow question, testable alone:
which top-level elements does this patch touch?

The write rule then refuses a patch that touches a compartment, constrained or structural
element. Both readers fail closed: "" stands for the whole resource (which touches everything),
and anything they cannot read is ``body_invalid``.

- JSON Patch (RFC 6902): each ``path`` and ``from`` is an RFC 6901 pointer, read by its first
  token. A non-empty pointer must start with "/": ``subject/reference`` is refused, not read as
  touching ``reference`` (a lenient server might apply it as ``/subject/reference``).
- FHIRPath Patch: an allowlist, not a FHIRPath parser. The first step after the resource type
  must be a plain element name, optionally indexed; a function there (``where``, ``select``,
  ``descendants``...), whitespace, a comment or a delimited name would hide the element really
  reached, and ``%resource`` / ``%context`` can jump back to the root from anywhere, so any
  ``%`` is refused. A full parser would accept paths whose target cannot be known statically.
"""

from __future__ import annotations

import re
from typing import Any

from smartgate.core.reasons import Reason
from smartgate.policy.base import DenyError

# The first step after the type of a FHIRPath Patch path: a plain element name (see the module docstring).
_FHIRPATH_HEAD = re.compile(r"([A-Za-z][A-Za-z0-9_]*)(?:\[[0-9]+\])?(?:\..*)?", re.DOTALL)


def json_patch_elements(document: Any) -> set[str]:
    """The top-level elements a JSON Patch document touches, through ``path`` or ``from``."""
    if not isinstance(document, list) or not document:
        raise DenyError(Reason.BODY_INVALID, "a JSON Patch is a non-empty array of operations")
    touched: set[str] = set()
    for operation in document:
        if not isinstance(operation, dict) or not isinstance(operation.get("path"), str):
            raise DenyError(Reason.BODY_INVALID, "a JSON Patch operation needs a path")
        if operation.get("op") not in ("add", "remove", "replace", "move", "copy", "test"):
            raise DenyError(Reason.BODY_INVALID, "unknown JSON Patch operation")
        for key in ("path", "from"):
            pointer = operation.get(key)
            if isinstance(pointer, str):
                touched.add(_pointer_head(pointer))
    return touched


def _pointer_head(pointer: str) -> str:
    """The top-level element an RFC 6901 pointer reaches ("" for the whole document). A non-empty pointer
    must start with "/": ``subject/reference`` is no pointer, and a lenient server might read it as
    ``/subject/reference``, so it is refused rather than read as touching ``reference``."""
    if not pointer:
        return ""
    if not pointer.startswith("/"):
        raise DenyError(Reason.BODY_INVALID, "a JSON Patch path or from must be a JSON Pointer starting with /")
    return pointer.split("/")[1].replace("~1", "/").replace("~0", "~")


def fhirpath_patch_elements(document: dict[str, Any], resource_type: str) -> set[str]:
    """The top-level elements a FHIRPath Patch ``Parameters`` resource touches (an add at the root names its own)."""
    touched: set[str] = set()
    for operation in document.get("parameter") or []:
        if not isinstance(operation, dict):
            raise DenyError(Reason.BODY_INVALID, "a FHIRPath Patch operation must be a parameter")
        parts = {part.get("name"): part for part in (operation.get("part") or []) if isinstance(part, dict)}
        path = parts.get("path", {}).get("valueString")
        if operation.get("name") != "operation" or not isinstance(path, str):
            raise DenyError(Reason.BODY_INVALID, "a FHIRPath Patch operation needs a path")
        if "%" in path:
            raise DenyError(Reason.BODY_INVALID, "a FHIRPath Patch path may not use environment variables")
        type_name, dot, rest = path.partition(".")
        if type_name != resource_type:
            raise DenyError(Reason.BODY_INVALID, "a FHIRPath Patch path must start with the resource type")
        head = _FHIRPATH_HEAD.fullmatch(rest) if dot else None
        if dot and head is None:
            raise DenyError(Reason.BODY_INVALID, "a FHIRPath Patch path must name an element after the resource type")
        element = head.group(1) if head is not None else ""
        name = parts.get("name", {}).get("valueString")
        if element:
            touched.add(element)
        elif isinstance(name, str) and name:
            touched.add(name)  # an add/insert at the root names the element it creates
        else:
            touched.add("")
    if not touched:
        raise DenyError(Reason.BODY_INVALID, "the FHIRPath Patch has no operations")
    return touched
