"""Render the chart with the real Helm engine (Helm v4 in-process, helm-python-sdk)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from helm_python import Chart

from tests.support.tls import make_tls_files

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "smartgate"
VALUES_FILES = sorted((CHART / "ci").glob("*-values.yaml"))
RELEASE, NAMESPACE = "gw", "fhir"
TLS_MOUNT = "/etc/envoy-tls"  # where the pod mounts the mTLS listener's Secret (templates/deployment.yaml)


@dataclass
class Rendering:
    files: dict[str, str]  # template path -> rendered text
    manifests: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.manifests if m["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [m for m in self.of_kind(kind) if name is None or m["metadata"]["name"] == name]
        assert len(found) == 1, [m["metadata"]["name"] for m in self.of_kind(kind)]
        return found[0]

    def config(self, name: str) -> dict[str, Any]:
        """A rendered config file (``smartgate.yaml`` or ``envoy.yaml``) out of its ConfigMap."""
        for config_map in self.of_kind("ConfigMap"):
            if name in config_map.get("data", {}):
                loaded: dict[str, Any] = yaml.safe_load(config_map["data"][name])
                return loaded
        raise AssertionError(f"no ConfigMap holds {name}")

    @property
    def notes(self) -> str:
        return next(text for path, text in self.files.items() if path.endswith("NOTES.txt"))


def load_values(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return loaded


def render(values: dict[str, Any]) -> Rendering:
    chart = Chart.load(str(CHART))
    try:
        files = chart.render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    finally:
        chart.close()
    manifests = [
        doc for path, text in files.items() if not path.endswith("NOTES.txt") for doc in yaml.safe_load_all(text) if doc
    ]
    return Rendering(files, manifests)


def with_local_tls_files(envoy: dict[str, Any], directory: Path) -> dict[str, Any]:
    """The mTLS listener's files under ``TLS_MOUNT`` -> test certificates in ``directory`` (a CA that signs
    both the server and the client certificate), so Envoy can load the rendering outside a pod."""
    tls = make_tls_files(directory)
    local = {"tls.crt": tls.server_cert, "tls.key": tls.server_key, "client-ca.crt": tls.ca}

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            name = node.get("filename")
            if isinstance(name, str) and name.startswith(TLS_MOUNT + "/"):
                node["filename"] = str(local[name.removeprefix(TLS_MOUNT + "/")])
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for item in node:
                visit(item)

    visit(envoy)
    return envoy
