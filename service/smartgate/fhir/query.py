"""Decode a query string or form body exactly once, the way a FHIR server does.

Strict: a bad percent escape, invalid UTF-8, a control character or a malformed
parameter name is an error, never a guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# code, then optional ':modifier' parts, then optional '.chain'.
_NAME = re.compile(r"^([A-Za-z_][A-Za-z0-9_\-]*)((?::[A-Za-z0-9_\-]+)*)((?:\.[A-Za-z0-9_\-:.]+)?)\Z")


class QueryError(ValueError):
    """The query or form body cannot be decoded unambiguously."""


@dataclass(frozen=True, slots=True)
class SearchParam:
    """One decoded ``name=value`` pair, with the name split into code, modifier and chain."""

    name: str
    code: str
    modifier: str | None
    chain: str | None
    value: str


def _unescape(raw: bytes) -> str:
    if _BAD_ESCAPE.search(raw):
        raise QueryError("invalid percent escape")
    decoded = _ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), raw.replace(b"+", b" "))
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise QueryError("not UTF-8") from exc
    if _CONTROL.search(text):
        raise QueryError("control character")
    return text


def _split_name(name: str) -> tuple[str, str | None, str | None]:
    match = _NAME.match(name)
    if match is None:
        raise QueryError(f"malformed parameter name {name!r}")
    code, modifiers, chain = match.groups()
    return code, (modifiers[1:] or None), (chain[1:] or None)


def parse_query(raw: bytes | str) -> tuple[SearchParam, ...]:
    """Decode ``a=1&b=2`` into SearchParams in order; empty pieces (``a=1&&b=2``) are skipped."""
    data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else raw
    params = []
    for piece in data.split(b"&"):
        if not piece:
            continue
        raw_name, _, raw_value = piece.partition(b"=")
        name = _unescape(raw_name)
        if not name:
            raise QueryError("empty parameter name")
        code, modifier, chain = _split_name(name)
        params.append(SearchParam(name, code, modifier, chain, _unescape(raw_value)))
    return tuple(params)
