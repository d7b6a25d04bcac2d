"""Running pieces for the production-feature tests (issue 4): smartgate processes started with
their own arguments, Envoy from a rendered (and possibly edited) configuration, Prometheus
scrapes, decision-log and AuditEvent readers, token shapes, and certificates for TLS."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client.parser import text_string_to_metric_families

from smartgate.demo.runner import find_envoy

from .harness import SigningKeys, free_port, wait_for

SMART_HEADERS = ("x-smart-patient", "x-smart-fhir-user", "x-smart-scope", "x-smart-client-id", "x-smart-subject",
                 "x-smart-issuer")


def free_port_pair() -> int:
    """A port p with p and p + 1 both free (smartgate workers listen on consecutive ports)."""
    for _ in range(100):
        port = free_port()
        if port >= 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports")


def wait_until(condition: Callable[[], bool], seconds: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


# --- smartgate ------------------------------------------------------------------------------------


@dataclass
class Smartgate:
    """One ``python -m smartgate serve`` process (a single worker, or the supervisor of several)."""

    process: subprocess.Popen[bytes]
    config_path: Path
    http: str  # host:port of the HTTP listener
    grpc: str  # host:port of the (first) gRPC listener
    log_path: Path
    decision_log_path: Path | None
    audit_path: Path | None

    def url(self, path: str) -> str:
        return f"http://{self.http}{path}"

    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def decisions(self) -> list[dict[str, Any]]:
        return _json_lines(self.decision_log_path)

    def audit_events(self) -> list[dict[str, Any]]:
        return _json_lines(self.audit_path)

    def metrics(self) -> Metrics:
        response = httpx.get(self.url("/metrics"), timeout=5)
        assert response.status_code == 200, response.text
        return Metrics.parse(response.text)

    def write_config(self, config: Mapping[str, Any]) -> None:
        self.config_path.write_text(json.dumps(config), encoding="utf-8")

    def signal(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)


def _json_lines(path: Path | None) -> list[dict[str, Any]]:
    if path is None or not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def smartgate_config(*, grpc_port: int, http_port: int, base_url: str, upstream_url: str,
                     issuers: list[dict[str, Any]], workdir: Path, **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "listen": {"grpc": f"127.0.0.1:{grpc_port}", "http": f"127.0.0.1:{http_port}"},
        "fhir": {"base_url": base_url, "upstream_url": upstream_url},
        "issuers": issuers,
        "decision_log": str(workdir / "decisions.jsonl"),
    }
    config.update(extra)
    return config


def launch_smartgate(config: dict[str, Any], workdir: Path, *, args: tuple[str, ...] = (),
                     wait: str = "ready", env: Mapping[str, str] | None = None) -> Smartgate:
    """Start ``smartgate serve``; ``wait`` is ``ready`` (/readyz 200), ``alive`` (/healthz 200) or ``none``."""
    config_path = workdir / "smartgate.yaml"
    config_path.write_text(json.dumps(config), encoding="utf-8")  # JSON is YAML
    log_path = workdir / "smartgate.out"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "smartgate", "serve", "--config", str(config_path), *args],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    decision_log = config.get("decision_log", "stdout")
    audit = config.get("audit", {}).get("destination", "off")
    handle = Smartgate(
        process, config_path, config["listen"]["http"], config["listen"]["grpc"], log_path,
        Path(decision_log) if decision_log.startswith("/") else None,
        Path(audit) if audit.startswith("/") else None,
    )
    try:
        if wait == "ready":
            wait_for(handle.url("/readyz"), process=process)
        elif wait == "alive":
            wait_for(handle.url("/healthz"), process=process)
    except BaseException:
        stop(process)
        raise
    return handle


def stop(process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def running_smartgate(config: dict[str, Any], workdir: Path, **kwargs: Any) -> Iterator[Smartgate]:
    handle = launch_smartgate(config, workdir, **kwargs)
    try:
        yield handle
    finally:
        stop(handle.process)


# --- Envoy ----------------------------------------------------------------------------------------


@dataclass
class Envoy:
    process: subprocess.Popen[bytes]
    admin: str  # host:port

    def cluster_requests(self, cluster: str) -> dict[str, int]:
        """Requests Envoy sent to each endpoint of a cluster (admin ``/clusters``: ``rq_total``)."""
        text = httpx.get(f"http://{self.admin}/clusters", timeout=5).text
        counts: dict[str, int] = {}
        for line in text.splitlines():
            parts = line.split("::")
            if len(parts) == 4 and parts[0] == cluster and parts[2] == "rq_total":
                counts[parts[1]] = int(parts[3])
        return counts


def launch_envoy(config: dict[str, Any], workdir: Path, name: str = "envoy") -> Envoy:
    """Run the real Envoy binary on a configuration dict (usually ``envoy_config.render(...)``, edited)."""
    config_path = workdir / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    log = (workdir / f"{name}.log").open("wb")
    process = subprocess.Popen(
        [find_envoy(), "-c", str(config_path), "--use-dynamic-base-id", "--log-level", "warn", "--concurrency", "1"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    address = config["admin"]["address"]["socket_address"]
    admin = f"{address['address']}:{address['port_value']}"
    try:
        wait_for(f"http://{admin}/ready", process=process)
    except BaseException:
        stop(process)
        raise
    return Envoy(process, admin)


@contextlib.contextmanager
def running_envoy(config: dict[str, Any], workdir: Path, name: str = "envoy") -> Iterator[Envoy]:
    envoy = launch_envoy(config, workdir, name)
    try:
        yield envoy
    finally:
        stop(envoy.process)


# --- Prometheus -----------------------------------------------------------------------------------


@dataclass
class Metrics:
    """A parsed scrape: families by name, and sample values by (sample name, labels)."""

    types: dict[str, str]
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = field(default_factory=dict)
    label_sets: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> Metrics:
        metrics = cls(types={})
        for family in text_string_to_metric_families(text):
            metrics.types[family.name] = family.type
            for sample in family.samples:
                metrics.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
                metrics.label_sets.append(dict(sample.labels))
        return metrics

    def value(self, name: str, **labels: str) -> float:
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def series(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        return {labels: value for (sample, labels), value in self.samples.items() if sample == name}

    def total(self, name: str, **labels: str) -> float:
        """The sum over every series of ``name`` whose labels include ``labels``."""
        wanted = set(labels.items())
        return sum(value for series, value in self.series(name).items() if wanted <= series)

    def buckets(self, name: str) -> dict[float, float]:
        return {float(dict(labels)["le"]): value for labels, value in self.series(name + "_bucket").items()}


def decision_counts(metrics: Metrics) -> dict[tuple[str, str, str], int]:
    counts = {}
    for labels, value in metrics.series("smartgate_decisions_total").items():
        named = dict(labels)
        counts[(named["outcome"], named["status"], named["reason"])] = int(value)
    return counts


# --- tokens shaped as each identity provider issues them ----------------------------------------


def sign(keys: SigningKeys, claims: dict[str, Any], alg: str = "ES256", typ: str | None = "at+jwt",
         kid: str | None = None) -> str:
    key, default_kid = (keys.ec_key, "ec-1") if alg.startswith("ES") else (keys.rsa_key, "rsa-1")
    headers: dict[str, Any] = {"kid": kid or default_kid}
    if typ is not None:
        headers["typ"] = typ
    return jwt.encode(claims, key, algorithm=alg, headers=headers)


def base_claims(issuer: str, audience: str, lifetime: int = 600) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": issuer, "aud": audience, "iat": now, "exp": now + lifetime, "jti": uuid.uuid4().hex}


# --- certificates ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def make_tls_files(directory: Path) -> TlsFiles:
    """A CA, a server certificate for 127.0.0.1/localhost, and a client certificate, as PEM files."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder().subject_name(_name("smartgate test CA")).issuer_name(_name("smartgate test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(common_name: str, usage: x509.ObjectIdentifier, san: list[x509.GeneralName]) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        return (cert.public_bytes(serialization.Encoding.PEM),
                key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))

    server_cert, server_key = leaf("smartgate", x509.oid.ExtendedKeyUsageOID.SERVER_AUTH,
                                   [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    client_cert, client_key = leaf("envoy", x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH, [])
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key",
                     directory / "client.pem", directory / "client.key")
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(server_cert)
    files.server_key.write_bytes(server_key)
    files.client_cert.write_bytes(client_cert)
    files.client_key.write_bytes(client_key)
    return files


def with_upstream_tls(envoy: dict[str, Any], cluster: str, tls: TlsFiles, client_cert: bool) -> dict[str, Any]:
    """Add an UpstreamTlsContext (ALPN h2 for gRPC; a client certificate for mTLS) to one cluster."""
    common: dict[str, Any] = {
        "alpn_protocols": ["h2"],
        "validation_context": {"trusted_ca": {"filename": str(tls.ca)},
                               "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": "localhost"}}]},
    }
    if client_cert:
        common["tls_certificates"] = [{"certificate_chain": {"filename": str(tls.client_cert)},
                                       "private_key": {"filename": str(tls.client_key)}}]
    for entry in envoy["static_resources"]["clusters"]:
        if entry["name"] == cluster:
            entry["transport_socket"] = {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                    "sni": "localhost",
                    "common_tls_context": common,
                },
            }
            return envoy
    raise KeyError(cluster)
