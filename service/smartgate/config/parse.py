"""Read the YAML config file into the model, failing with the dotted key and the reason.

Keys, checks and defaults come from the model's fields (``checks.build``). What is written here is only
what a field cannot say: defaults that depend on other keys (audiences, realm), secrets read from a file
or the environment, files that must exist, and rules across fields.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from smartgate.config.checks import ConfigError, Section, boolean, build, http_url, string
from smartgate.config.model import (
    Config,
    IntrospectionConfig,
    IssuerConfig,
    SmartConfigurationSettings,
    TlsConfig,
)
from smartgate.config.profiles import ClaimNames, claim_names_for

__all__ = ["ConfigError", "load_config", "parse_config"]


def _secret(section: Section) -> str:
    secret_file = section.other("client_secret_file", string, None)
    secret_env = section.other("client_secret_env", string, None)
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


def _introspection(data: Any, path: str) -> IntrospectionConfig:
    section = Section(data or {}, path, IntrospectionConfig, extra_keys=("client_secret_file", "client_secret_env"))
    return replace(build(IntrospectionConfig, section), client_secret=_secret(section))


def _claims(data: Any, path: str, profile_defaults: ClaimNames) -> ClaimNames:
    return build(ClaimNames, Section(data or {}, path, ClaimNames), defaults=vars(profile_defaults))


def _issuer(section: Section, default_audience: str) -> IssuerConfig:
    profile = section.value("profile")
    namespace = section.other("claims_namespace", string, "")
    issuer = build(
        IssuerConfig,
        section,
        defaults={"audiences": (default_audience,)},
        profile=profile,
        dotted_scopes=profile == "entra",
        claims=_claims(section.data.get("claims"), section.key("claims"), claim_names_for(profile, namespace)),
        introspection=(
            _introspection(section.data["introspection"], section.key("introspection"))
            if "introspection" in section.data
            else None
        ),
    )
    if issuer.jwks_uri and issuer.jwks_file:
        raise ConfigError(section.key("jwks_file"), "set jwks_uri or jwks_file, not both")
    if issuer.jwks_file and not Path(issuer.jwks_file).is_file():
        raise ConfigError(section.key("jwks_file"), f"file {issuer.jwks_file!r} does not exist")
    if not issuer.jwks_uri and not issuer.jwks_file:
        http_url(section.key("issuer"), issuer.issuer)  # discovery needs an http(s) issuer
    return issuer


def _issuers(root: Section, default_audience: str) -> tuple[IssuerConfig, ...]:
    if "issuers" not in root.data:
        raise ConfigError("issuers", "is required")
    value = root.data["issuers"]
    if not isinstance(value, list) or not value:
        raise ConfigError("issuers", "must be a non-empty list")
    issuers = tuple(
        _issuer(Section(item, f"issuers[{i}]", IssuerConfig, extra_keys=("claims_namespace",)), default_audience)
        for i, item in enumerate(value)
    )
    seen: set[str] = set()
    for i, issuer in enumerate(issuers):
        if issuer.issuer in seen:
            raise ConfigError(f"issuers[{i}].issuer", f"{issuer.issuer!r} is configured twice")
        seen.add(issuer.issuer)
    return issuers


def _tls(root: Section) -> TlsConfig | None:
    if not root.data.get("tls"):
        return None
    section = Section(root.data["tls"], "tls", TlsConfig)
    tls = build(TlsConfig, section)
    for name in ("cert_file", "key_file", "client_ca_file"):
        path = getattr(tls, name)
        if path is not None and not Path(path).is_file():
            raise ConfigError(section.key(name), f"file {path!r} does not exist")
    return tls


def _smart_configuration(root: Section, issuers: tuple[IssuerConfig, ...]) -> SmartConfigurationSettings | None:
    """Served unless disabled, for an http(s) issuer only (discovery is fetched from it)."""
    section = Section(
        root.data.get("smart_configuration") or {},
        "smart_configuration",
        SmartConfigurationSettings,
        extra_keys=("enabled",),
    )
    if not section.other("enabled", boolean, True):
        return None
    issuer = section.value("issuer", defaults={"issuer": issuers[0].issuer})
    if issuer not in {i.issuer for i in issuers}:
        raise ConfigError(section.key("issuer"), "must be one of the configured issuers")
    if not issuer.startswith(("https://", "http://")):
        return None
    return build(SmartConfigurationSettings, section, issuer=issuer)


def parse_config(data: Any) -> Config:
    """Build a validated Config from parsed YAML, or raise ConfigError."""
    root = Section(data, "", Config)
    fhir = root.value("fhir")
    issuers = _issuers(root, fhir.base_url)
    config = build(
        Config,
        root,
        defaults={"realm": fhir.base_url},
        fhir=fhir,
        issuers=issuers,
        smart_configuration=_smart_configuration(root, issuers),
        tls=_tls(root),
    )
    names = config.headers.all()
    if len(set(names)) != len(names):
        raise ConfigError("headers", "header names must be distinct")
    return config


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
