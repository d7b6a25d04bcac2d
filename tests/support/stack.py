"""The stack every process-level suite runs: an IdP stand-in, a FHIR server, ``smartgate serve``
and the real Envoy in front, on free loopback ports.

One start path: ``launch_smartgate`` and ``launch_envoy`` (the process handles), ``gateway``
(smartgate + Envoy + an HTTP client) on top of them, and three views of that gateway, one per
way suites talk to it:
- ``start_stack`` / ``Stack``: the integration suite's session stack (demo FHIR server, small body limit);
- ``gated_fhir`` / ``GatedFhir``: the production-feature and soak tests (config and Envoy edits by keyword);
- ``fault_stack`` / ``FaultStack``: the fault tests (their own IdP, keys and recording upstream).
``start_smartgate`` / ``start_envoy`` hand back the bare process for callers that manage it themselves.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import jwt
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from smartgate.dev.demo.upstream import start_upstream
from smartgate.envoy_glue.bootstrap import EnvoySettings, render

from .fhir_upstream import RecordingUpstream
from .idp import IdentityProvider, SigningKeys, base_claims, new_keys, sign
from .logs import settled_text
from .metrics import Metrics
from .ports import free_consecutive_ports, free_port
from .processes import start_envoy_process, start_smartgate_process, stop
from .waits import wait_for

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
    return [json.loads(line) for line in settled_text(path).splitlines() if line.strip()]


def smartgate_config(
    *,
    grpc_port: int,
    http_port: int,
    base_url: str,
    upstream_url: str,
    issuers: list[dict[str, Any]],
    workdir: Path,
    **extra: Any,
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "listen": {"grpc": f"127.0.0.1:{grpc_port}", "http": f"127.0.0.1:{http_port}"},
        "fhir": {"base_url": base_url, "upstream_url": upstream_url},
        "issuers": issuers,
        "decision_log": str(workdir / "decisions.jsonl"),
    }
    config.update(extra)
    return config


def launch_smartgate(
    config: dict[str, Any],
    workdir: Path,
    *,
    args: tuple[str, ...] = (),
    wait: str = "ready",
    env: Mapping[str, str] | None = None,
) -> Smartgate:
    """Start ``smartgate serve``; ``wait`` is ``ready`` (/readyz 200), ``alive`` (/healthz 200) or ``none``."""
    config_path = workdir / "smartgate.yaml"
    config_path.write_text(json.dumps(config), encoding="utf-8")  # JSON is YAML
    log_path = workdir / "smartgate.out"
    process = start_smartgate_process(config_path, log_path, args=args, env=env)
    decision_log = config.get("decision_log", "stdout")
    audit = config.get("audit", {}).get("destination", "off")
    handle = Smartgate(
        process,
        config_path,
        config["listen"]["http"],
        config["listen"]["grpc"],
        log_path,
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


def start_smartgate(config: dict[str, Any], workdir: Path) -> subprocess.Popen[bytes]:
    """``launch_smartgate`` for callers that hold the bare process (e.g. with ``processes.running``)."""
    return launch_smartgate(config, workdir).process


@contextlib.contextmanager
def running_smartgate(config: dict[str, Any], workdir: Path, **kwargs: Any) -> Iterator[Smartgate]:
    handle = launch_smartgate(config, workdir, **kwargs)
    try:
        yield handle
    finally:
        stop(handle.process)


def grpc_health(
    address: str, service: str = "", credentials: grpc.ChannelCredentials | None = None, server_name: str | None = None
) -> str:
    """grpc.health.v1 Check: SERVING / NOT_SERVING / ..., or the gRPC status code name on failure."""
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    channel = (
        grpc.secure_channel(address, credentials, options=options) if credentials else grpc.insecure_channel(address)
    )
    with channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=3
            )
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
    """Run the real Envoy binary on a configuration dict (usually ``bootstrap.render(...)``, edited)."""
    config_path = workdir / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    process = start_envoy_process(config_path, workdir / f"{name}.log")
    address = config["admin"]["address"]["socket_address"]
    admin = f"{address['address']}:{address['port_value']}"
    try:
        wait_for(f"http://{admin}/ready", process=process)
    except BaseException:
        stop(process)
        raise
    return Envoy(process, admin)


def start_envoy(settings: EnvoySettings, workdir: Path, name: str = "envoy") -> subprocess.Popen[bytes]:
    """``launch_envoy`` on the rendering of ``settings``, for callers that hold the bare process."""
    return launch_envoy(render(settings), workdir, name).process


@contextlib.contextmanager
def running_envoy(config: dict[str, Any], workdir: Path, name: str = "envoy") -> Iterator[Envoy]:
    envoy = launch_envoy(config, workdir, name)
    try:
        yield envoy
    finally:
        stop(envoy.process)


# --- the gateway: smartgate + Envoy on loopback ports -----------------------------------------------


@dataclass(frozen=True)
class LoopbackPorts:
    """The ports one gateway listens on; ``grpc`` is the first of ``workers`` consecutive ports."""

    grpc: int
    http: int
    envoy: int
    admin: int

    @classmethod
    def allocate(cls, workers: int = 1) -> LoopbackPorts:
        grpc_port = free_consecutive_ports(workers) if workers > 1 else free_port()
        return cls(grpc_port, free_port(), free_port(), free_port())

    @property
    def base_url(self) -> str:
        """The public FHIR base, through Envoy."""
        return f"http://127.0.0.1:{self.envoy}/fhir"

    def envoy_settings(self, upstream_url: str, **overrides: Any) -> EnvoySettings:
        """EnvoySettings wiring Envoy to these ports and ``upstream_url``; ``overrides`` win."""
        return EnvoySettings(
            **{
                "listen_host": "127.0.0.1",
                "listen_port": self.envoy,
                "admin_port": self.admin,
                "authz_port": self.grpc,
                "upstream_url": upstream_url,
                "smartgate_http_port": self.http,
                **overrides,
            }
        )


@dataclass
class Gateway:
    smartgate: Smartgate
    envoy: Envoy
    client: httpx.Client


@contextlib.contextmanager
def gateway(
    workdir: Path,
    config: dict[str, Any],
    envoy_config: dict[str, Any],
    *,
    args: tuple[str, ...] = (),
    env: Mapping[str, str] | None = None,
    wait: str = "ready",
) -> Iterator[Gateway]:
    """smartgate on ``config`` (started first, waited for per ``wait``), Envoy on ``envoy_config``,
    and a client; all stopped, Envoy before smartgate, however the block ends."""
    with (
        running_smartgate(config, workdir, args=args, env=env, wait=wait) as smartgate,
        running_envoy(envoy_config, workdir) as proxy,
        httpx.Client(timeout=10) as client,
    ):
        yield Gateway(smartgate, proxy, client)


@contextlib.contextmanager
def demo_fhir_server(base_path: str = "/fhir") -> Iterator[str]:
    """The shipped demo FHIR server on a free port; yields its base URL."""
    port = free_port()
    server = start_upstream("127.0.0.1", port, base_path)
    try:
        yield f"http://127.0.0.1:{port}{base_path}"
    finally:
        server.shutdown()
        server.server_close()


# --- the integration suite's session stack ---------------------------------------------------------

MAX_REQUEST_BYTES = 8192


@dataclass
class Stack:
    base_url: str  # the public FHIR base, through Envoy
    keys: SigningKeys
    issuer: str
    audience: str
    workdir: Path
    client: httpx.Client
    smartgate_http: str  # smartgate's own HTTP listener (metrics, health), not through Envoy

    def token(
        self,
        scope: str = "launch/patient patient/*.rs",
        patient: str | None = "123",
        alg: str = "ES256",
        **overrides: Any,
    ) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": "user-1",
            "client_id": "app-1",
            "scope": scope,
            "iat": now,
            "exp": now + 600,
            "jti": uuid.uuid4().hex,
        }
        if patient is not None:
            claims["patient"] = patient
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        key, kid = (self.keys.ec_key, "ec-1") if alg == "ES256" else (self.keys.rsa_key, "rsa-1")
        return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid, "typ": "at+jwt"})

    def get(self, path: str, token: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        return self.client.get(self.base_url + path, headers=headers, **kwargs)

    def post(self, path: str, token: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        return self.client.post(self.base_url + path, headers=headers, **kwargs)

    def decision_log(self) -> str:
        return settled_text(self.workdir / "decisions.jsonl")

    def metric(self, name: str, **labels: str) -> float:
        """The current value of one sample on smartgate's /metrics (0 when it has not appeared yet)."""
        text = self.client.get(f"{self.smartgate_http}/metrics").text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return float(sample.value)
        return 0.0


@contextlib.contextmanager
def start_stack(
    workdir: Path, config_overrides: dict[str, Any] | None = None, envoy_overrides: dict[str, Any] | None = None
) -> Iterator[Stack]:
    """IdP stand-in + demo FHIR server + smartgate + Envoy on free loopback ports."""
    keys = new_keys()
    idp = IdentityProvider(keys)
    ports = LoopbackPorts.allocate()
    audience = "https://fhir.example.org/r4"
    try:
        with demo_fhir_server() as upstream_url:
            config: dict[str, Any] = {
                **smartgate_config(
                    grpc_port=ports.grpc,
                    http_port=ports.http,
                    base_url=ports.base_url,
                    upstream_url=upstream_url,
                    workdir=workdir,
                    issuers=[{"issuer": idp.issuer, "audiences": [audience, ports.base_url]}],
                ),
                "max_request_bytes": MAX_REQUEST_BYTES,
                **(config_overrides or {}),
            }
            settings = ports.envoy_settings(
                upstream_url, base_path="/fhir", max_request_bytes=MAX_REQUEST_BYTES, **(envoy_overrides or {})
            )
            with gateway(workdir, config, render(settings)) as running:
                yield Stack(
                    ports.base_url,
                    keys,
                    idp.issuer,
                    audience,
                    workdir,
                    running.client,
                    f"http://127.0.0.1:{ports.http}",
                )
    finally:
        idp.close()


# --- the production-feature tests' stack ----------------------------------------------------------


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
        body = {
            **base_claims(self.idp.issuer, self.base_url),
            "sub": "user-1",
            "client_id": "app-1",
            "scope": scope,
            **claims,
        }
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
def gated_fhir(
    workdir: Path,
    *,
    issuers: Callable[[IdentityProvider], list[dict[str, Any]]] | None = None,
    introspection: dict[str, dict[str, Any]] | None = None,
    keys: SigningKeys | None = None,
    upstream_url: str | None = None,
    lookup_url: str | None = None,
    workers: int = 1,
    smartgate_args: tuple[str, ...] = (),
    smartgate_env: Mapping[str, str] | None = None,
    envoy: Mapping[str, Any] | None = None,
    edit_envoy: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    grpc_socket: Path | None = None,
    **config: Any,
) -> Iterator[GatedFhir]:
    """Start the demo FHIR server (unless ``upstream_url``), an IdP stand-in, smartgate and Envoy.

    ``issuers`` builds the issuer list from the IdP stand-in (default: that IdP through discovery,
    audience the public base); ``introspection`` holds the IdP's RFC 7662 answers by token;
    ``lookup_url`` points smartgate's compartment look-ups somewhere other than the upstream;
    ``config`` entries are added to the smartgate config, ``envoy`` entries to EnvoySettings;
    ``grpc_socket``: smartgate's gRPC listener is this Unix socket (``listen.grpc: unix:...``), and Envoy's.
    """
    keys = keys or new_keys()
    idp = IdentityProvider(keys, introspection=introspection)
    try:
        with contextlib.ExitStack() as started:
            if upstream_url is None:
                upstream_url = started.enter_context(demo_fhir_server())
            ports = LoopbackPorts.allocate(workers)
            settings = smartgate_config(
                grpc_port=ports.grpc,
                http_port=ports.http,
                base_url=ports.base_url,
                upstream_url=lookup_url or upstream_url,
                issuers=issuers(idp) if issuers is not None else [{"issuer": idp.issuer}],
                workdir=workdir,
                **config,
            )
            socket = {"authz_socket": str(grpc_socket)} if grpc_socket else {}
            if grpc_socket:
                settings["listen"]["grpc"] = f"unix:{grpc_socket}"
            envoy_config = render(ports.envoy_settings(upstream_url, authz_workers=workers, **socket, **(envoy or {})))
            if edit_envoy is not None:
                envoy_config = edit_envoy(envoy_config)
            running = started.enter_context(
                gateway(workdir, settings, envoy_config, args=smartgate_args, env=smartgate_env)
            )
            yield GatedFhir(ports.base_url, keys, idp, running.smartgate, running.envoy, running.client, envoy_config)
    finally:
        idp.close()


# --- the fault tests' stack -----------------------------------------------------------------------

PATIENT_SCOPE = "launch/patient patient/*.rs patient/*.cud"


@dataclass
class FaultStack:
    base_url: str  # the public FHIR base through Envoy, also the token audience
    issuer: str  # the issuer tokens are signed for by default
    keys: SigningKeys
    smartgate: Smartgate
    envoy: Envoy
    upstream: RecordingUpstream
    client: httpx.Client
    config: dict[str, Any]  # the smartgate config as started

    def token(
        self,
        patient: str = "123",
        *,
        kid: str | None = None,
        signing_key: ec.EllipticCurvePrivateKey | None = None,
        issuer: str | None = None,
    ) -> str:
        claims = {
            **base_claims(issuer or self.issuer, self.base_url),
            "sub": "user-1",
            "client_id": "app-1",
            "scope": PATIENT_SCOPE,
            "patient": patient,
        }
        return jwt.encode(
            claims, signing_key or self.keys.ec_key, algorithm="ES256", headers={"kid": kid or "ec-1", "typ": "at+jwt"}
        )

    def send(
        self,
        method: str,
        path: str,
        token: str | None = None,
        *,
        request_id: str = "",
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        timeout: float = 10.0,
    ) -> httpx.Response:
        sent = dict(headers or {})
        if token is not None:
            sent["authorization"] = f"Bearer {token}"
        if request_id:
            sent["x-request-id"] = request_id
        return self.client.request(method, self.base_url + path, headers=sent, content=content, timeout=timeout)

    def get(self, path: str, token: str | None = None, **kwargs: Any) -> httpx.Response:
        return self.send("GET", path, token, **kwargs)

    def ready(self) -> bool:
        try:
            return httpx.get(self.smartgate.url("/readyz"), timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def restart_smartgate(self, workdir: Path) -> Smartgate:
        """Start a new smartgate process with the same config (same ports), logging under ``workdir``."""
        workdir.mkdir(parents=True, exist_ok=True)
        self.smartgate = launch_smartgate(self.config, workdir)
        return self.smartgate


@contextlib.contextmanager
def fault_stack(
    workdir: Path,
    *,
    keys: SigningKeys,
    issuers: list[dict[str, Any]],
    upstream: RecordingUpstream,
    lookup_url: str | None = None,
    lookup: Mapping[str, Any] | None = None,
    wait: str = "ready",
    env: Mapping[str, str] | None = None,
    envoy: Mapping[str, Any] | None = None,
    **config: Any,
) -> Iterator[FaultStack]:
    """Start smartgate (waiting for ``wait``: ready, alive) and Envoy in front of ``upstream``.
    ``lookup_url`` and ``lookup`` (``fhir.lookup``) set the compartment look-ups; ``config`` entries
    are added to the smartgate config, ``envoy`` entries to EnvoySettings."""
    ports = LoopbackPorts.allocate()
    settings = smartgate_config(
        grpc_port=ports.grpc,
        http_port=ports.http,
        base_url=ports.base_url,
        upstream_url=lookup_url or upstream.url,
        issuers=issuers,
        workdir=workdir,
        **config,
    )
    if lookup is not None:
        settings["fhir"]["lookup"] = dict(lookup)
    envoy_config = render(
        ports.envoy_settings(
            upstream.url, max_request_bytes=settings.get("max_request_bytes", 1_048_576), **(envoy or {})
        )
    )
    stack: FaultStack | None = None
    try:
        with gateway(workdir, settings, envoy_config, env=env, wait=wait) as running:
            stack = FaultStack(
                ports.base_url,
                issuers[0]["issuer"],
                keys,
                running.smartgate,
                running.envoy,
                upstream,
                running.client,
                settings,
            )
            yield stack
    finally:
        if stack is not None:
            stop(stack.smartgate.process)  # a restarted smartgate; the gateway stops the first one
