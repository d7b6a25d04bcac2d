"""The configuration model: frozen types, each key, check and default written once, on its field.

Nothing in the rest of the service reads raw YAML: it receives these types with every default already
applied. ``parse`` builds them from the file through ``checks.build``, which takes the allowed keys and
the defaults from ``dataclasses.fields``; only side effects and rules across fields are written there.
No YAML here: the policy imports this module.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

from smartgate.config.checks import (
    UNIX_PREFIX,
    ConfigError,
    address,
    address_or_unix_socket,
    boolean,
    check,
    each,
    header_map,
    header_name,
    http_url,
    mapping,
    nested,
    non_negative_int,
    one_of,
    parser_step,
    positive_int,
    positive_number,
    string,
    string_list,
)
from smartgate.config.profiles import ClaimNames as ClaimNames
from smartgate.config.profiles import ProfileName
from smartgate.fhir.definitions import RESOURCE_TYPES, search_parameter

Mode = Literal["enforce", "dry_run"]
"""enforce: deny what the rules deny. dry_run: decide, log and count, but allow everything."""
VerificationMode = Literal["off", "report", "enforce"]
AuthMethod = Literal["client_secret_basic", "client_secret_post"]
OperationLevel = Literal["system", "type", "instance"]
Permission = Literal["c", "r", "u", "d", "s"]
SenderConstraint = Literal["optional", "required"]
"""optional: bound tokens must prove possession, unbound ones pass. required: unbound tokens are refused."""

SAFE_ALGORITHMS: tuple[str, ...] = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
DEFAULT_TOKEN_TYPES: tuple[str, ...] = ("at+jwt", "application/at+jwt", "jwt")
# Types outside the R4 Patient compartment that routinely carry patient data: a patient/
# scope does not open them unless the operator changes ``patient_closed_types``.
DEFAULT_PATIENT_CLOSED_TYPES: frozenset[str] = frozenset(
    {
        "Binary",
        "Bundle",
        "Contract",
        "GuidanceResponse",
        "Linkage",
        "MessageHeader",
        "Parameters",
        "Subscription",
        "Task",
    }
)
# Types outside the R4 Patient compartment that are bound to one patient through a reference search
# parameter and element, handled like compartment types (US Core's Implantable Device: Device.patient).
DEFAULT_EXTRA_BINDINGS: Mapping[str, tuple[str, ...]] = {"Device": ("patient",)}
DEFAULT_CAPABILITIES = (
    "launch-ehr",
    "launch-standalone",
    "client-public",
    "client-confidential-symmetric",
    "client-confidential-asymmetric",
    "context-ehr-patient",
    "context-standalone-patient",
    "sso-openid-connect",
    "permission-patient",
    "permission-user",
    "permission-v1",
    "permission-v2",
)
# Where smartgate listens by default; Envoy's rendering (envoy_glue.bootstrap) points at the same ports.
DEFAULT_LISTEN_HOST = "127.0.0.1"
DEFAULT_GRPC_PORT = 9191
DEFAULT_HTTP_PORT = 9190
# Header names smartgate must never set or strip.
_RESERVED_HEADERS = frozenset(
    {
        "authorization",
        "host",
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
        "cookie",
        "x-request-id",
        "x-forwarded-for",
        "x-envoy-original-path",
    }
)
_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_OPERATION_NAME = re.compile(r"\$[A-Za-z][A-Za-z0-9\-_.]*")

__all__ = ["ClaimNames", "ConfigError"]  # re-exported: the types the rest of the service names with the model


# --- checks that know smartgate's vocabulary -------------------------------------------------------------


def _algorithms(key: str, value: Any) -> tuple[str, ...]:
    names = string_list(key, value)
    for i, name in enumerate(names):
        if name not in SAFE_ALGORITHMS:
            raise ConfigError(
                f"{key}[{i}]", f"{name!r} is not an allowed algorithm (allowed: {', '.join(SAFE_ALGORITHMS)})"
            )
    return names


def _token_types(key: str, value: Any) -> tuple[str, ...]:
    return tuple(name.lower() for name in string_list(key, value))


def _resource_types(key: str, value: Any) -> frozenset[str]:
    if not isinstance(value, list):
        raise ConfigError(key, "must be a list of resource types")
    for i, item in enumerate(value):
        if item not in RESOURCE_TYPES:
            raise ConfigError(f"{key}[{i}]", f"{item!r} is not a FHIR R4 resource type")
    return frozenset(value)


def _extra_bindings(key: str, value: Any) -> Mapping[str, tuple[str, ...]]:
    """``{Type: [param, ...]}``: each a reference search parameter of that type that can target Patient."""
    from_file = mapping(key, value)
    bindings: dict[str, tuple[str, ...]] = {}
    for resource_type, params in from_file.items():
        if resource_type not in RESOURCE_TYPES:
            raise ConfigError(f"{key}.{resource_type}", f"{resource_type!r} is not a FHIR R4 resource type")
        names = string_list(f"{key}.{resource_type}", params)
        if not names:
            raise ConfigError(f"{key}.{resource_type}", "must name at least one search parameter")
        for i, name in enumerate(names):
            info = search_parameter(resource_type, name)
            if info is None or info.type != "reference" or "Patient" not in info.targets:
                raise ConfigError(
                    f"{key}.{resource_type}[{i}]",
                    f"{name!r} is not a {resource_type} reference search parameter that targets Patient",
                )
        bindings[resource_type] = names
    return bindings


def _context_header_name(key: str, value: Any) -> str:
    name = header_name(key, value)
    if name in _RESERVED_HEADERS or name.startswith(("x-envoy-", ":")):
        raise ConfigError(key, f"{name!r} is reserved and cannot carry the SMART context")
    return name


def _log_destination(key: str, value: Any) -> str:
    text = string(key, value)
    if text not in ("stdout", "stderr", "off") and not text.startswith("/"):
        raise ConfigError(key, "must be stdout, stderr, off or an absolute file path")
    return text


def _route_path(key: str, value: Any) -> str:
    path = string(key, value)
    if not path.startswith("/") or "?" in path or "%" in path:
        raise ConfigError(key, "must start with '/' and hold no query or escapes")
    return path.rstrip("/") or "/"


def _http_methods(key: str, value: Any) -> frozenset[str]:
    methods = string_list(key, value)
    for i, method in enumerate(methods):
        if method.upper() not in _HTTP_METHODS:
            raise ConfigError(f"{key}[{i}]", f"{method!r} is not an HTTP method")
    return frozenset(method.upper() for method in methods)


def _operation_name(key: str, value: Any) -> str:
    name = string(key, value)
    if not _OPERATION_NAME.fullmatch(name):
        raise ConfigError(key, "must be an operation name such as $validate")
    return name


def _operation_levels(key: str, value: Any) -> frozenset[OperationLevel]:
    level = one_of(OperationLevel)
    return frozenset(level(f"{key}[{i}]", item) for i, item in enumerate(string_list(key, value)))


# --- the model ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ListenConfig:
    # HOST:PORT, or unix:/path (a Unix domain socket shared with Envoy in the same pod)
    grpc: str = field(default=f"{DEFAULT_LISTEN_HOST}:{DEFAULT_GRPC_PORT}", metadata=check(address_or_unix_socket))
    http: str = field(default=f"{DEFAULT_LISTEN_HOST}:{DEFAULT_HTTP_PORT}", metadata=check(address))


@dataclass(frozen=True)
class LookupConfig:
    timeout_seconds: float = field(default=2.0, metadata=check(positive_number))
    cache_ttl_seconds: float = field(default=30.0, metadata=check(positive_number))
    cache_size: int = field(default=10_000, metadata=check(positive_int))
    headers: Mapping[str, str] = field(default_factory=dict, metadata=check(header_map))


@dataclass(frozen=True)
class FhirConfig:
    base_url: str = field(metadata=check(http_url))
    upstream_url: str = field(metadata=check(http_url))
    lookup: LookupConfig = field(default_factory=LookupConfig, metadata=check(nested(LookupConfig)))

    @property
    def base_path(self) -> str:
        """The path prefix Envoy routes to the FHIR server, without a trailing slash."""
        return urlsplit(self.base_url).path.rstrip("/")


@dataclass(frozen=True)
class IntrospectionConfig:
    """RFC 7662 introspection of opaque tokens for one issuer."""

    endpoint: str = field(metadata=check(http_url))
    client_id: str = field(metadata=check(string))
    client_secret: str = field(repr=False, default="")  # read by parse from client_secret_file or _env
    auth_method: AuthMethod = field(default="client_secret_basic", metadata=check(one_of(AuthMethod)))
    cache_max_ttl_seconds: float = field(default=60.0, metadata=check(positive_number))
    timeout_seconds: float = field(default=2.0, metadata=check(positive_number))


@dataclass(frozen=True)
class IssuerConfig:
    issuer: str = field(metadata=check(string))
    audiences: tuple[str, ...] = field(metadata=check(string_list))  # parse defaults it to (fhir.base_url,)
    jwks_uri: str | None = field(default=None, metadata=check(http_url))
    jwks_file: str | None = field(default=None, metadata=check(string))
    algorithms: tuple[str, ...] = field(default=SAFE_ALGORITHMS, metadata=check(_algorithms))
    token_types: tuple[str, ...] = field(default=DEFAULT_TOKEN_TYPES, metadata=check(_token_types))
    allow_missing_token_type: bool = field(default=True, metadata=check(boolean))
    claims: ClaimNames = field(default_factory=ClaimNames, metadata=parser_step())  # defaults from the profile
    profile: ProfileName = field(
        default="generic",
        metadata=check(one_of(ProfileName, "{value!r} is not one of " + ", ".join(get_args(ProfileName)))),
    )
    dotted_scopes: bool = False  # not a key: set for the entra profile
    introspection: IntrospectionConfig | None = field(default=None, metadata=parser_step())
    sender_constraint: SenderConstraint = field(default="optional", metadata=check(one_of(SenderConstraint)))


@dataclass(frozen=True)
class SmartConfigurationSettings:
    issuer: str = field(metadata=check(string))  # parse defaults it to the first issuer
    capabilities: tuple[str, ...] = field(default=DEFAULT_CAPABILITIES, metadata=check(string_list))
    scopes_supported: tuple[str, ...] = field(default=(), metadata=check(string_list))
    overrides: Mapping[str, Any] = field(default_factory=dict, metadata=check(mapping))


@dataclass(frozen=True)
class OperationRule:
    """An operation opened by the config: ``name`` (with ``$``), where it may be invoked, what it needs."""

    name: str = field(metadata=check(_operation_name))
    levels: frozenset[OperationLevel] = field(default=frozenset({"type"}), metadata=check(_operation_levels))
    permission: Permission = field(default="r", metadata=check(one_of(Permission, "must be one of c, r, u, d, s")))
    # open to patient/ scopes too (instance level, compartment resources only)
    patient_context: bool = field(default=False, metadata=check(boolean))


@dataclass(frozen=True)
class ResponseVerificationConfig:
    """Defence in depth through Envoy's ext_proc filter: check what the FHIR server returns."""

    mode: VerificationMode = field(default="off", metadata=check(one_of(VerificationMode)))
    max_body_bytes: int = field(default=4 * 1024 * 1024, metadata=check(positive_int))


@dataclass(frozen=True)
class CompartmentConfig:
    """How far a patient's compartment reaches beyond the official R4 definition."""

    # R4's Patient compartment lists Patient.link: B's record linking to A would be in A's compartment.
    # Off by default: the context patient is the only Patient resource in it (as HAPI's interceptors do).
    follow_patient_links: bool = field(default=False, metadata=check(boolean))
    extra_binding_params: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: dict(DEFAULT_EXTRA_BINDINGS), metadata=check(_extra_bindings)
    )


@dataclass(frozen=True)
class TlsConfig:
    """Paths only; parse checks that each file exists."""

    cert_file: str = field(metadata=check(string))
    key_file: str = field(metadata=check(string))
    # set: clients must present a certificate (mTLS)
    client_ca_file: str | None = field(default=None, metadata=check(string))


@dataclass(frozen=True)
class AuditConfig:
    """FHIR R4 AuditEvent (IHE BALP) output, in addition to the decision log."""

    destination: str = field(default="off", metadata=check(_log_destination))  # off | stdout | stderr | /file
    source_observer: str = field(default="smartgate", metadata=check(string))


@dataclass(frozen=True)
class TokenPolicy:
    clock_skew_seconds: int = field(default=60, metadata=check(non_negative_int))
    max_token_bytes: int = field(default=16_384, metadata=check(positive_int))
    cache_size: int = field(default=10_000, metadata=check(non_negative_int))
    cache_max_ttl_seconds: int = field(default=300, metadata=check(non_negative_int))


@dataclass(frozen=True)
class DpopConfig:
    """RFC 9449 DPoP proofs for tokens bound with ``cnf.jkt`` (off: such tokens are refused)."""

    enabled: bool = field(default=True, metadata=check(boolean))
    algorithms: tuple[str, ...] = field(default=SAFE_ALGORITHMS, metadata=check(_algorithms))
    # A proof is accepted while its iat is within this window (plus tokens.clock_skew_seconds) of now.
    iat_window_seconds: int = field(default=60, metadata=check(positive_int))
    replay_cache_size: int = field(default=100_000, metadata=check(positive_int))


@dataclass(frozen=True)
class JwksPolicy:
    refresh_interval_seconds: float = field(default=300.0, metadata=check(positive_number))
    min_refresh_interval_seconds: float = field(default=30.0, metadata=check(positive_number))
    fetch_timeout_seconds: float = field(default=5.0, metadata=check(positive_number))


@dataclass(frozen=True)
class PublicRoute:
    """A route that needs no token; ``path`` is relative to the FHIR base path."""

    path: str = field(metadata=check(_route_path))
    methods: frozenset[str] = field(default=frozenset({"GET", "HEAD"}), metadata=check(_http_methods))
    prefix: bool = field(default=False, metadata=check(boolean))


@dataclass(frozen=True)
class HeaderNames:
    """The verified-context headers; parse checks they are distinct."""

    patient: str = field(default="x-smart-patient", metadata=check(_context_header_name))
    fhir_user: str = field(default="x-smart-fhir-user", metadata=check(_context_header_name))
    scope: str = field(default="x-smart-scope", metadata=check(_context_header_name))
    client_id: str = field(default="x-smart-client-id", metadata=check(_context_header_name))
    subject: str = field(default="x-smart-subject", metadata=check(_context_header_name))
    issuer: str = field(default="x-smart-issuer", metadata=check(_context_header_name))

    def all(self) -> tuple[str, ...]:
        return (self.patient, self.fhir_user, self.scope, self.client_id, self.subject, self.issuer)


@dataclass(frozen=True)
class Config:
    fhir: FhirConfig = field(metadata=check(nested(FhirConfig)))
    issuers: tuple[IssuerConfig, ...] = field(metadata=parser_step())
    listen: ListenConfig = field(default_factory=ListenConfig, metadata=check(nested(ListenConfig)))
    tokens: TokenPolicy = field(default_factory=TokenPolicy, metadata=check(nested(TokenPolicy)))
    jwks: JwksPolicy = field(default_factory=JwksPolicy, metadata=check(nested(JwksPolicy)))
    dpop: DpopConfig = field(default_factory=DpopConfig, metadata=check(nested(DpopConfig)))
    public_routes: tuple[PublicRoute, ...] = field(default=(), metadata=check(each(PublicRoute)))
    headers: HeaderNames = field(default_factory=HeaderNames, metadata=check(nested(HeaderNames)))
    realm: str = field(default="", metadata=check(string))  # parse defaults it to fhir.base_url
    patient_closed_types: frozenset[str] = field(default=DEFAULT_PATIENT_CLOSED_TYPES, metadata=check(_resource_types))
    max_request_bytes: int = field(default=1_048_576, metadata=check(positive_int))
    decision_log: str = field(default="stdout", metadata=check(_log_destination))
    mode: Mode = field(default="enforce", metadata=check(one_of(Mode)))
    smart_configuration: SmartConfigurationSettings | None = field(default=None, metadata=parser_step())
    workers: int = field(default=1, metadata=check(positive_int))
    shutdown_grace_seconds: float = field(default=10.0, metadata=check(positive_number))
    tls: TlsConfig | None = field(default=None, metadata=parser_step())
    audit: AuditConfig = field(default_factory=AuditConfig, metadata=check(nested(AuditConfig)))
    operations: tuple[OperationRule, ...] = field(default=(), metadata=check(each(OperationRule)))
    response_verification: ResponseVerificationConfig = field(
        default_factory=ResponseVerificationConfig, metadata=check(nested(ResponseVerificationConfig))
    )
    # Under patient/ scopes, a search of a bound type that names no patient is narrowed to the context
    # patient (Envoy's query_parameters_to_set) instead of refused.
    search_narrowing: bool = field(default=True, metadata=check(boolean))
    compartment: CompartmentConfig = field(default_factory=CompartmentConfig, metadata=check(nested(CompartmentConfig)))


def unix_socket_path(listen_grpc: str) -> str | None:
    """The socket path of a ``unix:/path`` gRPC listen address; None for HOST:PORT."""
    return listen_grpc.removeprefix(UNIX_PREFIX) if listen_grpc.startswith(UNIX_PREFIX) else None


def worker_socket_path(path: str, worker_index: int) -> str:
    """Worker 0 listens on the configured socket path, worker ``i`` > 0 on ``path.i`` (as ports go port + i)."""
    return path if worker_index == 0 else f"{path}.{worker_index}"


def grpc_address(config: Config, worker_index: int) -> str:
    """Worker ``i`` listens on the configured gRPC port + i, or on the socket path ``worker_socket_path``."""
    path = unix_socket_path(config.listen.grpc)
    if path is not None:
        return UNIX_PREFIX + worker_socket_path(path, worker_index)
    host, _, port = config.listen.grpc.rpartition(":")
    return f"{host}:{int(port) + worker_index}"
