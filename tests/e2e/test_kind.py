"""End to end on a real cluster: install the chart, serve a model, roll back a regression, promote a fix.

The steps run in order and share one FraudModel; each asserts what a user would see with
kubectl: status, conditions and Events. See conftest.py for the cluster (kind, the local
control plane with a real node, or any cluster through FRAUDMODEL_E2E_KUBECONFIG) and the images.
On the real node Prometheus runs on the host with the same scrape jobs (host_prometheus.py) and
requests go to the Service's ClusterIP through kube-proxy; elsewhere Prometheus runs in-cluster
and requests go through ``kubectl port-forward``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .e2e_cluster import (
    BENTO_DIR,
    BENTO_REPOSITORY,
    CHART,
    GOOD,
    NEXT,
    OPERATOR_IMAGE,
    REGRESSED,
    ROOT,
    Cluster,
    tool,
)
from .host_prometheus import HostPrometheus

pytestmark = pytest.mark.e2e

NAMESPACE = "fraud-e2e"
RELEASE = "fraudmodel-operator"
OPERATOR_NAMESPACE = "fraudmodel-system"
NAME = "fraud-detector"
IN_CLUSTER_PROMETHEUS = "http://prometheus.monitoring.svc:9090"
# Where the bento answers (BentoML's port and the service's endpoint); overridable.
SERVICE_PORT = int(os.environ.get("FRAUDMODEL_E2E_SERVICE_PORT", "3000"))
ENDPOINT = os.environ.get("FRAUDMODEL_E2E_ENDPOINT", "/predict")
MANIFESTS = Path(__file__).parent / "manifests"


def fraudmodel(version: str, prometheus: str) -> dict[str, Any]:
    """The example FraudModel, fast enough for a test: 3 short steps, small sample floor."""
    doc: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "minimal.yaml").read_text())
    doc["metadata"] = {"name": NAME, "namespace": NAMESPACE}
    doc["spec"]["model"].update(name=NAME, version=version, image=f"{BENTO_REPOSITORY}:{version}")
    # Small requests: the suite's nodes (kind's workers, the one real node of a 2-core CI
    # machine) must fit two tracks at once; the default 500m each would leave canaries Pending.
    doc["spec"]["serving"] = {
        "resources": {"requests": {"cpu": "100m", "memory": "384Mi"}, "limits": {"memory": "2Gi"}}
    }
    doc["spec"]["rollout"] = {
        "steps": [20, 50, 80],
        "interval": "30s",
        "progressDeadline": "5m",
        "analysis": {
            "prometheus": {"address": prometheus},
            "window": "30m",  # evidence since the canary started, at most this far back
            "minSamples": 20,
            "failureLimit": 1,
        },
        "onRollback": {"scaleDownDelay": "5s"},
    }
    return doc


def apply(cluster: Cluster, doc: dict[str, Any]) -> None:
    path = Path(cluster.kubeconfig).parent / f"{doc['metadata']['name']}.yaml"
    path.write_text(yaml.safe_dump(doc))
    cluster.kubectl("apply", "--server-side", "--field-manager", "e2e", "-f", str(path))


def status(cluster: Cluster) -> dict[str, Any]:
    result: dict[str, Any] = cluster.get("fraudmodel", NAME, "-n", NAMESPACE).get("status", {})
    return result


def condition(st: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in st.get("conditions", []) if c["type"] == kind), {})


def events(cluster: Cluster) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.get(
        "events", "-n", NAMESPACE, "--field-selector", f"involvedObject.name={NAME},involvedObject.kind=FraudModel"
    )["items"]
    return items


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def port_forward(cluster: Cluster) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [
            tool("kubectl") or "kubectl",
            "port-forward",
            "-n",
            NAMESPACE,
            f"svc/{NAME}",
            f"{port}:{SERVICE_PORT}",
        ],
        env=cluster.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(3)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def payloads(count: int) -> list[dict[str, Any]]:
    python = os.environ.get("FRAUDMODEL_BENTO_PYTHON", str(BENTO_DIR / ".venv" / "bin" / "python"))
    code = f"import json; from fraud_detector.data import payloads; print(json.dumps(payloads({count})))"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd=BENTO_DIR, check=True)
    result: list[dict[str, Any]] = json.loads(out.stdout)
    return result


@contextlib.contextmanager
def service_url(cluster: Cluster) -> Iterator[str]:
    """The FraudModel's shared Service: its ClusterIP where the host routes there, else a port-forward."""
    if cluster.routable:
        # The Service's own port (the planner's 80), which kube-proxy maps to the pods' 3000.
        port = cluster.get("service", NAME, "-n", NAMESPACE)["spec"]["ports"][0]["port"]
        yield f"http://{cluster.service_ip(NAMESPACE, NAME)}:{port}"
    else:
        with port_forward(cluster) as base:
            yield base


class Traffic:
    """Sends requests through the FraudModel's Service in a background thread while steps wait."""

    def __init__(self, cluster: Cluster) -> None:
        import threading

        self._cluster = cluster
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.sent = 0

    def _loop(self) -> None:
        bodies = payloads(500)
        while not self._stop.is_set():
            try:
                with service_url(self._cluster) as base:
                    for body in bodies * 100:
                        if self._stop.is_set():
                            return
                        request = urllib.request.Request(
                            base + ENDPOINT,
                            data=json.dumps(body).encode(),
                            headers={"Content-Type": "application/json"},
                        )
                        with contextlib.suppress(OSError), urllib.request.urlopen(request, timeout=5):
                            self.sent += 1
                        time.sleep(0.02)
            except (OSError, subprocess.SubprocessError):
                time.sleep(2)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


@pytest.fixture(scope="module")
def prometheus(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Prometheus' address as the operator's pods reach it."""
    if cluster.routable:
        host = HostPrometheus(tmp_path_factory.mktemp("prometheus"), cluster.kubeconfig, tool("kubectl") or "kubectl")
        host.start()
        try:
            yield host.url
        finally:
            host.stop()
        return
    cluster.kubectl("apply", "-f", str(MANIFESTS / "prometheus.yaml"))
    cluster.kubectl("-n", "monitoring", "rollout", "status", "deployment/prometheus", "--timeout=5m", timeout=330)
    yield IN_CLUSTER_PROMETHEUS


@pytest.fixture(scope="module")
def installed(cluster: Cluster, prometheus: str) -> Iterator[Cluster]:
    repository, _, tag = OPERATOR_IMAGE.rpartition(":")
    cluster.helm(
        "upgrade", "--install", RELEASE, str(CHART), "--namespace", OPERATOR_NAMESPACE, "--create-namespace",
        "--values", str(ROOT / "examples" / "values-dev.yaml"),
        "--set", f"image.repository={repository}", "--set", f"image.tag={tag}",
        "--set", "routers.gatewayAPI.enabled=false", "--wait", "--timeout", "5m",
    )  # fmt: skip
    with contextlib.suppress(AssertionError):
        cluster.kubectl("create", "namespace", NAMESPACE)
    # What a security-minded user runs: the namespace enforces Pod Security "restricted".
    cluster.kubectl("label", "--overwrite", "namespace", NAMESPACE, "pod-security.kubernetes.io/enforce=restricted")
    yield cluster
    if not os.environ.get("FRAUDMODEL_KEEP_CLUSTER"):
        with contextlib.suppress(AssertionError):
            cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false")
        with contextlib.suppress(AssertionError):
            cluster.helm("uninstall", RELEASE, "--namespace", OPERATOR_NAMESPACE)


def test_operator_is_installed(installed: Cluster) -> None:
    deployment = installed.get(
        "deployment", "-n", OPERATOR_NAMESPACE, "-l", "app.kubernetes.io/name=fraudmodel-operator"
    )
    (operator,) = deployment["items"]
    assert operator["status"].get("readyReplicas") == operator["spec"]["replicas"]
    installed.get("crd", "fraudmodels.serving.riskml.io")


def test_example_becomes_ready(installed: Cluster, prometheus: str) -> None:
    apply(installed, fraudmodel(GOOD, prometheus))
    installed.kubectl(
        "wait", "-n", NAMESPACE, f"fraudmodel/{NAME}", "--for=condition=Ready", "--timeout=10m", timeout=630
    )
    st = status(installed)
    assert st["phase"] == "Ready"
    assert st["stable"]["version"] == GOOD
    assert st["observedGeneration"] >= 1
    pods = installed.get("pods", "-n", NAMESPACE, "-l", f"app.kubernetes.io/instance={NAME}")["items"]
    assert pods, "the stable track has pods"
    for pod in pods:
        assert pod["status"]["phase"] == "Running"
        assert all(c["ready"] for c in pod["status"]["containerStatuses"]), pod["status"]
        security = pod["spec"]["securityContext"]
        assert security["runAsNonRoot"] is True
        assert isinstance(security["runAsUser"], int)
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}


def test_regressed_version_rolls_back_with_reason(installed: Cluster, prometheus: str) -> None:
    with Traffic(installed) as traffic:
        apply(installed, fraudmodel(REGRESSED, prometheus))
        st = installed.wait_for(
            "the regressed canary to roll back",
            lambda: (s := status(installed)).get("phase") == "RolledBack" and s,
            timeout=900,
        )
    assert traffic.sent > 0, (
        f"no request reached {ENDPOINT} on port {SERVICE_PORT} (FRAUDMODEL_E2E_ENDPOINT/_SERVICE_PORT)"
    )
    degraded = condition(st, "Degraded")
    assert degraded["status"] == "True"
    assert degraded["reason"], "the rollback names its reason"
    assert st["stable"]["version"] == GOOD, "stable keeps serving the good version"
    assert st["history"][0]["outcome"] == "RolledBack"
    warnings = [e for e in events(installed) if e["type"] == "Warning"]
    assert any(degraded["reason"] in (e.get("reason", "") + e.get("message", "")) for e in warnings), warnings


def prometheus_query(url: str, query: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': query})}", timeout=10) as r:
        result: list[dict[str, Any]] = json.load(r)["data"]["result"]
    return result


def test_prometheus_scrapes_both_tracks_through_the_service(installed: Cluster, prometheus: str) -> None:
    """The pods carry the labels the analysis selects on (track, fraudmodel, namespace), Prometheus
    finds them the chart's way, and requests sent to the one shared Service reached the stable and
    the canary track's pods (kube-proxy spreads them over both, in the ratio of their replicas)."""
    if not installed.routable:
        pytest.skip("Prometheus runs in-cluster here: not reachable from the tests")
    selector = f'namespace="{NAMESPACE}",fraudmodel="{NAME}"'
    targets = prometheus_query(prometheus, f"up{{{selector}}}")
    assert targets, f"Prometheus has no target with {selector}"
    assert {t["metric"].get("track") for t in targets} >= {"stable"}, targets
    served = prometheus_query(
        prometheus, f"sum by (track) (max_over_time(bentoml_service_request_total{{{selector}}}[1h]))"
    )
    by_track = {r["metric"]["track"]: float(r["value"][1]) for r in served}
    assert by_track.get("stable", 0) > 0, by_track
    assert by_track.get("canary", 0) > 0, by_track


def test_good_version_is_promoted(installed: Cluster, prometheus: str) -> None:
    with Traffic(installed):
        apply(installed, fraudmodel(NEXT, prometheus))
        st = installed.wait_for(
            f"{NEXT} to be promoted",
            lambda: (s := status(installed)).get("phase") == "Ready" and s["stable"].get("version") == NEXT and s,
            timeout=900,
        )
    assert condition(st, "Ready")["status"] == "True"
    assert condition(st, "Degraded").get("status") != "True"
    assert st["history"][0] == {**st["history"][0], "version": NEXT, "outcome": "Promoted"}
    assert any(e.get("reason") for e in events(installed) if e["type"] == "Normal")


def test_delete_garbage_collects_children(installed: Cluster) -> None:
    selector = f"app.kubernetes.io/instance={NAME},app.kubernetes.io/managed-by=fraudmodel-operator"
    assert installed.get("deployments", "-n", NAMESPACE, "-l", selector)["items"], "children exist before delete"
    installed.kubectl("delete", "-n", NAMESPACE, "fraudmodel", NAME, "--wait=true", "--timeout=3m", timeout=200)

    def gone() -> bool:
        kinds = "deployments,services,horizontalpodautoscalers,poddisruptionbudgets"
        return not installed.get(kinds, "-n", NAMESPACE, "-l", selector)["items"]

    installed.wait_for("the FraudModel's children to be garbage-collected", gone, timeout=300)
