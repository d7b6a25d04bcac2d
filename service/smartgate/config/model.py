"""Configuration: load the YAML file, validate every key, and fail with the key and the reason.

Nothing in the rest of the service reads raw YAML: it receives the frozen
dataclasses built here, with every default already applied.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml

from smartgate.config.profiles import PROFILE_NAMES, claim_names_for
from smartgate.config.profiles import ClaimNames as ClaimNames
from smartgate.fhir.definitions import RESOURCE_TYPES

SAFE_ALGORITHMS: tuple[str, ...] = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
)
DEFAULT_TOKEN_TYPES: tuple[str, ...] = ("at+jwt", "application/at+jwt", "jwt")
# Types outside the R4 Patient compartment that routinely carry patient data: a patient/
# scope does not open them unless the operator changes ``patient_closed_types``.
DEFAULT_PATIENT_CLOSED_TYPES: frozenset[str] = frozenset({
    "Binary", "Bundle", "Contract", "Device", "GuidanceResponse", "Linkage", "MessageHeader", "Parameters",
    "Subscription", "Task",
})
# Header names smartgate must never set or strip.
_RESERVED_HEADERS = frozenset({
    "authorization", "host", "content-length", "content-type", "transfer-encoding", "connection", "cookie",
    "x-request-id", "x-forwarded-for", "x-envoy-original-path",
})
_HEADER_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*\Z")
_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class ConfigError(ValueError):
    """A configuration value is missing or wrong; ``key`` is its dotted path."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


@dataclass(frozen=True)
class ListenConfig:
    grpc: str = "127.0.0.1:9191"
    http: str = "127.0.0.1:9190"


@dataclass(frozen=True)
class LookupConfig:
    timeout_seconds: float = 2.0
    cache_ttl_seconds: float = 30.0
    cache_size: int = 10_000
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FhirConfig:
    base_url: str
    upstream_url: str
    lookup: LookupConfig = field(default_factory=LookupConfig)

    @property
    def base_path(self) -> str:
        """The path prefix Envoy routes to the FHIR server, without a trailing slash."""
        return urlsplit(self.base_url).path.rstrip("/")


@dataclass(frozen=True)
class IntrospectionConfig:
    """RFC 7662 introspection of opaque tokens for one issuer."""

    endpoint: str
    client_id: str
    client_secret: str = field(repr=False, default="")
    auth_method: str = "client_secret_basic"
    cache_max_ttl_seconds: float = 60.0
    timeout_seconds: float = 2.0


@dataclass(frozen=True)
class IssuerConfig:
    issuer: str
    audiences: tuple[str, ...]
    jwks_uri: str | None = None
    jwks_file: str | None = None
    algorithms: tuple[str, ...] = SAFE_ALGORITHMS
    token_types: tuple[str, ...] = DEFAULT_TOKEN_TYPES
    allow_missing_token_type: bool = True
    claims: ClaimNames = field(default_factory=ClaimNames)
    profile: str = "generic"
    dotted_scopes: bool = False
    introspection: IntrospectionConfig | None = None


@dataclass(frozen=True)
class SmartConfigurationSettings:
    issuer: str
    capabilities: tuple[str, ...]
    scopes_supported: tuple[str, ...] = ()
    overrides: Mapping[str, Any] = field(default_factory=dict)


DEFAULT_CAPABILITIES = (
    "launch-ehr", "launch-standalone", "client-public", "client-confidential-symmetric",
    "client-confidential-asymmetric", "context-ehr-patient", "context-standalone-patient", "sso-openid-connect",
    "permission-patient", "permission-user", "permission-v1", "permission-v2",
)


@dataclass(frozen=True)
class OperationRule:
    """An operation opened by the config: ``name`` (with ``$``), where it may be invoked, what it needs."""

    name: str
    levels: frozenset[str] = frozenset({"type"})  # system | type | instance
    permission: str = "r"
    patient_context: bool = False  # open to patient/ scopes too (instance level, compartment resources only)


@dataclass(frozen=True)
class ResponseVerificationConfig:
    """Defence in depth through Envoy's ext_proc filter: check what the FHIR server returns."""

    mode: str = "off"  # off | report | enforce
    max_body_bytes: int = 4 * 1024 * 1024


@dataclass(frozen=True)
class TlsConfig:
    cert_file: str
    key_file: str
    client_ca_file: str | None = None  # set: clients must present a certificate (mTLS)


@dataclass(frozen=True)
class AuditConfig:
    """FHIR R4 AuditEvent (IHE BALP) output, in addition to the decision log."""

    destination: str = "off"  # off | stdout | stderr | /absolute/file
    source_observer: str = "smartgate"


@dataclass(frozen=True)
class TokenPolicy:
    clock_skew_seconds: int = 60
    max_token_bytes: int = 16_384
    cache_size: int = 10_000
    cache_max_ttl_seconds: int = 300


@dataclass(frozen=True)
class JwksPolicy:
    refresh_interval_seconds: float = 300.0
    min_refresh_interval_seconds: float = 30.0
    fetch_timeout_seconds: float = 5.0


@dataclass(frozen=True)
class PublicRoute:
    """A route that needs no token; ``path`` is relative to the FHIR base path."""

    path: str
    methods: frozenset[str] = frozenset({"GET", "HEAD"})
    prefix: bool = False


@dataclass(frozen=True)
class HeaderNames:
    patient: str = "x-smart-patient"
    fhir_user: str = "x-smart-fhir-user"
    scope: str = "x-smart-scope"
    client_id: str = "x-smart-client-id"
    subject: str = "x-smart-subject"
    issuer: str = "x-smart-issuer"

    def all(self) -> tuple[str, ...]:
        return (self.patient, self.fhir_user, self.scope, self.client_id, self.subject, self.issuer)


@dataclass(frozen=True)
class Config:
    fhir: FhirConfig
    issuers: tuple[IssuerConfig, ...]
    listen: ListenConfig = field(default_factory=ListenConfig)
    tokens: TokenPolicy = field(default_factory=TokenPolicy)
    jwks: JwksPolicy = field(default_factory=JwksPolicy)
    public_routes: tuple[PublicRoute, ...] = ()
    headers: HeaderNames = field(default_factory=HeaderNames)
    realm: str = ""
    patient_closed_types: frozenset[str] = DEFAULT_PATIENT_CLOSED_TYPES
    max_request_bytes: int = 1_048_576
    decision_log: str = "stdout"
    mode: str = "enforce"  # enforce | dry_run
    smart_configuration: SmartConfigurationSettings | None = None
    workers: int = 1
    shutdown_grace_seconds: float = 10.0
    tls: TlsConfig | None = None
    audit: AuditConfig = field(default_factory=AuditConfig)
    operations: tuple[OperationRule, ...] = ()
    response_verification: ResponseVerificationConfig = field(default_factory=ResponseVerificationConfig)


T = TypeVar("T")


class _Section:
    """A mapping being read, which remembers its dotted path and rejects unknown keys."""

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(path or "(root)", "must be a mapping")
        self.data: dict[str, Any] = data
        self.path = path

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def reject_unknown(self, allowed: set[str]) -> None:
        for name in self.data:
            if name not in allowed:
                raise ConfigError(self.key(str(name)), "unknown key")

    def get(self, name: str, check: Callable[[str, Any], T], default: T) -> T:
        if name not in self.data or self.data[name] is None:
            return default
        return check(self.key(name), self.data[name])

    def require(self, name: str, check: Callable[[str, Any], T]) -> T:
        if name not in self.data or self.data[name] is None:
            raise ConfigError(self.key(name), "is required")
        return check(self.key(name), self.data[name])

    def section(self, name: str) -> _Section:
        return _Section(self.data.get(name) or {}, self.key(name))


def _string(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(key, "must be a non-empty string")
    return value


def _http_url(key: str, value: Any) -> str:
    text = _string(key, value)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(key, f"must be an absolute http(s) URL, got {text!r}")
    if parts.query or parts.fragment:
        raise ConfigError(key, "must not have a query or fragment")
    return text.rstrip("/")


def _address(key: str, value: Any) -> str:
    text = _string(key, value)
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(key, f"must be HOST:PORT, got {text!r}")
    return text


def _positive_number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(key, "must be a positive number")
    return float(value)


def _non_negative_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(key, "must be a non-negative integer")
    return value


def _positive_int(key: str, value: Any) -> int:
    if _non_negative_int(key, value) == 0:
        raise ConfigError(key, "must be a positive integer")
    return int(value)


def _boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, "must be true or false")
    return value


def _string_list(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ConfigError(key, "must be a non-empty list of strings")
    return tuple(_string(f"{key}[{i}]", item) for i, item in enumerate(value))


def _algorithms(key: str, value: Any) -> tuple[str, ...]:
    names = _string_list(key, value)
    for i, name in enumerate(names):
        if name not in SAFE_ALGORITHMS:
            raise ConfigError(
                f"{key}[{i}]", f"{name!r} is not an allowed algorithm (allowed: {', '.join(SAFE_ALGORITHMS)})"
            )
    return names


def _resource_types(key: str, value: Any) -> frozenset[str]:
    if not isinstance(value, list):
        raise ConfigError(key, "must be a list of resource types")
    for i, item in enumerate(value):
        if item not in RESOURCE_TYPES:
            raise ConfigError(f"{key}[{i}]", f"{item!r} is not a FHIR R4 resource type")
    return frozenset(value)


def _header_name(key: str, value: Any) -> str:
    name = _string(key, value).lower()
    if not _HEADER_NAME.match(name):
        raise ConfigError(key, f"{value!r} is not a valid header name")
    return name


def _context_header_name(key: str, value: Any) -> str:
    name = _header_name(key, value)
    if name in _RESERVED_HEADERS or name.startswith(("x-envoy-", ":")):
        raise ConfigError(key, f"{name!r} is reserved and cannot carry the SMART context")
    return name


def _string_map(key: str, value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ConfigError(key, "must be a mapping of strings")
    return {_header_name(f"{key}.{k}", k): _string(f"{key}.{k}", v) for k, v in value.items()}


def _lookup(section: _Section) -> LookupConfig:
    section.reject_unknown({"timeout_seconds", "cache_ttl_seconds", "cache_size", "headers"})
    default = LookupConfig()
    return LookupConfig(
        timeout_seconds=section.get("timeout_seconds", _positive_number, default.timeout_seconds),
        cache_ttl_seconds=section.get("cache_ttl_seconds", _positive_number, default.cache_ttl_seconds),
        cache_size=section.get("cache_size", _positive_int, default.cache_size),
        headers=section.get("headers", _string_map, {}),
    )


def _fhir(section: _Section) -> FhirConfig:
    section.reject_unknown({"base_url", "upstream_url", "lookup"})
    return FhirConfig(
        base_url=section.require("base_url", _http_url),
        upstream_url=section.require("upstream_url", _http_url),
        lookup=_lookup(section.section("lookup")),
    )


def _secret(section: _Section) -> str:
    secret_file = section.get("client_secret_file", _string, None)
    secret_env = section.get("client_secret_env", _string, None)
    if (secret_file is None) == (secret_env is None):
        raise ConfigError(section.key("client_secret_file"), "set exactly one of client_secret_file, client_secret_env")
    if secret_file is not None:
        try:
            secret = Path(secret_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(section.key("client_secret_file"), f"cannot read it: {exc.strerror}") from exc
    else:
        secret = os.environ.get(str(secret_env), "")
        if not secret:
            raise ConfigError(section.key("client_secret_env"), f"environment variable {secret_env} is not set")
    if not secret:
        raise ConfigError(section.key("client_secret_file"), "the client secret is empty")
    return secret


def _introspection(section: _Section) -> IntrospectionConfig:
    section.reject_unknown({"endpoint", "client_id", "client_secret_file", "client_secret_env", "auth_method",
                            "cache_max_ttl_seconds", "timeout_seconds"})
    auth_method = section.get("auth_method", _string, "client_secret_basic")
    if auth_method not in ("client_secret_basic", "client_secret_post"):
        raise ConfigError(section.key("auth_method"), "must be client_secret_basic or client_secret_post")
    return IntrospectionConfig(
        endpoint=section.require("endpoint", _http_url),
        client_id=section.require("client_id", _string),
        client_secret=_secret(section),
        auth_method=auth_method,
        cache_max_ttl_seconds=section.get("cache_max_ttl_seconds", _positive_number, 60.0),
        timeout_seconds=section.get("timeout_seconds", _positive_number, 2.0),
    )


def _claims(section: _Section, default: ClaimNames) -> ClaimNames:
    section.reject_unknown(set(default.__dataclass_fields__))
    return ClaimNames(
        **{name: section.get(name, _string_list, getattr(default, name)) for name in default.__dataclass_fields__}
    )


def _issuer(section: _Section, default_audience: str) -> IssuerConfig:
    section.reject_unknown(
        {"issuer", "jwks_uri", "jwks_file", "audiences", "algorithms", "token_types",
         "allow_missing_token_type", "claims", "profile", "claims_namespace", "introspection"}
    )
    profile = section.get("profile", _string, "generic")
    if profile not in PROFILE_NAMES:
        raise ConfigError(section.key("profile"), f"{profile!r} is not one of {', '.join(PROFILE_NAMES)}")
    namespace = section.get("claims_namespace", _string, "")
    issuer = section.require("issuer", _string)
    jwks_uri = section.get("jwks_uri", _http_url, None)
    jwks_file = section.get("jwks_file", _string, None)
    if jwks_uri and jwks_file:
        raise ConfigError(section.key("jwks_file"), "set jwks_uri or jwks_file, not both")
    if jwks_file and not Path(jwks_file).is_file():
        raise ConfigError(section.key("jwks_file"), f"file {jwks_file!r} does not exist")
    if not jwks_uri and not jwks_file:
        _http_url(section.key("issuer"), issuer)  # discovery needs an http(s) issuer
    token_types = section.get("token_types", _string_list, DEFAULT_TOKEN_TYPES)
    return IssuerConfig(
        issuer=issuer,
        jwks_uri=jwks_uri,
        jwks_file=jwks_file,
        audiences=section.get("audiences", _string_list, (default_audience,)),
        algorithms=section.get("algorithms", _algorithms, SAFE_ALGORITHMS),
        token_types=tuple(t.lower() for t in token_types),
        allow_missing_token_type=section.get("allow_missing_token_type", _boolean, True),
        claims=_claims(section.section("claims"), claim_names_for(profile, namespace)),
        profile=profile,
        dotted_scopes=profile == "entra",
        introspection=_introspection(section.section("introspection")) if "introspection" in section.data else None,
    )


def _issuers(key: str, value: Any, default_audience: str) -> tuple[IssuerConfig, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(key, "must be a non-empty list")
    issuers = tuple(_issuer(_Section(item, f"{key}[{i}]"), default_audience) for i, item in enumerate(value))
    seen: set[str] = set()
    for i, issuer in enumerate(issuers):
        if issuer.issuer in seen:
            raise ConfigError(f"{key}[{i}].issuer", f"{issuer.issuer!r} is configured twice")
        seen.add(issuer.issuer)
    return issuers


def _public_route(section: _Section) -> PublicRoute:
    section.reject_unknown({"path", "methods", "prefix"})
    path = section.require("path", _string)
    if not path.startswith("/") or "?" in path or "%" in path:
        raise ConfigError(section.key("path"), "must start with '/' and hold no query or escapes")
    methods: tuple[str, ...] = section.get("methods", _string_list, ("GET", "HEAD"))
    for i, method in enumerate(methods):
        if method.upper() not in _HTTP_METHODS:
            raise ConfigError(f"{section.key('methods')}[{i}]", f"{method!r} is not an HTTP method")
    return PublicRoute(
        path=path.rstrip("/") or "/",
        methods=frozenset(m.upper() for m in methods),
        prefix=section.get("prefix", _boolean, False),
    )


def _public_routes(key: str, value: Any) -> tuple[PublicRoute, ...]:
    if not isinstance(value, list):
        raise ConfigError(key, "must be a list")
    return tuple(_public_route(_Section(item, f"{key}[{i}]")) for i, item in enumerate(value))


def _headers(section: _Section) -> HeaderNames:
    default = HeaderNames()
    section.reject_unknown(set(default.__dataclass_fields__))
    names = HeaderNames(
        **{name: section.get(name, _context_header_name, getattr(default, name))
           for name in default.__dataclass_fields__}
    )
    if len(set(names.all())) != len(names.all()):
        raise ConfigError(section.path, "header names must be distinct")
    return names


def _log_destination(key: str, value: Any) -> str:
    text = _string(key, value)
    if text not in ("stdout", "stderr", "off") and not text.startswith("/"):
        raise ConfigError(key, "must be stdout, stderr, off or an absolute file path")
    return text


def _audit(section: _Section) -> AuditConfig:
    section.reject_unknown({"destination", "source_observer"})
    return AuditConfig(
        destination=section.get("destination", _log_destination, "off"),
        source_observer=section.get("source_observer", _string, "smartgate"),
    )


def _existing_file(key: str, value: Any) -> str:
    path = _string(key, value)
    if not Path(path).is_file():
        raise ConfigError(key, f"file {path!r} does not exist")
    return path


def _tls(section: _Section) -> TlsConfig:
    section.reject_unknown({"cert_file", "key_file", "client_ca_file"})
    return TlsConfig(
        cert_file=section.require("cert_file", _existing_file),
        key_file=section.require("key_file", _existing_file),
        client_ca_file=section.get("client_ca_file", _existing_file, None),
    )


def _smart_configuration(root: _Section, issuers: tuple[IssuerConfig, ...]) -> SmartConfigurationSettings | None:
    section = root.section("smart_configuration")
    section.reject_unknown({"enabled", "issuer", "capabilities", "scopes_supported", "overrides"})
    if not section.get("enabled", _boolean, True):
        return None
    issuer = section.get("issuer", _string, issuers[0].issuer)
    if issuer not in {i.issuer for i in issuers}:
        raise ConfigError(section.key("issuer"), "must be one of the configured issuers")
    if not issuer.startswith(("https://", "http://")):
        return None
    overrides: dict[str, Any] = section.get(
        "overrides", lambda k, v: v if isinstance(v, dict) else _fail(k, "must be a mapping"), {}
    )
    return SmartConfigurationSettings(
        issuer=issuer,
        capabilities=section.get("capabilities", _string_list, DEFAULT_CAPABILITIES),
        scopes_supported=section.get("scopes_supported", _string_list, ()),
        overrides=overrides,
    )


def _operation(section: _Section) -> OperationRule:
    section.reject_unknown({"name", "levels", "permission", "patient_context"})
    name = section.require("name", _string)
    if not re.fullmatch(r"\$[A-Za-z][A-Za-z0-9\-_.]*", name):
        raise ConfigError(section.key("name"), "must be an operation name such as $validate")
    levels: tuple[str, ...] = section.get("levels", _string_list, ("type",))
    for i, level in enumerate(levels):
        if level not in ("system", "type", "instance"):
            raise ConfigError(f"{section.key('levels')}[{i}]", "must be system, type or instance")
    permission = section.get("permission", _string, "r")
    if permission not in tuple("cruds"):
        raise ConfigError(section.key("permission"), "must be one of c, r, u, d, s")
    return OperationRule(name, frozenset(levels), permission, section.get("patient_context", _boolean, False))


def _operations(key: str, value: Any) -> tuple[OperationRule, ...]:
    if not isinstance(value, list):
        raise ConfigError(key, "must be a list")
    return tuple(_operation(_Section(item, f"{key}[{i}]")) for i, item in enumerate(value))


def _response_verification(section: _Section) -> ResponseVerificationConfig:
    section.reject_unknown({"mode", "max_body_bytes"})
    mode = section.get("mode", _string, "off")
    if mode not in ("off", "report", "enforce"):
        raise ConfigError(section.key("mode"), "must be off, report or enforce")
    return ResponseVerificationConfig(mode, section.get("max_body_bytes", _positive_int, 4 * 1024 * 1024))


def _fail(key: str, reason: str) -> Any:
    raise ConfigError(key, reason)


def parse_config(data: Any) -> Config:
    """Build a validated Config from parsed YAML, or raise ConfigError."""
    root = _Section(data, "")
    root.reject_unknown(
        {"listen", "fhir", "issuers", "tokens", "jwks", "public_routes", "headers", "realm",
         "max_request_bytes", "decision_log", "patient_closed_types", "mode", "smart_configuration", "workers",
         "shutdown_grace_seconds", "tls", "audit", "operations", "response_verification"}
    )
    listen_section = root.section("listen")
    listen_section.reject_unknown({"grpc", "http"})
    listen = ListenConfig(
        grpc=listen_section.get("grpc", _address, ListenConfig.grpc),
        http=listen_section.get("http", _address, ListenConfig.http),
    )
    if "fhir" not in root.data:
        raise ConfigError("fhir", "is required")
    fhir = _fhir(root.section("fhir"))
    if "issuers" not in root.data:
        raise ConfigError("issuers", "is required")
    issuers = _issuers("issuers", root.data["issuers"], fhir.base_url)

    tokens_section = root.section("tokens")
    tokens_section.reject_unknown(set(TokenPolicy.__dataclass_fields__))
    tokens = TokenPolicy(
        clock_skew_seconds=tokens_section.get("clock_skew_seconds", _non_negative_int, 60),
        max_token_bytes=tokens_section.get("max_token_bytes", _positive_int, 16_384),
        cache_size=tokens_section.get("cache_size", _non_negative_int, 10_000),
        cache_max_ttl_seconds=tokens_section.get("cache_max_ttl_seconds", _non_negative_int, 300),
    )
    jwks_section = root.section("jwks")
    jwks_section.reject_unknown(set(JwksPolicy.__dataclass_fields__))
    jwks = JwksPolicy(
        refresh_interval_seconds=jwks_section.get("refresh_interval_seconds", _positive_number, 300.0),
        min_refresh_interval_seconds=jwks_section.get("min_refresh_interval_seconds", _positive_number, 30.0),
        fetch_timeout_seconds=jwks_section.get("fetch_timeout_seconds", _positive_number, 5.0),
    )
    decision_log = root.get("decision_log", _string, "stdout")
    if decision_log not in ("stdout", "stderr", "off") and not decision_log.startswith("/"):
        raise ConfigError("decision_log", "must be stdout, stderr, off or an absolute file path")
    mode = root.get("mode", _string, "enforce")
    if mode not in ("enforce", "dry_run"):
        raise ConfigError("mode", "must be enforce or dry_run")
    return Config(
        mode=mode,
        smart_configuration=_smart_configuration(root, issuers),
        workers=root.get("workers", _positive_int, 1),
        shutdown_grace_seconds=root.get("shutdown_grace_seconds", _positive_number, 10.0),
        tls=_tls(root.section("tls")) if root.data.get("tls") else None,
        audit=_audit(root.section("audit")),
        operations=root.get("operations", _operations, ()),
        response_verification=_response_verification(root.section("response_verification")),
        listen=listen,
        fhir=fhir,
        issuers=issuers,
        tokens=tokens,
        jwks=jwks,
        public_routes=root.get("public_routes", _public_routes, ()),
        headers=_headers(root.section("headers")),
        realm=root.get("realm", _string, fhir.base_url),
        patient_closed_types=root.get("patient_closed_types", _resource_types, DEFAULT_PATIENT_CLOSED_TYPES),
        max_request_bytes=root.get("max_request_bytes", _positive_int, 1_048_576),
        decision_log=decision_log,
    )


def grpc_address(config: Config, worker_index: int) -> str:
    """Worker ``i`` listens on the configured gRPC port + i."""
    host, _, port = config.listen.grpc.rpartition(":")
    return f"{host}:{int(port) + worker_index}"


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file; raise ConfigError naming the key and the reason."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("(file)", f"cannot read {str(path)!r}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError("(file)", f"not valid YAML: {exc}") from exc
    return parse_config(data)
