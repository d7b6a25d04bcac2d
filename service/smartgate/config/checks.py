"""The reader the config model is declared for: per-field checks, and one builder driven by the dataclasses.

Each config dataclass field names its check in ``field(metadata=check(...))``. ``build`` walks
``dataclasses.fields`` of the type, so the allowed keys and every default are written once, on the type.
Errors name the dotted key (``issuers[0].algorithms[1]``). Nothing here reads a file or imports YAML:
the policy imports the model, and with it this module.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import MISSING, Field, fields
from typing import TYPE_CHECKING, Any, TypeVar, get_args
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    M = TypeVar("M", bound=DataclassInstance)

Check = Callable[[str, Any], Any]
"""Validate one raw value found at a dotted key; return the typed value or raise ConfigError."""

_CHECK = "check"
_PARSER_STEP = "parser step"
_HEADER_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*\Z")


class ConfigError(ValueError):
    """A configuration value is missing or wrong; ``key`` is its dotted path."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


def check(validate: Check) -> Mapping[str, Any]:
    """Field metadata: the key is read from the config file and validated by ``validate``."""
    return {_CHECK: validate}


def parser_step() -> Mapping[str, Any]:
    """Field metadata: the key is read from the config file by a hand-written step in ``parse``
    (a side effect or a rule across fields); ``build`` refuses to run without its value."""
    return {_PARSER_STEP: True}


def _is_key(item: Field[Any]) -> bool:
    return _CHECK in item.metadata or _PARSER_STEP in item.metadata


def _has_default(item: Field[Any]) -> bool:
    return item.default is not MISSING or item.default_factory is not MISSING


def _default(item: Field[Any]) -> Any:
    if item.default_factory is not MISSING:
        return item.default_factory()
    return item.default


class Section:
    """A mapping being read as ``model``: it knows its dotted path and refuses keys the model does not declare."""

    def __init__(self, data: Any, path: str, model: type[DataclassInstance], extra_keys: Collection[str] = ()) -> None:
        if not isinstance(data, dict):
            raise ConfigError(path or "(root)", "must be a mapping")
        self.data: dict[str, Any] = data
        self.path = path
        self.fields = {item.name: item for item in fields(model) if _is_key(item)}
        for name in data:
            if name not in self.fields and name not in extra_keys:
                raise ConfigError(self.key(str(name)), "unknown key")

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def has(self, name: str) -> bool:
        return self.data.get(name) is not None

    def value(self, name: str, defaults: Mapping[str, Any] | None = None) -> Any:
        """The checked value of a model field, else ``defaults[name]``, else the field's own default."""
        item = self.fields[name]
        if self.has(name):
            return item.metadata[_CHECK](self.key(name), self.data[name])
        if defaults is not None and name in defaults:
            return defaults[name]
        if not _has_default(item):
            raise ConfigError(self.key(name), "is required")
        return _default(item)

    def other(self, name: str, validate: Callable[[str, Any], Any], default: Any) -> Any:
        """A key the parser reads itself (one of ``extra_keys``, not a field of the model)."""
        return validate(self.key(name), self.data[name]) if self.has(name) else default


def build(model: type[M], section: Section, defaults: Mapping[str, Any] | None = None, **values: Any) -> M:
    """``model`` from ``section``: every checked field is read, ``values`` are set as given."""
    for item in fields(model):
        if item.name in values:
            continue
        if _PARSER_STEP in item.metadata:
            raise TypeError(f"{model.__name__}.{item.name} is read by a parser step: pass its value")
        if _CHECK in item.metadata:
            values[item.name] = section.value(item.name, defaults)
    return model(**values)


def nested(model: type[M]) -> Check:
    """Check for a sub-section read as ``model``; an absent or empty section gets every default."""
    return lambda key, value: build(model, Section(value or {}, key, model))


def each(model: type[M]) -> Check:
    """Check for a list of sub-sections, each read as ``model``."""

    def read(key: str, value: Any) -> tuple[M, ...]:
        if not isinstance(value, list):
            raise ConfigError(key, "must be a list")
        return tuple(build(model, Section(item, f"{key}[{i}]", model)) for i, item in enumerate(value))

    return read


def one_of(choices: Any, reason: str = "") -> Check:
    """Check for a string that is one of the ``Literal`` type ``choices``; ``reason`` may use ``{value!r}``."""
    allowed: tuple[str, ...] = get_args(choices)
    default_reason = f"must be {', '.join(allowed[:-1])} or {allowed[-1]}"

    def read(key: str, value: Any) -> str:
        text = string(key, value)
        if text not in allowed:
            raise ConfigError(key, (reason or default_reason).format(value=text))
        return text

    return read


def string(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(key, "must be a non-empty string")
    return value


def http_url(key: str, value: Any) -> str:
    text = string(key, value)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(key, f"must be an absolute http(s) URL, got {text!r}")
    if parts.query or parts.fragment:
        raise ConfigError(key, "must not have a query or fragment")
    return text.rstrip("/")


def address(key: str, value: Any) -> str:
    text = string(key, value)
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(key, f"must be HOST:PORT, got {text!r}")
    return text


UNIX_PREFIX = "unix:"
# sun_path holds 108 bytes with its NUL; worker i > 0 listens on PATH.i, so leave room for the suffix.
MAX_UNIX_SOCKET_PATH = 100


def address_or_unix_socket(key: str, value: Any) -> str:
    """HOST:PORT, or ``unix:/absolute/path`` for a Unix domain socket (Envoy in the same pod)."""
    text = string(key, value)
    if not text.startswith(UNIX_PREFIX):
        return address(key, text)
    path = text.removeprefix(UNIX_PREFIX)
    if not path.startswith("/") or path.startswith("//"):
        raise ConfigError(key, f"must be unix:/absolute/path, got {text!r}")
    if len(path.encode()) > MAX_UNIX_SOCKET_PATH:
        raise ConfigError(key, f"a Unix socket path may hold at most {MAX_UNIX_SOCKET_PATH} bytes")
    return text


def positive_number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(key, "must be a positive number")
    return float(value)


def non_negative_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(key, "must be a non-negative integer")
    return value


def positive_int(key: str, value: Any) -> int:
    if non_negative_int(key, value) == 0:
        raise ConfigError(key, "must be a positive integer")
    return int(value)


def boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, "must be true or false")
    return value


def string_list(key: str, value: Any) -> tuple[str, ...]:
    """A non-empty list of strings; a single string stands for a list of one."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ConfigError(key, "must be a non-empty list of strings")
    return tuple(string(f"{key}[{i}]", item) for i, item in enumerate(value))


def header_name(key: str, value: Any) -> str:
    name = string(key, value).lower()
    if not _HEADER_NAME.match(name):
        raise ConfigError(key, f"{value!r} is not a valid header name")
    return name


def header_map(key: str, value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ConfigError(key, "must be a mapping of strings")
    return {header_name(f"{key}.{k}", k): string(f"{key}.{k}", v) for k, v in value.items()}


def mapping(key: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(key, "must be a mapping")
    return value
