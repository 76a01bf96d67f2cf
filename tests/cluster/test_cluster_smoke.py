"""Smoke tests of the cluster tier itself: the control plane, kwok nodes, metrics, HPA.

They check what the operator's cluster tests rely on: fake nodes are Ready, a
Deployment becomes Available on them, and simulated CPU usage (the
``kwok.x-k8s.io/usage-cpu`` pod annotation) reaches the metrics API and makes the
HPA controller scale.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tests.cluster.conftest import Cluster

pytestmark = pytest.mark.cluster


def _deployment(name: str, replicas: int, cpu_request: str, cpu_usage: str) -> str:
    manifest: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {
                    "labels": {"app": name},
                    "annotations": {"kwok.x-k8s.io/usage-cpu": cpu_usage},
                },
                "spec": {
                    "containers": [
                        {
                            "name": "app",
                            "image": "registry.invalid/fake:1",  # kwok never pulls it
                            "resources": {"requests": {"cpu": cpu_request, "memory": "64Mi"}},
                        }
                    ]
                },
            },
        },
    }
    return json.dumps(manifest)


def _millicores(quantity: str) -> float:
    """A CPU quantity as metrics-server reports it ("200m", "199870123n", "1") in millicores."""
    scale = {"n": 1e-6, "u": 1e-3, "m": 1.0}
    if quantity[-1] in scale:
        return float(quantity[:-1]) * scale[quantity[-1]]
    return float(quantity) * 1000


def _condition(obj: dict[str, Any], kind: str) -> str | None:
    for cond in obj.get("status", {}).get("conditions", []):
        if cond.get("type") == kind:
            return str(cond.get("status"))
    return None


def test_kwok_nodes_are_ready(cluster: Cluster) -> None:
    nodes = cluster.get_json("nodes", "-l", "type=kwok")["items"]

    ready = [n["metadata"]["name"] for n in nodes if _condition(n, "Ready") == "True"]
    assert len(ready) >= 2, f"expected two Ready kwok nodes, got {ready} of {len(nodes)}"


def test_deployment_becomes_available(cluster: Cluster, namespace: str) -> None:
    cluster.apply(_deployment("web", replicas=3, cpu_request="100m", cpu_usage="10m"), namespace)

    deployment = cluster.wait_until(
        "Deployment web Available with 3 ready replicas",
        lambda: (
            d
            if _condition(d := cluster.get_json("deployment", "web", "-n", namespace), "Available") == "True"
            and d["status"].get("readyReplicas") == 3
            else None
        ),
    )

    assert deployment["status"]["availableReplicas"] == 3
    pods = cluster.get_json("pods", "-n", namespace, "-l", "app=web")["items"]
    assert {p["status"]["phase"] for p in pods} == {"Running"}
    assert all(p["spec"].get("nodeName", "").startswith("node-") for p in pods)


def test_hpa_scales_on_simulated_cpu_usage(cluster: Cluster, namespace: str) -> None:
    # Each pod "uses" 200m of its 100m request: 200% against a 50% target.
    cluster.apply(_deployment("busy", replicas=1, cpu_request="100m", cpu_usage="200m"), namespace)
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "busy"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "busy"},
            "minReplicas": 1,
            "maxReplicas": 4,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}},
                }
            ],
        },
    }
    cluster.apply(json.dumps(hpa), namespace)

    def pod_cpu_usages() -> list[str] | None:
        raw = cluster.kubectl("get", "--raw", f"/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods", check=False)
        if raw.returncode != 0:
            return None
        items = json.loads(raw.stdout)["items"]
        return [c["usage"]["cpu"] for item in items for c in item["containers"]] or None

    usages = cluster.wait_until(
        "pod metrics from metrics-server",
        pod_cpu_usages,
        timeout=180,
        interval=3,
        diagnose=lambda: "metrics-server log:\n" + cluster.log_tail("metrics-server"),
    )
    assert all(150 <= _millicores(u) <= 250 for u in usages), usages

    scaled = cluster.wait_until(
        "the HPA to scale busy above 1 replica",
        lambda: (
            h
            if (h := cluster.get_json("hpa", "busy", "-n", namespace))["status"].get("desiredReplicas", 0) > 1
            else None
        ),
        timeout=180,
        interval=3,
    )
    current = scaled["status"]["currentMetrics"][0]["resource"]["current"]
    assert current["averageUtilization"] > 50
