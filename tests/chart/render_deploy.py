"""Renders deploy/ (the plain manifests for `kubectl apply`) from the chart with its defaults.

    python3 tests/chart/render_deploy.py          # rewrite deploy/
    python3 tests/chart/render_deploy.py --check  # exit 1 when deploy/ drifted

test_chart.py runs the same comparison, so a chart change without a re-render fails the suite.
"""

from __future__ import annotations

import sys
from pathlib import Path

import helm_python as helm

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "confluence-auth-operator"
DEPLOY = REPO / "deploy"
RELEASE = "confluence-auth-operator"
NAMESPACE = "confluence-auth"

# Templates in the order kubectl should create them (the namespace, who the pod runs as and
# what it may do, then the workload).
ORDER = [
    "serviceaccount.yaml",
    "rbac.yaml",
    "service.yaml",
    "deployment.yaml",
    "pdb.yaml",
    "networkpolicy.yaml",
    "ingress.yaml",
    "servicemonitor.yaml",
    "prometheusrule.yaml",
]

HEADER = f"""\
# confluence-auth-operator: plain manifests for `kubectl apply`, in namespace {NAMESPACE}.
# Generated from charts/confluence-auth-operator with its default values by
# `python3 tests/chart/render_deploy.py`; do not edit (a test re-renders and compares).
#
#   kubectl apply -f deploy/crds.yaml
#   kubectl apply -f deploy/confluence-auth-operator.yaml
#
# PUBLIC_URL below is the chart's placeholder: for your own URL, Ingress, alerts or watched
# namespaces, use the chart (or `helm template --set publicUrl=https://... `).
apiVersion: v1
kind: Namespace
metadata:
  name: {NAMESPACE}
  labels:
    app.kubernetes.io/part-of: confluence-auth
    pod-security.kubernetes.io/enforce: restricted
"""


def render_operator() -> str:
    """deploy/confluence-auth-operator.yaml as it should be."""
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(name=RELEASE, namespace=NAMESPACE)
    prefix = f"{chart_dir_name()}/templates/"
    names = {path.removeprefix(prefix) for path in rendered}
    unknown = names - set(ORDER) - {"NOTES.txt"}
    if unknown:
        raise SystemExit(f"render_deploy.py: add {sorted(unknown)} to ORDER")
    docs = [HEADER.rstrip("\n")]
    for name in ORDER:
        text = rendered.get(prefix + name, "").strip("\n")
        # Optional templates render to nothing (or only a comment) with the defaults.
        if any(line.strip() and not line.lstrip().startswith("#") for line in text.splitlines()):
            docs.append(text.rstrip())
    return "\n---\n".join(docs) + "\n"


def render_crds() -> str:
    """deploy/crds.yaml: the repository's crds/ concatenated (what `crd` prints)."""
    return "".join((REPO / "crds" / name).read_text() for name in sorted(p.name for p in (REPO / "crds").iterdir()))


def chart_dir_name() -> str:
    return CHART.name


def expected() -> dict[Path, str]:
    return {DEPLOY / "confluence-auth-operator.yaml": render_operator(), DEPLOY / "crds.yaml": render_crds()}


def main(argv: list[str]) -> int:
    drifted = [path for path, text in expected().items() if not path.exists() or path.read_text() != text]
    if "--check" in argv:
        for path in drifted:
            print(f"{path.relative_to(REPO)} drifted: run python3 tests/chart/render_deploy.py", file=sys.stderr)
        return 1 if drifted else 0
    DEPLOY.mkdir(exist_ok=True)
    for path, text in expected().items():
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
