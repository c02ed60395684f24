"""Shared fixtures of the chart tests: the chart, rendering helpers, and a test control plane.

The control plane is the testbed API server. tests/chart.rs (the Rust suite) starts one and
passes CHART_TEST_KUBECONFIG and OPERATOR_BIN; run alone (`python3 -m pytest tests/chart`), the
tests start `cargo run -p testbed -- serve` and `cargo run --bin confluence-auth-operator`.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any, Iterator

import helm_python as helm
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "confluence-auth-operator"
RELEASE = "confluence-auth-operator"
NAMESPACE = "confluence-auth"

# Every optional feature on (and namespaced mode off: see NAMESPACED).
ALL_ON: dict[str, Any] = {
    "publicUrl": "https://confluence-auth.acme.test",
    "ingress": {
        "enabled": True,
        "className": "nginx",
        "annotations": {"cert-manager.io/cluster-issuer": "letsencrypt"},
    },
    "metrics": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "prometheusRule": {"enabled": True},
    },
    "podDisruptionBudget": {"enabled": True},
    "networkPolicy": {
        "enabled": True,
        "webhookFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}],
    },
}

NAMESPACED: dict[str, Any] = {**ALL_ON, "watchNamespaces": ["team-a", "team-b"]}


def render(values: dict[str, Any] | None = None, namespace: str = NAMESPACE) -> dict[str, str]:
    """Template path (without the chart prefix) → rendered text."""
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(values, name=RELEASE, namespace=namespace)
    return {path.split("/templates/", 1)[1]: text for path, text in rendered.items()}


def objects(values: dict[str, Any] | None = None, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    """Every rendered Kubernetes object."""
    docs: list[dict[str, Any]] = []
    for name, text in sorted(render(values, namespace).items()):
        if name == "NOTES.txt":
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


class Cluster:
    """kubectl and helm against one API server."""

    def __init__(self, kubeconfig: Path, operator: list[str]) -> None:
        self.kubeconfig = kubeconfig
        self.operator = operator

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["kubectl", "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed:\n{result.stderr}")
        return result

    def get(self, *args: str) -> dict[str, Any] | None:
        """`kubectl get ... -o json`, or None when NotFound."""
        result = self.kubectl("get", *args, "-o", "json", check=False)
        if result.returncode != 0:
            assert "NotFound" in result.stderr or "not found" in result.stderr, result.stderr
            return None
        found: dict[str, Any] = json.loads(result.stdout)
        return found

    def namespace(self, name: str) -> str:
        self.kubectl("apply", "-f", "-", input=f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n")
        return name

    def helm(self, namespace: str) -> helm.Config:
        return helm.Config(kubeconfig_path=str(self.kubeconfig), namespace=namespace)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    operator = os.environ.get("OPERATOR_BIN")
    operator_cmd = [operator] if operator else ["cargo", "run", "-q", "--bin", "confluence-auth-operator", "--"]
    given = os.environ.get("CHART_TEST_KUBECONFIG")
    if given:
        yield Cluster(Path(given), operator_cmd)
        return
    kubeconfig = tmp_path_factory.mktemp("testbed") / "kubeconfig"
    server = subprocess.Popen(
        ["cargo", "run", "-q", "-p", "testbed", "--", "serve", "--kubeconfig", str(kubeconfig)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = json.loads(server.stdout.readline())
        yield Cluster(Path(line["kubeconfig"]), operator_cmd)
    finally:
        server.terminate()
        server.wait(timeout=30)
