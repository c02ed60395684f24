"""The chart offline: lint, rendering, least-privilege RBAC, pod hardening, schema, deploy/ drift."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest
import render_deploy
import yaml
from conftest import ALL_ON, CHART, NAMESPACE, NAMESPACED, objects, of_kind, one, render

BINARY = "/usr/local/bin/confluence-auth-operator"
CRD_KINDS = {"confluenceinstallations", "confluenceuserauths"}
SECRET_VERBS = {"get", "list", "watch", "create", "update", "patch", "delete"}


def rules(doc: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = doc.get("rules") or []
    return found


def roles(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return of_kind(docs, "ClusterRole") + of_kind(docs, "Role")


def grants(role: dict[str, Any], group: str, resource: str) -> set[str]:
    """Verbs `role` grants on `group/resource` (by any rule without resourceNames)."""
    verbs: set[str] = set()
    for rule in rules(role):
        if group in rule.get("apiGroups", []) and resource in rule.get("resources", []) and not rule.get("resourceNames"):
            verbs |= set(rule["verbs"])
    return verbs


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert len(pod["containers"]) == 1
    found: dict[str, Any] = pod["containers"][0]
    return found


def env(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(docs)["env"]}


@pytest.mark.parametrize("values", [None, ALL_ON, NAMESPACED], ids=["defaults", "all-on", "namespaced"])
def test_lint_is_clean(values: dict[str, Any] | None) -> None:
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    # Severity 1 is informational ("icon is recommended"); nothing at warning or error level.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_defaults_render_the_operator_and_nothing_optional() -> None:
    docs = objects()
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Service", "Deployment"]
    )
    for doc in docs:
        if doc["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]
    # The keys Secret is the operator's, created at run time: the chart never renders it, so an
    # uninstall cannot delete it.
    assert of_kind(docs, "Secret") == []


def test_every_optional_feature_renders() -> None:
    docs = objects(ALL_ON)
    for kind in ["Ingress", "ServiceMonitor", "PrometheusRule", "PodDisruptionBudget", "NetworkPolicy"]:
        one(docs, kind)

    ingress = one(docs, "Ingress")["spec"]
    assert ingress["ingressClassName"] == "nginx"
    assert ingress["tls"] == [{"hosts": ["confluence-auth.acme.test"], "secretName": "confluence-auth-operator-tls"}]
    (rule,) = ingress["rules"]
    assert rule["host"] == "confluence-auth.acme.test"
    (path,) = rule["http"]["paths"]
    assert (path["path"], path["pathType"]) == ("/oauth", "Prefix")
    assert path["backend"]["service"] == {"name": "confluence-auth-operator", "port": {"name": "webhook"}}

    monitor = one(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"

    pdb = one(docs, "PodDisruptionBudget")["spec"]
    assert pdb["minAvailable"] == 1
    assert pdb["selector"]["matchLabels"] == one(docs, "Deployment")["spec"]["selector"]["matchLabels"]

    policy = one(docs, "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    ingress_ports = [p["port"] for r in policy["ingress"] for p in r["ports"]]
    assert ingress_ports == ["webhook", "metrics"]
    assert policy["ingress"][0]["from"] == ALL_ON["networkPolicy"]["webhookFrom"]
    egress_ports = sorted({p["port"] for r in policy["egress"] for p in r["ports"]})
    assert egress_ports == [53, 443, 6443]
    # 443 (Atlassian) once, whatever the API server ports are.
    assert [p["port"] for p in policy["egress"][1]["ports"]] == [443, 6443]


def test_alerts_cover_expiry_revocation_reauthorization_refresh_failures_and_leadership() -> None:
    rule = one(objects(ALL_ON), "PrometheusRule")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert set(alerts) == {
        "ConfluenceAuthTokenExpiringUnrefreshed",
        "ConfluenceAuthCredentialRevoked",
        "ConfluenceAuthReauthorizationDue",
        "ConfluenceAuthRefreshFailures",
        "ConfluenceAuthNoLeader",
    }
    job = 'job="confluence-auth-operator"'
    assert alerts["ConfluenceAuthTokenExpiringUnrefreshed"]["expr"] == (
        f"confluence_auth_access_token_expiry_seconds{{{job}}} < 300"
    )
    assert 'confluence_auth_resources{' + job + ', phase="Revoked"}' in alerts["ConfluenceAuthCredentialRevoked"]["expr"]
    assert alerts["ConfluenceAuthReauthorizationDue"]["expr"] == (
        f"confluence_auth_refresh_token_expiry_seconds{{{job}}} < 1209600"
    )
    assert "increase(confluence_auth_refreshes_total{" + job + ', result!="success"}[30m])' in (
        alerts["ConfluenceAuthRefreshFailures"]["expr"]
    )
    assert alerts["ConfluenceAuthNoLeader"]["expr"] == f"(sum(confluence_auth_leader{{{job}}}) or vector(0)) < 1"
    for alert in alerts.values():
        assert alert["labels"]["severity"] in ("critical", "warning")
        # Prometheus' own template markers survive Helm's templating.
        assert "{{ $labels" in alert["annotations"]["summary"] or "{{ $value" in alert["annotations"]["summary"] or (
            alert["alert"] == "ConfluenceAuthNoLeader"
        )


@pytest.mark.parametrize("values", [None, ALL_ON, NAMESPACED], ids=["defaults", "all-on", "namespaced"])
def test_rbac_has_no_wildcard_anywhere(values: dict[str, Any] | None) -> None:
    docs = objects(values)
    assert roles(docs), "the chart grants something"
    for role in roles(docs):
        for rule in rules(role):
            assert "nonResourceURLs" not in rule
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert not any("*" in item for item in rule.get(field, [])), (role["metadata"], rule)


def test_cluster_wide_mode_grants_exactly_what_the_operator_uses() -> None:
    docs = objects()
    cluster_role = one(docs, "ClusterRole")
    for plural in CRD_KINDS:
        assert grants(cluster_role, "confluence-auth.dev", plural) == {"get", "list", "watch"}
        assert grants(cluster_role, "confluence-auth.dev", f"{plural}/status") == {"get", "update", "patch"}
    assert grants(cluster_role, "", "secrets") == SECRET_VERBS
    assert grants(cluster_role, "", "events") == {"create", "patch"}
    assert grants(cluster_role, "events.k8s.io", "events") == {"create", "patch"}
    granted = {(g, r) for rule in rules(cluster_role) for g in rule["apiGroups"] for r in rule["resources"]}
    assert granted == {
        ("confluence-auth.dev", "confluenceinstallations"),
        ("confluence-auth.dev", "confluenceuserauths"),
        ("confluence-auth.dev", "confluenceinstallations/status"),
        ("confluence-auth.dev", "confluenceuserauths/status"),
        ("", "secrets"),
        ("", "events"),
        ("events.k8s.io", "events"),
    }, "leases (or anything else) must not be cluster-wide"
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == cluster_role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "confluence-auth-operator", "namespace": NAMESPACE}]


@pytest.mark.parametrize("values", [None, NAMESPACED], ids=["cluster-wide", "namespaced"])
def test_leases_only_in_the_operator_namespace(values: dict[str, Any] | None) -> None:
    docs = objects(values)
    with_leases = [r for r in roles(docs) if grants(r, "coordination.k8s.io", "leases")]
    assert [(r["kind"], r["metadata"]["namespace"]) for r in with_leases] == [("Role", NAMESPACE)]
    assert grants(with_leases[0], "coordination.k8s.io", "leases") == {"get", "list", "watch", "create", "update", "patch"}


def test_namespaced_mode_has_no_cluster_role_and_a_role_per_namespace() -> None:
    docs = objects(NAMESPACED)
    assert of_kind(docs, "ClusterRole") == [] and of_kind(docs, "ClusterRoleBinding") == []
    assert env(docs)["WATCH_NAMESPACES"] == "team-a,team-b"
    for ns in ["team-a", "team-b"]:
        (role,) = [r for r in of_kind(docs, "Role") if r["metadata"]["namespace"] == ns]
        assert grants(role, "", "secrets") == SECRET_VERBS
        for plural in CRD_KINDS:
            assert grants(role, "confluence-auth.dev", plural) == {"get", "list", "watch"}
            assert grants(role, "confluence-auth.dev", f"{plural}/status") == {"get", "update", "patch"}
        assert grants(role, "events.k8s.io", "events") == {"create", "patch"}
        (binding,) = [b for b in of_kind(docs, "RoleBinding") if b["metadata"]["namespace"] == ns]
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
        assert binding["subjects"][0]["namespace"] == NAMESPACE
    # In its own namespace the operator reads only the keys Secret by name, and may create it.
    (own,) = [r for r in of_kind(docs, "Role") if r["metadata"]["namespace"] == NAMESPACE]
    assert grants(own, "", "secrets") == {"create"}
    named = [r for r in rules(own) if r.get("resourceNames")]
    assert named == [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["confluence-auth-operator-keys"], "verbs": ["get"]}]


def test_cluster_wide_mode_sets_no_namespace_filter() -> None:
    assert "WATCH_NAMESPACES" not in env(objects())


def test_the_pod_is_hardened() -> None:
    docs = objects()
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container(docs)["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["runAsNonRoot"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert "privileged" not in security
    assert pod["serviceAccountName"] == "confluence-auth-operator"
    assert pod["terminationGracePeriodSeconds"] == 30


def test_the_operator_exits_before_the_grace_period_ends() -> None:
    # SIGTERM finishes the refreshes in flight, but exits 5 s before the kubelet's SIGKILL.
    assert env(objects())["SHUTDOWN_TIMEOUT"] == "25s"
    longer = objects({"terminationGracePeriodSeconds": 120})
    assert one(longer, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 120
    assert env(longer)["SHUTDOWN_TIMEOUT"] == "115s"
    assert env(objects({"terminationGracePeriodSeconds": 3}))["SHUTDOWN_TIMEOUT"] == "1s"


def test_probes_and_resources() -> None:
    docs = objects()
    c = container(docs)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"webhook": 8080, "metrics": 9090}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    # The probes' port is where the operator serves them.
    assert env(docs)["METRICS_ADDR"] == "0.0.0.0:9090"
    assert env(docs)["WEBHOOK_ADDR"] == "0.0.0.0:8080"
    for bound in ("requests", "limits"):
        assert set(c["resources"][bound]) == {"cpu", "memory"}, c["resources"]
    service = one(docs, "Service")["spec"]
    assert [(p["name"], p["port"], p["targetPort"]) for p in service["ports"]] == [
        ("webhook", 8080, "webhook"),
        ("metrics", 9090, "metrics"),
    ]


def test_the_container_runs_the_operator_configured_from_values() -> None:
    docs = objects({"publicUrl": "https://auth.acme.test", "logging": {"format": "plain"}, "extraArgs": ["--link-ttl=1h"]})
    c = container(docs)
    assert c["command"] == [BINARY]
    assert c["args"] == ["run", "--link-ttl=1h"]
    e = env(docs)
    assert e["PUBLIC_URL"] == "https://auth.acme.test"
    assert e["OPERATOR_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert e["LOG_FORMAT"] == "plain"
    assert e["KEYS_SECRET"] == "confluence-auth-operator-keys"
    assert (e["LEASE_NAME"], e["LEASE_DURATION"]) == ("confluence-auth-operator", "15s")
    assert env(objects())["LOG_FORMAT"] == "json"


def test_a_shard_runs_with_its_selector_and_its_own_lease() -> None:
    shard = {"selector": "shard in (a,b)", "leader": {"leaseName": "confluence-auth-operator-shard-a"}}
    e = env(objects(shard))
    assert e["LABEL_SELECTOR"] == "shard in (a,b)"
    assert e["LEASE_NAME"] == "confluence-auth-operator-shard-a"
    # No selector (the default): every credential, no LABEL_SELECTOR at all.
    assert "LABEL_SELECTOR" not in env(objects())
    # Shards on the default Lease would elect one leader among them all: refused.
    with pytest.raises(helm.HelmError) as error:
        objects({"selector": "shard=a"})
    assert "give this shard its own leader.leaseName" in str(error.value)


def test_webhook_limits_follow_the_ingress() -> None:
    # Behind an ingress every request comes from the controller: rate-limit by X-Forwarded-For.
    assert env(objects())["TRUST_FORWARDED_FOR"] == "false"
    assert env(objects(ALL_ON))["TRUST_FORWARDED_FOR"] == "true"
    assert env(objects({**ALL_ON, "webhook": {"trustForwardedFor": False}}))["TRUST_FORWARDED_FOR"] == "false"
    assert "ALLOWED_SITE_SUFFIXES" not in env(objects()), "empty keeps the operator's default list"
    custom = env(objects({"allowedSiteSuffixes": ["atlassian.net", "acme.test"], "webhook": {"rateLimit": 0.5}}))
    assert custom["ALLOWED_SITE_SUFFIXES"] == "atlassian.net,acme.test"
    assert custom["WEBHOOK_RATE_LIMIT"] == "0.5"
    assert (custom["WEBHOOK_RATE_BURST"], custom["WEBHOOK_MAX_CONNECTIONS"], custom["WEBHOOK_HEADER_TIMEOUT"]) == (
        "20",
        "1024",
        "10s",
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": "two"}, "at '/replicaCount': got string, want integer"),
        ({"logging": {"format": "xml"}}, "at '/logging/format': value must be one of 'json', 'plain'"),
        ({"publicURL": "https://x.test"}, "additional properties 'publicURL' not allowed"),
        ({"publicUrl": "auth.acme.test"}, "at '/publicUrl': 'auth.acme.test' does not match pattern"),
        ({"watchNamespaces": ["Team_A"]}, "at '/watchNamespaces/0': 'Team_A' does not match pattern"),
        ({"linkTtl": "1 day"}, "at '/linkTtl': '1 day' does not match pattern"),
        ({"resources": {"requests": "lots"}}, "at '/resources/requests': got string, want object"),
        ({"webhook": {"headerTimeout": "0s"}}, "at '/webhook/headerTimeout'"),
        ({"selector": "shard=a\nshard=b"}, "at '/selector'"),
        ({"selector": ["shard=a"]}, "at '/selector': got array, want string"),
    ],
)
def test_the_schema_rejects_bad_values_with_a_readable_message(values: dict[str, Any], message: str) -> None:
    with helm.Chart.load(CHART) as chart:
        with pytest.raises(helm.HelmValuesError) as error:
            chart.validate_schema(values)
        assert message in str(error.value)
        # An install renders through the same check.
        with pytest.raises(helm.HelmValuesError) as error:
            chart.render(values, name="x", namespace="y")
        assert message in str(error.value)


def test_the_schema_accepts_every_documented_value() -> None:
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(chart.values)
        chart.validate_schema(NAMESPACED)


def test_notes_tell_the_next_steps_with_exact_commands() -> None:
    notes = render()["NOTES.txt"]
    for line in [
        "kubectl -n NS create secret generic atlassian-app --from-literal=client-secret='<client secret>'",
        "kubectl -n NS apply -f examples/installation.yaml",
        "kubectl -n NS get cfi acme -o jsonpath='{.status.authorizationUrl}'",
        "https://confluence-auth.example.com/oauth/callback",
        "WARNING: publicUrl is still the placeholder",
        f"kubectl -n {NAMESPACE} get secret confluence-auth-operator-keys -o yaml > confluence-auth-operator-keys.backup.yaml",
    ]:
        assert line in notes, f"missing {line!r} in NOTES.txt:\n{notes}"
    configured = render({"publicUrl": "https://auth.acme.test/", "ingress": {"enabled": True}})["NOTES.txt"]
    assert "https://auth.acme.test/oauth/callback" in configured
    assert "WARNING" not in configured and "No Ingress" not in configured


def test_deploy_manifests_are_the_chart_rendered_with_defaults() -> None:
    for path, text in render_deploy.expected().items():
        assert path.read_text() == text, f"{path.name} drifted: run python3 tests/chart/render_deploy.py"
    docs = [d for d in yaml.safe_load_all((render_deploy.DEPLOY / "confluence-auth-operator.yaml").read_text()) if d]
    assert docs[0] == {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": NAMESPACE,
            "labels": {"app.kubernetes.io/part-of": "confluence-auth", "pod-security.kubernetes.io/enforce": "restricted"},
        },
    }
    assert docs[1:] == sorted(objects(), key=lambda d: render_deploy.ORDER.index(template_of(d)))


def template_of(doc: dict[str, Any]) -> str:
    kind = doc["kind"]
    if kind in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"):
        return "rbac.yaml"
    return {"ServiceAccount": "serviceaccount.yaml", "Service": "service.yaml", "Deployment": "deployment.yaml"}[kind]
