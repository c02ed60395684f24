"""The chart and the examples against an API server (the testbed): `kubectl apply` of the rendered
manifests, deploy/ and examples/, and a Helm install → upgrade → uninstall through helm_python
that leaves the operator's keys Secret in place. Nothing runs in pods: the testbed stores objects.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from conftest import ALL_ON, CHART, NAMESPACED, REPO, Cluster, objects, render

FIXTURES = Path(__file__).parent / "fixtures"
KEYS = "confluence-auth-operator-keys"
WAIT = 30.0


def write_rendered(tmp_path: Path, values: dict[str, Any], namespace: str) -> Path:
    """The chart rendered into one multi-document file, as `helm template > file` would."""
    texts = [text for name, text in sorted(render(values, namespace).items()) if name != "NOTES.txt"]
    out = tmp_path / f"rendered-{namespace}.yaml"
    out.write_text("\n---\n".join(texts))
    return out


def applied(cluster: Cluster, path: Path, namespace: str | None = None) -> list[str]:
    args = ["apply", "-f", str(path)] + (["-n", namespace] if namespace else [])
    lines = cluster.kubectl(*args).stdout.splitlines()
    assert lines, f"kubectl applied nothing from {path}"
    for line in lines:
        assert line.endswith((" created", " configured", " unchanged")), line
    return lines


def test_rendered_chart_deploy_and_examples_apply_cleanly(cluster: Cluster, tmp_path: Path) -> None:
    applied(cluster, REPO / "crds")
    applied(cluster, FIXTURES / "monitoring-crds.yaml")

    # deploy/: the README's two commands.
    applied(cluster, REPO / "deploy" / "crds.yaml")
    lines = applied(cluster, REPO / "deploy" / "confluence-auth-operator.yaml")
    assert "namespace/confluence-auth created" in lines or "namespace/confluence-auth unchanged" in lines
    deployment = cluster.get("-n", "confluence-auth", "deployment", "confluence-auth-operator")
    assert deployment is not None
    assert deployment["spec"]["template"]["spec"]["containers"][0]["args"] == ["run"]
    assert cluster.get("clusterrole", "confluence-auth-operator") is not None

    # The chart with every optional feature, cluster-wide and namespaced.
    ns = cluster.namespace("chart-all-on")
    lines = applied(cluster, write_rendered(tmp_path, ALL_ON, ns))
    for kind in [
        "serviceaccount",
        "clusterrole.rbac.authorization.k8s.io",
        "role.rbac.authorization.k8s.io",
        "service",
        "deployment.apps",
        "ingress.networking.k8s.io",
        "servicemonitor.monitoring.coreos.com",
        "prometheusrule.monitoring.coreos.com",
        "poddisruptionbudget.policy",
        "networkpolicy.networking.k8s.io",
    ]:
        assert any(line.startswith(kind + "/") for line in lines), f"no {kind} in {lines}"
    rule = cluster.get("-n", ns, "prometheusrule", "confluence-auth-operator")
    assert rule is not None and len(rule["spec"]["groups"][0]["rules"]) == 5

    scoped = cluster.namespace("chart-scoped")
    for team in NAMESPACED["watchNamespaces"]:
        cluster.namespace(team)
    applied(cluster, write_rendered(tmp_path, NAMESPACED, scoped))
    role = cluster.get("-n", "team-a", "role", "confluence-auth-operator")
    assert role is not None and any("secrets" in r["resources"] for r in role["rules"])

    # examples/: what users apply in their own namespace.
    app = cluster.namespace("chart-examples")
    for example in sorted((REPO / "examples").glob("*.yaml")):
        # An example that names its namespace (the gateway's ClusterRoleBinding subject must)
        # goes there as written: kubectl refuses `-n` that contradicts the file.
        pinned = {d["metadata"].get("namespace") for d in yaml.safe_load_all(example.read_text()) if d}
        pinned.discard(None)
        for namespace in sorted(pinned):
            cluster.namespace(namespace)
        applied(cluster, example, None if pinned else app)
    assert cluster.get("-n", app, "cfi", "acme") is not None
    assert cluster.get("-n", app, "cfua", "alice") is not None
    reader = cluster.get("-n", app, "deployment", "confluence-reader")
    assert reader is not None
    volume = reader["spec"]["template"]["spec"]["volumes"][0]
    assert volume == {"name": "confluence", "secret": {"secretName": "acme-token"}}


def start_operator(cluster: Cluster, namespace: str, values: dict[str, Any]) -> subprocess.Popen[bytes]:
    """The operator binary with the environment the chart gives its container (so every value
    the chart sets must parse), listening on free loopback ports instead of 8080/9090."""
    (deployment,) = [d for d in objects(values, namespace) if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    chart_env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    environment = {
        **os.environ,
        **chart_env,
        "KUBECONFIG": str(cluster.kubeconfig),
        "OPERATOR_NAMESPACE": namespace,  # the chart's fieldRef
        # Only this test's namespace: the examples applied by the other test name real Atlassian
        # hosts, which this machine cannot reach.
        "WATCH_NAMESPACES": namespace,
        "WEBHOOK_ADDR": "127.0.0.1:0",
        "METRICS_ADDR": "127.0.0.1:0",
        "RUST_LOG": "warn",
    }
    return subprocess.Popen([*cluster.operator, *container["args"]], cwd=REPO, env=environment, stdout=subprocess.DEVNULL)


def exited(operator: subprocess.Popen[bytes]) -> None:
    raise AssertionError(f"the operator exited ({operator.returncode}) with the chart's environment")


def wait_for(what: str, check: Any) -> Any:
    deadline = time.monotonic() + WAIT
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_helm_install_upgrade_uninstall_keeps_the_keys_secret(cluster: Cluster) -> None:
    ns = cluster.namespace("helm-release")
    values = {
        "publicUrl": "https://auth.acme.test",
        "replicaCount": 1,
        "podDisruptionBudget": {"enabled": True},
        "ingress": {"enabled": True},
        "allowedSiteSuffixes": ["atlassian.net", "acme.test"],
        "webhook": {"rateLimit": 0.5},
    }
    with cluster.helm(ns) as helm:
        release = helm.install(str(CHART), "cao", values, namespace=ns, timeout=120)
        assert (release["revision"], release["status"]) == (1, "deployed"), release["status"]
        assert "get cfi acme -o jsonpath='{.status.authorizationUrl}'" in release["notes"]
        deployment = cluster.get("-n", ns, "deployment", "cao-confluence-auth-operator")
        assert deployment is not None and deployment["spec"]["replicas"] == 1
        assert cluster.get("crd", "confluenceinstallations.confluence-auth.dev") is not None
        assert cluster.get("clusterrolebinding", "cao-confluence-auth-operator") is not None

        # The operator (the binary the image ships) creates the keys Secret on its first start.
        operator = start_operator(cluster, ns, values)
        try:
            keys = wait_for(
                "the operator's keys Secret",
                lambda: cluster.get("-n", ns, "secret", KEYS) or (operator.poll() is not None and exited(operator)),
            )
        finally:
            operator.terminate()
            operator.wait(timeout=30)
        assert sorted(keys["data"]) == ["key-1", "primary"]

        upgraded = helm.upgrade(str(CHART), "cao", {**values, "replicaCount": 3}, namespace=ns, timeout=120)
        assert (upgraded["revision"], upgraded["status"]) == (2, "deployed"), upgraded["status"]
        deployment = cluster.get("-n", ns, "deployment", "cao-confluence-auth-operator")
        assert deployment is not None and deployment["spec"]["replicas"] == 3

        helm.uninstall("cao", timeout=120)
        for kind, name in [
            ("deployment", "cao-confluence-auth-operator"),
            ("service", "cao-confluence-auth-operator"),
            ("serviceaccount", "cao-confluence-auth-operator"),
            ("poddisruptionbudget", "cao-confluence-auth-operator"),
            ("role", "cao-confluence-auth-operator-leader"),
        ]:
            assert cluster.get("-n", ns, kind, name) is None, f"{kind}/{name} outlived the uninstall"
        assert cluster.get("clusterrole", "cao-confluence-auth-operator") is None
        assert helm.list(all_states=True) == []

    survivor = cluster.get("-n", ns, "secret", KEYS)
    assert survivor is not None, "helm uninstall deleted the keys Secret"
    assert survivor["data"] == keys["data"], "the keys changed"
    # Helm keeps CRDs from crds/ (and so every credential) across an uninstall.
    assert cluster.get("crd", "confluenceinstallations.confluence-auth.dev") is not None
