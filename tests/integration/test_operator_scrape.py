"""The operator's metrics keep their labels through the scrape configs we ship (issue 15, defect 2).

A real Prometheus (Debian's package) scrapes the operator's real metrics endpoint
(`OperatorMetrics.serve`, what `handlers.startup` runs) through
- the chart's ServiceMonitor, turned into the scrape config Prometheus Operator generates for it
  (job `serviceMonitor/<ns>/<name>/<i>`, the Service/port selection and the target labels
  `namespace`, `service`, `pod`, `container`, `job`, `endpoint`), and
- the e2e cluster's Prometheus config (tests/e2e/manifests/prometheus.yaml), as written.
Kubernetes service discovery is replaced by a static target carrying the `__meta_kubernetes_*`
labels discovery would attach for the chart's metrics Service, so the relabelling runs as in a cluster.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from scripts.dataplane import Prometheus, free_port

from fraudmodel_operator.api import Phase
from fraudmodel_operator.metrics import OperatorMetrics
from tests.unit.test_chart import CHART, one, render

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[2]
RELEASE_NAMESPACE = "fraudmodel-system"  # what tests.unit.test_chart renders into
FM_NAMESPACE, FM_NAME, REASON = "team-a", "bot", "ScoreDriftFailed"
E2E_PROMETHEUS = ROOT / "tests" / "e2e" / "manifests" / "prometheus.yaml"


def _meta_name(label: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", label)


def discovered_labels(service: dict[str, Any]) -> dict[str, str]:
    """What Kubernetes endpoints discovery attaches to the target behind the metrics Service."""
    meta = service["metadata"]
    labels = {
        "__meta_kubernetes_namespace": meta["namespace"],
        "__meta_kubernetes_service_name": meta["name"],
        "__meta_kubernetes_endpoint_port_name": service["spec"]["ports"][0]["name"],
        "__meta_kubernetes_endpoint_address_target_kind": "Pod",
        "__meta_kubernetes_endpoint_address_target_name": "fraudmodel-operator-0",
        "__meta_kubernetes_pod_name": "fraudmodel-operator-0",
        "__meta_kubernetes_pod_container_name": "operator",
    }
    for key, value in meta["labels"].items():
        labels[f"__meta_kubernetes_service_label_{_meta_name(key)}"] = str(value)
        labels[f"__meta_kubernetes_service_labelpresent_{_meta_name(key)}"] = "true"
    return labels


def _relabel(rule: dict[str, Any]) -> dict[str, Any]:
    """A Prometheus Operator RelabelConfig (camelCase) as Prometheus writes it (snake_case)."""
    keys = {"sourceLabels": "source_labels", "targetLabel": "target_label"}
    return {keys.get(k, k): v for k, v in rule.items()}


def service_monitor_job(monitor: dict[str, Any], index: int, targets: list[dict[str, Any]]) -> dict[str, Any]:
    """The scrape config Prometheus Operator generates for endpoint `index` of `monitor`
    (role endpoints; see its pkg/prometheus/promcfg.go), with `targets` in place of discovery."""
    spec, meta = monitor["spec"], monitor["metadata"]
    endpoint = spec["endpoints"][index]
    relabel: list[dict[str, Any]] = [{"source_labels": ["job"], "target_label": "__tmp_prometheus_job_name"}]
    for key, value in spec["selector"].get("matchLabels", {}).items():
        relabel.append(
            {
                "action": "keep",
                "source_labels": [
                    f"__meta_kubernetes_service_label_{_meta_name(key)}",
                    f"__meta_kubernetes_service_labelpresent_{_meta_name(key)}",
                ],
                "regex": f"({value});true",
            }
        )
    relabel += [
        {"action": "keep", "source_labels": ["__meta_kubernetes_endpoint_port_name"], "regex": endpoint["port"]},
        {
            "source_labels": [
                "__meta_kubernetes_endpoint_address_target_kind",
                "__meta_kubernetes_endpoint_address_target_name",
            ],
            "separator": ";",
            "regex": "Pod;(.*)",
            "replacement": "${1}",
            "target_label": "pod",
        },
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
        {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job", "replacement": "${1}"},
        {"target_label": "endpoint", "replacement": endpoint["port"]},
        *(_relabel(r) for r in endpoint.get("relabelings", [])),
    ]
    job: dict[str, Any] = {
        "job_name": f"serviceMonitor/{meta['namespace']}/{meta['name']}/{index}",
        "honor_labels": bool(endpoint.get("honorLabels", False)),
        "honor_timestamps": endpoint.get("honorTimestamps", True),
        "metrics_path": endpoint.get("path", "/metrics"),
        "scrape_interval": endpoint.get("interval", "30s"),
        "static_configs": targets,
        "relabel_configs": relabel,
    }
    if "metricRelabelings" in endpoint:
        job["metric_relabel_configs"] = [_relabel(r) for r in endpoint["metricRelabelings"]]
    if endpoint.get("scrapeTimeout"):
        job["scrape_timeout"] = endpoint["scrapeTimeout"]
    return job


def e2e_operator_job(targets: list[dict[str, Any]]) -> dict[str, Any]:
    """The e2e Prometheus' operator job as written, with `targets` in place of discovery."""
    configmap = next(d for d in yaml.safe_load_all(E2E_PROMETHEUS.read_text()) if d and d["kind"] == "ConfigMap")
    config = yaml.safe_load(configmap["data"]["prometheus.yml"])
    job: dict[str, Any] = next(j for j in config["scrape_configs"] if j["job_name"] == "fraudmodel-operator")
    del job["kubernetes_sd_configs"]
    return {**job, "scrape_interval": "1s", "static_configs": targets}


@pytest.fixture
def operator_metrics() -> Iterator[tuple[OperatorMetrics, int]]:
    """The operator's registry, served as the operator serves it, after one rollback in team-a."""
    metrics = OperatorMetrics()
    metrics.rollbacks.labels(FM_NAMESPACE, FM_NAME, REASON).inc()
    metrics.observe_phase(FM_NAMESPACE, FM_NAME, Phase.ROLLED_BACK)
    metrics.reconciles.labels("changed").inc()
    port = free_port()
    stop = metrics.serve(port, addr="127.0.0.1")
    try:
        yield metrics, port
    finally:
        stop()


def query(prom: Prometheus, promql: str) -> list[dict[str, Any]]:
    prom.wait_for_data(promql, within=60)
    body = httpx.get(f"{prom.url}/api/v1/query", params={"query": promql}, timeout=5).json()
    return [r["metric"] for r in body["data"]["result"]]


@pytest.mark.parametrize("source", ["chart-servicemonitor", "e2e-prometheus"])
def test_operator_series_keep_the_fraudmodel_namespace(
    source: str, operator_metrics: tuple[OperatorMetrics, int], prometheus: Prometheus
) -> None:
    _, port = operator_metrics
    docs = render(CHART / "ci" / "monitoring-values.yaml", sets=("metrics.serviceMonitor.interval=1s",))
    service = one(docs, "Service")
    targets = [{"targets": [f"127.0.0.1:{port}"], "labels": discovered_labels(service)}]
    if source == "chart-servicemonitor":
        job = service_monitor_job(one(docs, "ServiceMonitor"), 0, targets)
    else:
        job = e2e_operator_job(targets)
    prometheus.root.mkdir(parents=True, exist_ok=True)
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "scrape_configs": [job]}
    (prometheus.root / "prometheus.yml").write_text(yaml.safe_dump(config))
    prometheus.start()

    (rollback,) = query(prometheus, "fraudmodel_operator_rollbacks_total")
    assert rollback["namespace"] == FM_NAMESPACE, rollback
    assert "exported_namespace" not in rollback, rollback
    assert (rollback["fraudmodel"], rollback["reason"]) == (FM_NAME, REASON)
    (phase,) = query(prometheus, 'fraudmodel_operator_phase{phase="RolledBack"}')
    assert phase["namespace"] == FM_NAMESPACE, phase
    # Series without a namespace of their own, and `up`, carry the operator's (what OperatorDown selects on).
    (reconciles,) = query(prometheus, "fraudmodel_operator_reconcile_total")
    assert reconciles["namespace"] == RELEASE_NAMESPACE, reconciles
    (up,) = query(prometheus, f'up{{namespace="{RELEASE_NAMESPACE}"}} == 1')
    if source == "chart-servicemonitor":
        assert up["job"] == service["metadata"]["name"], up  # the job the chart's OperatorDown alert names
