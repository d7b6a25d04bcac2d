"""Running pieces for the production-feature tests (issue 4): smartgate processes started with
their own arguments, Envoy from a rendered (and possibly edited) configuration, Prometheus
scrapes, decision-log and AuditEvent readers, token shapes, and certificates for TLS."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import grpc
import httpx
import jwt
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from smartgate.dev.demo.http_server import DemoHTTPServer
from smartgate.dev.demo.runner import find_envoy
from smartgate.dev.demo.upstream import start_upstream
from smartgate.envoy_glue.bootstrap import EnvoySettings, render

from .harness import IdentityProvider, SigningKeys, free_port, new_keys, wait_for


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

    def read_config(self) -> dict[str, Any]:
        config: dict[str, Any] = json.loads(self.config_path.read_text(encoding="utf-8"))
        return config

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


def grpc_health(address: str, service: str = "", credentials: grpc.ChannelCredentials | None = None,
                server_name: str | None = None) -> str:
    """grpc.health.v1 Check: SERVING / NOT_SERVING / ..., or the gRPC status code name on failure."""
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    channel = (grpc.secure_channel(address, credentials, options=options) if credentials
               else grpc.insecure_channel(address))
    with channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=3)
        except grpc.RpcError as exc:
            return str(exc.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))


# --- Envoy ----------------------------------------------------------------------------------------


@dataclass
class Envoy:
    process: subprocess.Popen[bytes]
    admin: str  # host:port

    def stat(self, name: str) -> int:
        """One counter from the admin ``/stats`` (0 when absent)."""
        text = httpx.get(f"http://{self.admin}/stats", params={"filter": f"^{re.escape(name)}$"}, timeout=5).text
        for line in text.splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
        return 0

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


# --- the whole path: IdP stand-in + demo FHIR server + smartgate + Envoy ----------------------------


@dataclass
class GatedFhir:
    """A FHIR API behind Envoy and smartgate, as a client sees it."""

    base_url: str  # the public FHIR base, through Envoy (also the token audience)
    keys: SigningKeys
    idp: IdentityProvider
    smartgate: Smartgate
    envoy: Envoy
    client: httpx.Client
    envoy_config: dict[str, Any]  # what Envoy runs, as rendered (and edited)

    def token(self, scope: str = "launch/patient patient/*.rs", patient: str | None = "123", **claims: Any) -> str:
        body = {**base_claims(self.idp.issuer, self.base_url), "sub": "user-1", "client_id": "app-1",
                "scope": scope, **claims}
        if patient is not None:
            body["patient"] = patient
        return sign(self.keys, {k: v for k, v in body.items() if v is not None})

    def get(self, path: str, token: str | None = None, headers: Mapping[str, str] | None = None) -> httpx.Response:
        sent = dict(headers or {})
        if token is not None:
            sent["authorization"] = f"Bearer {token}"
        return self.client.get(self.base_url + path, headers=sent)


def received_smart_headers(response: httpx.Response) -> dict[str, str] | None:
    """The x-smart-* headers the demo FHIR server received; None when the request never reached it."""
    echoed = response.headers.get("x-demo-received-smart")
    return None if echoed is None else dict(json.loads(echoed))


@contextlib.contextmanager
def gated_fhir(workdir: Path, *, issuers: Callable[[IdentityProvider], list[dict[str, Any]]] | None = None,
               introspection: dict[str, dict[str, Any]] | None = None, keys: SigningKeys | None = None,
               upstream_url: str | None = None, lookup_url: str | None = None, workers: int = 1,
               smartgate_args: tuple[str, ...] = (), smartgate_env: Mapping[str, str] | None = None,
               envoy: Mapping[str, Any] | None = None,
               edit_envoy: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
               **config: Any) -> Iterator[GatedFhir]:
    """Start the demo FHIR server (unless ``upstream_url``), an IdP stand-in, smartgate and Envoy.

    ``issuers`` builds the issuer list from the IdP stand-in (default: that IdP through discovery,
    audience the public base); ``introspection`` holds the IdP's RFC 7662 answers by token;
    ``lookup_url`` points smartgate's compartment look-ups somewhere other than the upstream;
    ``config`` entries are added to the smartgate config, ``envoy`` entries to EnvoySettings.
    """
    keys = keys or new_keys()
    idp = IdentityProvider(keys, introspection=introspection)
    demo = None
    if upstream_url is None:
        port = free_port()
        demo = start_upstream("127.0.0.1", port)
        upstream_url = f"http://127.0.0.1:{port}/fhir"
    grpc_port = free_port_pair() if workers > 1 else free_port()
    http_port, envoy_port, admin_port = free_port(), free_port(), free_port()
    base_url = f"http://127.0.0.1:{envoy_port}/fhir"
    settings = smartgate_config(
        grpc_port=grpc_port, http_port=http_port, base_url=base_url, upstream_url=lookup_url or upstream_url,
        issuers=issuers(idp) if issuers is not None else [{"issuer": idp.issuer}], workdir=workdir, **config)
    envoy_settings = EnvoySettings(**{
        "listen_host": "127.0.0.1", "listen_port": envoy_port, "admin_port": admin_port, "authz_port": grpc_port,
        "authz_workers": workers, "upstream_url": upstream_url, "smartgate_http_port": http_port, **(envoy or {})})
    envoy_config = render(envoy_settings)
    if edit_envoy is not None:
        envoy_config = edit_envoy(envoy_config)
    try:
        with running_smartgate(settings, workdir, args=smartgate_args, env=smartgate_env) as smartgate, \
                running_envoy(envoy_config, workdir) as proxy, httpx.Client(timeout=10) as client:
            yield GatedFhir(base_url, keys, idp, smartgate, proxy, client, envoy_config)
    finally:
        if demo is not None:
            demo.shutdown()
            demo.server_close()
        idp.close()


class RecordingUpstream:
    """An HTTP upstream that records what it received and answers every GET with a searchset Bundle
    of total 1 (0 for smartgate's probe patient), after ``delay`` seconds when the path holds
    ``slow_marker`` (never for the probe): a FHIR server whose searches are slow."""

    def __init__(self, delay: float = 0.0, slow_marker: str = "") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/fhir"
        self.received: list[tuple[str, dict[str, str]]] = []  # (path, lower-cased headers)
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                upstream.received.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                probe = "smartgate-probe-" in self.path
                if delay and slow_marker in self.path and not probe:
                    time.sleep(delay)
                total = 0 if probe else 1
                data = json.dumps({"resourceType": "Bundle", "type": "searchset", "total": total}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/fhir+json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = DemoHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def headers_for(self, marker: str) -> list[dict[str, str]]:
        return [headers for path, headers in self.received if marker in path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- Prometheus -----------------------------------------------------------------------------------


@dataclass
class Metrics:
    """A parsed scrape: families by name, and sample values by (sample name, labels)."""

    raw: str
    types: dict[str, str]
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = field(default_factory=dict)
    rows: list[tuple[str, dict[str, str]]] = field(default_factory=list)  # every sample's name and labels

    @classmethod
    def parse(cls, text: str) -> Metrics:
        metrics = cls(raw=text, types={})
        for family in text_string_to_metric_families(text):
            metrics.types[family.name] = family.type
            for sample in family.samples:
                metrics.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
                metrics.rows.append((sample.name, dict(sample.labels)))
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
        "validation_context": {
            "trusted_ca": {"filename": str(tls.ca)},
            "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": "localhost"}}],
        },
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
