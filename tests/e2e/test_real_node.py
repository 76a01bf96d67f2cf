"""The cluster's real node itself: containers run, probes pass, Services route, metrics flow.

Uses a one-layer busybox image built here (``oci.py``) and loaded into the node's containerd,
so it needs no registry and none of the project's images. Runs on clusters whose host routes
to Services (the local real node); elsewhere it is skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .e2e_cluster import Cluster, node_env
from .oci import busybox_image

pytestmark = pytest.mark.e2e

NAMESPACE = "e2e-node"
IMAGE = "localhost/fraudmodel/e2e-busybox:1"
REPLICAS = 2
# Pod Security "restricted" in full, with the numeric user busybox_image declares.
CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
# Each pod serves its own name, so responses show which pods a Service reached.
SERVE = "mkdir -p /tmp/www && hostname > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www"


def manifests() -> list[dict[str, Any]]:
    labels = {"app": "e2e-busybox"}
    return [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": NAMESPACE, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "e2e-busybox", "namespace": NAMESPACE},
            "spec": {
                "replicas": REPLICAS,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "automountServiceAccountToken": False,
                        "containers": [
                            {
                                "name": "httpd",
                                "image": IMAGE,
                                "imagePullPolicy": "Never",
                                "command": ["/bin/sh", "-c", SERVE],
                                "ports": [{"name": "http", "containerPort": 8080}],
                                "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 2},
                                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                                "securityContext": CONTAINER_SECURITY,
                                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                            }
                        ],
                        "volumes": [{"name": "tmp", "emptyDir": {}}],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "e2e-busybox", "namespace": NAMESPACE},
            "spec": {"selector": labels, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
        },
    ]


def import_image(archive: Path) -> None:
    env = node_env()
    subprocess.run(
        [env["FRAUDMODEL_CTR"], "--address", env["FRAUDMODEL_CONTAINERD_ADDRESS"], "-n", "k8s.io", "images", "import",
         "--platform", "linux/amd64", str(archive)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip


@pytest.fixture(scope="module")
def workload(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if not cluster.routable:
        pytest.skip("the host does not route to this cluster's Services (not the local real node)")
    import_image(busybox_image(tmp_path_factory.mktemp("image") / "busybox.tar", IMAGE))
    path = tmp_path_factory.mktemp("manifests") / "busybox.yaml"
    path.write_text(yaml.safe_dump_all(manifests()))
    cluster.kubectl("apply", "-f", str(path))
    yield cluster
    if not os.environ.get("FRAUDMODEL_KEEP_CLUSTER"):
        cluster.kubectl("delete", "namespace", NAMESPACE, "--timeout=120s", timeout=150)


def test_pods_run_and_pass_probes_under_restricted(workload: Cluster) -> None:
    workload.kubectl("rollout", "status", "-n", NAMESPACE, "deployment/e2e-busybox", "--timeout=180s", timeout=200)
    pods = workload.get("pods", "-n", NAMESPACE, "-l", "app=e2e-busybox")["items"]
    assert len(pods) == REPLICAS
    for pod in pods:
        assert pod["status"]["phase"] == "Running"
        (state,) = pod["status"]["containerStatuses"]
        assert state["ready"], state
        assert state["started"], state
        assert pod["spec"]["nodeName"].endswith("-node"), "scheduled on the real node"
        assert pod["status"]["podIP"].startswith("10.244."), pod["status"]
    user = workload.kubectl("exec", "-n", NAMESPACE, pods[0]["metadata"]["name"], "--", "id", "-u").strip()
    assert user == "65532"


def test_service_routes_to_every_pod_through_kube_proxy(workload: Cluster) -> None:
    ip = workload.service_ip(NAMESPACE, "e2e-busybox")
    names = {p["metadata"]["name"] for p in workload.get("pods", "-n", NAMESPACE, "-l", "app=e2e-busybox")["items"]}
    seen: set[str] = set()

    def reached_all() -> bool:
        try:
            with urllib.request.urlopen(f"http://{ip}/", timeout=5) as response:
                seen.add(response.read().decode().strip())
        except OSError as error:  # kube-proxy may not have programmed the new Service's rules yet
            raise AssertionError(f"{ip}: {error}") from error
        return seen >= names

    workload.wait_for(f"requests to {ip} to reach pods {sorted(names)}", reached_all, timeout=60, interval=0.1)
    assert seen == names


def test_pods_reach_services_and_the_api_server(workload: Cluster) -> None:
    pod = workload.get("pods", "-n", NAMESPACE, "-l", "app=e2e-busybox")["items"][0]["metadata"]["name"]
    ip = workload.service_ip(NAMESPACE, "e2e-busybox")
    body = workload.kubectl("exec", "-n", NAMESPACE, pod, "--", "wget", "-q", "-O", "-", f"http://{ip}/")
    assert body.strip().startswith("e2e-busybox-"), "pod -> Service (hairpin included)"
    # The kubernetes Service, what in-cluster clients such as the operator use: kube-proxy
    # sends it to the API server on the host (a TCP connection is enough to show it).
    api = workload.service_ip("default", "kubernetes")
    workload.kubectl("exec", "-n", NAMESPACE, pod, "--", "sh", "-c", f"nc -w 5 {api} 443 </dev/null")


def test_pods_resolve_services_through_cluster_dns(workload: Cluster) -> None:
    """The kubelet gives pods the kube-dns Service as nameserver, with the cluster's search
    path; CoreDNS answers from the API's Services (what the operator's in-cluster client needs)."""
    pod = workload.get("pods", "-n", NAMESPACE, "-l", "app=e2e-busybox")["items"][0]["metadata"]["name"]
    resolv = workload.kubectl("exec", "-n", NAMESPACE, pod, "--", "cat", "/etc/resolv.conf")
    dns = workload.service_ip("kube-system", "kube-dns")
    assert f"nameserver {dns}" in resolv, resolv
    assert f"search {NAMESPACE}.svc.cluster.local svc.cluster.local cluster.local" in resolv, resolv
    # busybox's nslookup asks the nameserver of resolv.conf but applies no search path (and
    # its static wget cannot resolve at all): full names here; the search path is asserted above.
    for service, namespace in (("kubernetes", "default"), ("e2e-busybox", NAMESPACE), ("kube-dns", "kube-system")):
        fqdn = f"{service}.{namespace}.svc.cluster.local"
        answer = workload.kubectl("exec", "-n", NAMESPACE, pod, "--", "nslookup", fqdn)
        assert f"Address: {workload.service_ip(namespace, service)}" in answer, answer


def test_metrics_server_reads_the_kubelet(workload: Cluster) -> None:
    node = next(n for n in workload.get("nodes")["items"] if n["metadata"]["name"].endswith("-node"))["metadata"]

    def node_usage() -> dict[str, Any] | None:
        raw = workload.kubectl("get", "--raw", f"/apis/metrics.k8s.io/v1beta1/nodes/{node['name']}")
        usage: dict[str, Any] = json.loads(raw)["usage"]
        return usage

    usage = workload.wait_for("node metrics from the kubelet", node_usage, timeout=120, interval=3)
    assert usage["cpu"]
    assert usage["memory"]

    def pod_usage() -> list[dict[str, Any]]:
        raw = workload.kubectl("get", "--raw", f"/apis/metrics.k8s.io/v1beta1/namespaces/{NAMESPACE}/pods")
        items: list[dict[str, Any]] = json.loads(raw)["items"]
        return items

    pods = workload.wait_for("pod metrics from the kubelet", lambda: len(pod_usage()) == REPLICAS and pod_usage())
    assert all(p["containers"][0]["usage"]["memory"] != "0" for p in pods), pods
