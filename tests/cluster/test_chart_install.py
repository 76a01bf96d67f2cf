"""The Helm chart on a real API server: install per environment, server-side dry-run of every manifest,
and the operator running with exactly the chart's RBAC (a token of the chart's ServiceAccount)."""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.cluster.conftest import REPO_ROOT, Cluster
from tests.cluster.test_operator import fraudmodel

pytestmark = pytest.mark.cluster

CHART = REPO_ROOT / "charts" / "fraudmodel-operator"
VALUES = sorted((REPO_ROOT / "examples").glob("values-*.yaml"))

# The monitoring kinds the prod values enable come from the Prometheus operator; a stub CRD
# per kind (schema left open) lets the API server take them, as a cluster running it would.
MONITORING = [
    ("ServiceMonitor", "servicemonitors"),
    ("PodMonitor", "podmonitors"),
    ("PrometheusRule", "prometheusrules"),
]


CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering", "CustomResourceDefinition"}


def helm_binary(cluster: Cluster) -> str:
    candidate = Path(cluster.kubectl_binary).parent / "helm"
    found = str(candidate) if candidate.exists() else shutil.which("helm")
    if found is None:
        pytest.fail("no helm: scripts/cluster/build builds it")
    return found


def helm(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [helm_binary(cluster), "--kubeconfig", str(cluster.kubeconfig), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=180,
    )


@pytest.fixture(scope="module")
def monitoring_crds(cluster: Cluster) -> None:
    for kind, plural in MONITORING:
        crd = {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.monitoring.coreos.com"},
            "spec": {
                "group": "monitoring.coreos.com",
                "scope": "Namespaced",
                "names": {"kind": kind, "plural": plural},
                "versions": [
                    {
                        "name": "v1",
                        "served": True,
                        "storage": True,
                        "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                    }
                ],
            },
        }
        cluster.apply(yaml.safe_dump(crd))
    cluster.kubectl("wait", "--for=condition=Established", "crd", "-l", "!nonexistent", "--all", "--timeout=60s")


@pytest.mark.parametrize("values", VALUES, ids=[v.stem for v in VALUES])
def test_helm_install_and_server_dry_run_per_environment(cluster: Cluster, monitoring_crds: None, values: Path) -> None:
    env = values.stem.removeprefix("values-")
    release, ns = f"fmo-{env}", f"fmo-{env}-{uuid.uuid4().hex[:6]}"
    for watched in yaml.safe_load(values.read_text()).get("watchNamespaces") or []:
        cluster.kubectl("create", "namespace", watched, check=False)
    # CRDs first, for real (as `helm install` does): a dry run cannot create a kind and use it at once.
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "crd/clusterkopfpeerings.kopf.dev", "--timeout=60s")
    rendered = helm(cluster, "template", release, str(CHART), "-n", ns, "-f", str(values))
    assert rendered.returncode == 0, rendered.stderr
    cluster.kubectl("create", "namespace", ns)
    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    for doc in docs:  # as helm would: namespaced objects without a namespace go to the release's
        if doc["kind"] not in CLUSTER_SCOPED:
            doc["metadata"].setdefault("namespace", ns)
    dry = cluster.kubectl("apply", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump_all(docs), check=False)
    assert dry.returncode == 0, dry.stderr
    installed = helm(
        cluster, "install", release, str(CHART), "-n", ns, "-f", str(values), "--wait", "--timeout", "120s"
    )
    try:
        assert installed.returncode == 0, installed.stderr
        assert "kubectl" in installed.stdout, "NOTES.txt tells the user what to run next"
    finally:
        helm(cluster, "uninstall", release, "-n", ns)
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def token_kubeconfig(cluster: Cluster, namespace: str, service_account: str, path: Path) -> Path:
    """A kubeconfig that authenticates as the chart's ServiceAccount (its RBAC, nothing more)."""
    token = cluster.kubectl("create", "token", service_account, "-n", namespace, "--duration=1h").stdout.strip()
    config: dict[str, Any] = yaml.safe_load(cluster.kubeconfig.read_text())
    context = next(c for c in config["contexts"] if c["name"] == config["current-context"])
    cluster_entry = next(c for c in config["clusters"] if c["name"] == context["context"]["cluster"])
    server = dict(cluster_entry["cluster"])
    if "certificate-authority" in server:  # inline it: the path may be relative to the original file
        ca = Path(server.pop("certificate-authority"))
        ca = ca if ca.is_absolute() else cluster.kubeconfig.parent / ca
        server["certificate-authority-data"] = base64.b64encode(ca.read_bytes()).decode()
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": server}],
                "users": [{"name": "sa", "user": {"token": token}}],
                "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa"}}],
                "current-context": "sa",
            }
        )
    )
    return path


@pytest.fixture
def chart_operator(cluster: Cluster, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """The chart installed cluster-wide, and the operator run out of cluster with the chart's ServiceAccount."""
    ns = f"fmo-rbac-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    peering = f"rbac-{uuid.uuid4().hex[:6]}"
    installed = helm(
        cluster,
        "install",
        "fmo-rbac",
        str(CHART),
        "-n",
        ns,
        "--set",
        "fullnameOverride=fmo-rbac",
        "--set",
        f"peering.name={peering}",
        "--set",
        "routers.gatewayAPI.enabled=true",
    )
    assert installed.returncode == 0, installed.stderr
    kubeconfig = token_kubeconfig(cluster, ns, "fmo-rbac", tmp_path / "sa-kubeconfig")
    log = tmp_path / "operator.log"
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "PYTHONPATH": str(REPO_ROOT / "operator"),
        "PEERING_NAME": peering,
        "RECONCILE_INTERVAL": "2",
    }
    with log.open("wb") as out:
        # Peering on (as in the chart): the chart's in-cluster replica is a kwok pod that never
        # runs, so this process is the only live peer and must hold the peering RBAC to act.
        proc = subprocess.Popen(
            [sys.executable, "-m", "fraudmodel_operator.cli", "run", "--metrics-port", "0", "--liveness-port", "18092"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc, log
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        helm(cluster, "uninstall", "fmo-rbac", "-n", ns)
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_operator_works_with_exactly_the_charts_rbac(
    cluster: Cluster, chart_operator: tuple[subprocess.Popen[bytes], Path], namespace: str
) -> None:
    proc, log = chart_operator
    cluster.apply(fraudmodel("rbac", serving={"replicas": 2}), namespace)
    done = cluster.kubectl(
        "wait", "--for=condition=Ready", "fraudmodel/rbac", "-n", namespace, "--timeout=120s", check=False, timeout=130
    )
    assert done.returncode == 0, f"{done.stderr}\n{log.read_text()[-4000:]}"
    text = log.read_text()
    assert "Forbidden" not in text, text[-4000:]
    assert " 403" not in text, text[-4000:]
    events = cluster.get_json("events", "-n", namespace, "--field-selector", "involvedObject.name=rbac")["items"]
    assert {"Deploying", "Ready"} <= {e["reason"] for e in events}, "Events are allowed too"
    assert proc.poll() is None
