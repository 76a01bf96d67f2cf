"""The Helm chart lints, renders, validates against pinned Kubernetes schemas and grants least privilege.

Needs a `helm` binary: $HELM, PATH, or the one `scripts/cluster/build` caches. Schema validation
also needs `kubeconform` ($KUBECONFORM, PATH or that cache) and the Kubernetes OpenAPI document of
the pinned version (the `k8s.io/kubernetes` Go module that `scripts/cluster/build` downloads, or
$FRAUDMODEL_K8S_OPENAPI). Each missing tool skips only the tests that need it, saying why.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).parents[2]
CHART = ROOT / "charts" / "fraudmodel-operator"
CACHE = Path(os.environ.get("FRAUDMODEL_CACHE", Path.home() / ".cache" / "fraudmodel-operator"))
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
EXAMPLE_VALUES = sorted((ROOT / "examples").glob("values-*.yaml"))
ALL_VALUES = CI_VALUES + EXAMPLE_VALUES
VALUES_IDS = [f"{p.parent.name}/{p.stem}" for p in ALL_VALUES]

CHILD_VERBS = frozenset({"get", "list", "watch", "create", "patch", "update", "delete"})
# What the operator does (the contract in docs/deploy.md): (apiGroup, resource) -> verbs.
WORKLOAD_RULES: dict[tuple[str, str], frozenset[str]] = {
    ("serving.riskml.io", "fraudmodels"): frozenset({"get", "list", "watch", "patch"}),
    ("serving.riskml.io", "fraudmodels/status"): frozenset({"get", "patch", "update"}),
    ("apps", "deployments"): CHILD_VERBS,
    ("", "services"): CHILD_VERBS,
    ("autoscaling", "horizontalpodautoscalers"): CHILD_VERBS,
    ("policy", "poddisruptionbudgets"): CHILD_VERBS,
    ("", "configmaps"): CHILD_VERBS,  # the stable edge's routing config
    ("", "pods"): frozenset({"get", "list", "watch"}),  # read only: why a model pod does not start
    ("", "events"): frozenset({"create", "patch"}),
    ("events.k8s.io", "events"): frozenset({"create", "patch"}),
}
ROUTER_RULES: dict[str, tuple[str, str]] = {
    "gatewayAPI": ("gateway.networking.k8s.io", "httproutes"),
    "istio": ("networking.istio.io", "virtualservices"),
    "nginx": ("networking.k8s.io", "ingresses"),
}
CRD_READ = {("apiextensions.k8s.io", "customresourcedefinitions"): frozenset({"list", "watch"})}
PEERING = frozenset({"get", "list", "watch", "patch"})

# The operator's Prometheus metrics (series names as scraped) and the bento's serving metrics.
OPERATOR_METRICS = frozenset(
    {
        "fraudmodel_operator_reconcile_total",
        "fraudmodel_operator_reconcile_errors_total",
        "fraudmodel_operator_reconcile_duration_seconds_bucket",
        "fraudmodel_operator_reconcile_duration_seconds_count",
        "fraudmodel_operator_reconcile_duration_seconds_sum",
        "fraudmodel_operator_fraudmodels",
        "fraudmodel_operator_canary_weight",
        "fraudmodel_operator_rollbacks_total",
        "fraudmodel_operator_analysis_value",
        "fraudmodel_operator_analysis_threshold",
        "fraudmodel_operator_analysis_verdict_total",
        "fraudmodel_operator_phase",
        "fraudmodel_operator_progress_deadline_exceeded",
        "fraudmodel_operator_canary_effective_share",
        "fraudmodel_operator_drifting",
        "fraudmodel_operator_drift_value",
        "fraudmodel_operator_drift_threshold",
    }
)
SERVING_METRICS = frozenset(
    {
        "bentoml_service_request_total",
        "bentoml_service_request_duration_seconds_bucket",
        "fraud_model_score_bucket",
        "fraud_model_decisions_total",
        "fraud_model_rejected_inputs_total",
        "fraud_model_predictions_total",
        "fraud_model_shed_requests_total",
        "fraud_model_sticky_transactions_total",
        "fraud_model_sticky_fallbacks_total",
        "fraud_model_sticky_forward_duration_seconds_bucket",
        "fraud_model_feature_bucket",
        "fraud_model_reference_score_bucket",
        "fraud_model_reference_feature_bucket",
        "fraud_model_reference_samples",
        "fraud_model_reference_flag_rate",
        # a shadow phase (the stable's mirroring, the shadow's agreement table)
        "fraud_model_mirror_transactions_total",
        "fraud_model_paired_decisions_total",
        "fraud_model_paired_amount_total",
        "fraud_model_paired_abs_score_delta_bucket",
    }
)
# Kinds of the Prometheus Operator: no schemas in the Kubernetes OpenAPI; checked structurally below.
MONITORING_KINDS = ("ServiceMonitor", "PodMonitor", "PrometheusRule")
METRIC_NAME = re.compile(r"\b(fraudmodel_operator_\w+|bentoml_\w+|fraud_model_\w+|up)\b(?=\s*[{\[)])")


def kube_version() -> str:
    """The pinned Kubernetes version of the cluster tier (scripts/cluster/versions.env)."""
    if "FRAUDMODEL_KUBE_VERSION" in os.environ:
        return os.environ["FRAUDMODEL_KUBE_VERSION"].lstrip("v")
    text = (ROOT / "scripts" / "cluster" / "versions.env").read_text()
    found = re.search(r"FRAUDMODEL_KUBE_VERSION:=v?([0-9.]+)", text)
    assert found, "versions.env pins no FRAUDMODEL_KUBE_VERSION"
    return found.group(1)


def find_tool(name: str) -> str | None:
    explicit = os.environ.get(name.upper())
    if explicit:
        return explicit
    on_path = shutil.which(name)
    if on_path:
        return on_path
    cached = sorted(CACHE.glob(f"k8s/*/bin/{name}"), reverse=True)
    return str(cached[0]) if cached else None


@functools.cache
def helm_binary() -> str:
    helm = find_tool("helm")
    if helm is None:
        pytest.skip(f"no helm: set $HELM, put helm on PATH, or run scripts/cluster/build (caches it in {CACHE})")
    return helm


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([helm_binary(), *args], capture_output=True, text=True, timeout=120, check=False)
    if check:
        assert result.returncode == 0, f"helm {' '.join(args)} failed:\n{result.stderr}"
    return result


def template_text(*values: str | Path, sets: tuple[str, ...] = (), crds: bool = False) -> str:
    args = ["template", "fraudmodel-operator", str(CHART), "--namespace", "fraudmodel-system"]
    args += ["--kube-version", kube_version()]
    if crds:
        args.append("--include-crds")
    for path in values:
        args += ["--values", str(path)]
    for item in sets:
        args += ["--set", item]
    return helm(*args).stdout


@functools.cache
def _render(values: tuple[str, ...], sets: tuple[str, ...], crds: bool) -> tuple[dict[str, Any], ...]:
    text = template_text(*values, sets=sets, crds=crds)
    return tuple(doc for doc in yaml.safe_load_all(text) if doc)


def render(*values: str | Path, sets: tuple[str, ...] = (), crds: bool = False) -> list[dict[str, Any]]:
    return list(_render(tuple(str(v) for v in values), sets, crds))


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def rules_of(role: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    for rule in role.get("rules", []):
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                for verb in rule.get("verbs", []):
                    yield group, resource, verb


def grants(roles: list[dict[str, Any]]) -> dict[tuple[str, str], frozenset[str]]:
    merged: dict[tuple[str, str], set[str]] = {}
    for role in roles:
        for group, resource, verb in rules_of(role):
            merged.setdefault((group, resource), set()).add(verb)
    return {key: frozenset(verbs) for key, verbs in merged.items()}


def env_of(docs: list[dict[str, Any]]) -> dict[str, str]:
    container = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container["env"]}


# ------------------------------------------------------------------ lint and render


@pytest.mark.parametrize("values", ALL_VALUES, ids=VALUES_IDS)
def test_lint_strict(values: Path) -> None:
    result = helm("lint", "--strict", str(CHART), "--values", str(values), "--kube-version", kube_version())
    assert "0 chart(s) failed" in result.stdout


def test_lint_defaults() -> None:
    helm("lint", "--strict", str(CHART), "--kube-version", kube_version())


@pytest.mark.parametrize("values", ALL_VALUES, ids=VALUES_IDS)
def test_renders(values: Path) -> None:
    docs = render(values)
    deployment = one(docs, "Deployment")
    assert deployment["metadata"]["namespace"] == "fraudmodel-system"
    for doc in docs:
        assert doc["metadata"]["name"], doc


def test_chart_crd_is_the_repository_crd() -> None:
    chart_crd = CHART / "crds" / "fraudmodel.yaml"
    assert not chart_crd.is_symlink(), "the chart ships a copy (a symlink breaks on some checkouts and tools)"
    assert chart_crd.read_bytes() == (ROOT / "crds" / "fraudmodel.yaml").read_bytes(), (
        "charts/fraudmodel-operator/crds/fraudmodel.yaml is stale: "
        "run `cp crds/fraudmodel.yaml charts/fraudmodel-operator/crds/fraudmodel.yaml`"
    )


def test_crds_ship_fraudmodel_and_kopf_peering() -> None:
    crds = of_kind(render(crds=True), "CustomResourceDefinition")
    names = {crd["metadata"]["name"]: crd for crd in crds}
    assert set(names) == {
        "fraudmodels.serving.riskml.io",
        "clusterkopfpeerings.kopf.dev",
        "kopfpeerings.kopf.dev",
    }
    assert names["clusterkopfpeerings.kopf.dev"]["spec"]["scope"] == "Cluster"
    assert names["kopfpeerings.kopf.dev"]["spec"]["scope"] == "Namespaced"


# ------------------------------------------------------------------ values.schema.json


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("unknownKey=1", "additional properties 'unknownKey' not allowed"),
        ("routers.linkerd.enabled=true", "additional properties 'linkerd' not allowed"),
        ("metrics.serviceMonitor.enable=true", "additional properties 'enable' not allowed"),
        ("replicaCount=two", "/replicaCount"),
        ("routers.istio.enabled=yes", "/routers/istio/enabled"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("watchNamespaces[0]=Not_A_Namespace", "/watchNamespaces/0"),
        ("metrics.serviceMonitor.interval=30", "/metrics/serviceMonitor/interval"),
    ],
    ids=[
        "unknown-top-level-key",
        "unknown-router",
        "typo-in-nested-key",
        "string-for-integer",
        "string-for-boolean",
        "value-outside-enum",
        "invalid-namespace-name",
        "duration-without-unit",
    ],
)
def test_schema_rejects_bad_values(setting: str, message: str) -> None:
    args = ["template", "x", str(CHART), "--kube-version", kube_version(), "--set", setting]
    result = helm(*args, check=False)
    assert result.returncode != 0, f"--set {setting} was accepted"
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr, result.stderr


def test_values_are_all_documented() -> None:
    """Every key in values.yaml has a `# --` comment (helm-docs), unless it is a section of documented keys."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented: list[str] = []
    documented_parents: list[int] = []  # indents of documented keys whose children need no comment
    for index, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z]\w*):", line)
        if not match:
            continue
        indent = len(match.group(1))
        documented_parents = [i for i in documented_parents if i < indent]
        if documented_parents:
            continue
        comments = []
        for previous in reversed(lines[:index]):
            if not previous.strip().startswith("#"):
                break
            comments.append(previous.strip())
        if any(c.startswith("# --") for c in comments):
            documented_parents.append(indent)
            continue
        value = line.split(":", 1)[1].strip()
        following = next((n for n in lines[index + 1 :] if n.strip() and not n.strip().startswith("#")), "")
        is_section = not value and len(following) - len(following.lstrip()) > indent
        if not is_section:
            undocumented.append(match.group(2))
    assert undocumented == []


def test_standalone_needs_one_replica() -> None:
    result = helm(
        "template", "x", str(CHART), "--kube-version", kube_version(), "--set", "peering.enabled=false", check=False
    )
    assert result.returncode != 0
    assert "set replicaCount to 1" in result.stderr


# ------------------------------------------------------------------ RBAC


@pytest.mark.parametrize("values", ALL_VALUES, ids=VALUES_IDS)
def test_rbac_has_no_wildcards_and_no_secrets(values: Path) -> None:
    roles = [d for d in render(values) if d["kind"] in ("ClusterRole", "Role")]
    assert roles
    for role in roles:
        for rule in role["rules"]:
            assert "nonResourceURLs" not in rule, role["metadata"]["name"]
            for field in ("apiGroups", "resources", "verbs"):
                assert not any("*" in item for item in rule[field]), f"wildcard {field} in {role['metadata']['name']}"
            assert "secrets" not in rule["resources"], f"Secrets access in {role['metadata']['name']}"
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])


def test_cluster_wide_rbac_is_exactly_what_the_operator_uses() -> None:
    docs = render()
    assert of_kind(docs, "Role") == []
    assert grants(of_kind(docs, "ClusterRole")) == {
        **WORKLOAD_RULES,
        **CRD_READ,
        ("", "namespaces"): frozenset({"list", "watch"}),
        ("kopf.dev", "clusterkopfpeerings"): PEERING,
    }
    binding = one(docs, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "fraudmodel-operator", "namespace": "fraudmodel-system"}
    ]
    assert one(docs, "ClusterKopfPeering")["metadata"]["name"] == env_of(docs)["PEERING_NAME"]
    assert env_of(docs)["WATCH_NAMESPACES"] == ""


def test_namespaced_install_uses_roles_per_namespace() -> None:
    docs = render(sets=("watchNamespaces={fraud-b,fraud-a}",))
    roles = of_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["fraud-a", "fraud-b"]
    for role in roles:
        assert grants([role]) == {**WORKLOAD_RULES, ("kopf.dev", "kopfpeerings"): PEERING}
    bindings = of_kind(docs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["fraud-a", "fraud-b"]
    for binding in bindings:
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"][0]["namespace"] == "fraudmodel-system"
    # Cluster scope: only reading CRDs (Kopf's resource discovery); no workloads, no namespaces.
    assert grants(of_kind(docs, "ClusterRole")) == CRD_READ
    peerings = of_kind(docs, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["fraud-a", "fraud-b"]
    assert of_kind(docs, "ClusterKopfPeering") == []
    assert env_of(docs)["WATCH_NAMESPACES"] == "fraud-a,fraud-b"


@pytest.mark.parametrize("router", sorted(ROUTER_RULES), ids=sorted(ROUTER_RULES))
@pytest.mark.parametrize("namespaced", [False, True], ids=["cluster-wide", "namespaced"])
def test_router_toggle_adds_exactly_its_resource(router: str, namespaced: bool) -> None:
    kind = "Role" if namespaced else "ClusterRole"
    base_sets = ("watchNamespaces={fraud-a}",) if namespaced else ()
    before = grants(of_kind(render(sets=base_sets), kind))
    after = grants(of_kind(render(sets=(*base_sets, f"routers.{router}.enabled=true")), kind))
    assert set(after) - set(before) == {ROUTER_RULES[router]}
    assert after[ROUTER_RULES[router]] == CHILD_VERBS
    assert {k: v for k, v in after.items() if k != ROUTER_RULES[router]} == before


def test_no_router_resources_by_default() -> None:
    granted = set(grants(of_kind(render(), "ClusterRole")))
    assert not granted & set(ROUTER_RULES.values())


def test_rbac_create_false_renders_no_rbac() -> None:
    docs = render(sets=("rbac.create=false",))
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "Role", "ClusterRoleBinding", "RoleBinding")]


# ------------------------------------------------------------------ the Deployment


def test_deployment_is_hardened_and_peered() -> None:
    docs = render()
    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert deployment["spec"]["replicas"] == 2
    assert "--standalone" not in container["args"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]["memory"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "liveness"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = env_of(docs)
    assert ports == {"metrics": int(env["METRICS_PORT"]), "liveness": int(env["LIVENESS_PORT"])}
    assert env["STANDALONE"] == "false"
    spread = pod["topologySpreadConstraints"][0]
    assert spread["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    service = one(docs, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert one(docs, "ServiceAccount")["metadata"]["name"] == pod["serviceAccountName"]


def test_standalone_single_replica_has_no_pdb_and_no_peering() -> None:
    docs = render(CHART / "ci" / "standalone-values.yaml")
    container = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert "--standalone" in container["args"]
    assert container["image"].endswith("@sha256:" + "0123456789abcdef" * 4)
    assert of_kind(docs, "PodDisruptionBudget") == []
    assert of_kind(docs, "ClusterKopfPeering") == of_kind(docs, "KopfPeering") == []


def test_monitoring_objects_are_off_by_default() -> None:
    kinds = {d["kind"] for d in render()}
    assert not kinds & {*MONITORING_KINDS, "ConfigMap"}


# ------------------------------------------------------------------ alerts and dashboard


def monitoring_docs() -> list[dict[str, Any]]:
    return render(CHART / "ci" / "monitoring-values.yaml")


def metric_names(expr: str) -> set[str]:
    return set(METRIC_NAME.findall(expr))


RECORDED_NAME = re.compile(r"\b(fraud_model:\w+:\w+)\b")


def test_prometheus_rule_alerts_reference_existing_metrics() -> None:
    rule = one(monitoring_docs(), "PrometheusRule")
    groups = {group["name"]: group["rules"] for group in rule["spec"]["groups"]}
    alerts = {r["alert"]: r for r in groups["fraudmodel-operator"]}
    assert {
        "FraudModelRolledBack",
        "FraudModelProgressDeadlineExceeded",
        "FraudModelOperatorDown",
        "FraudModelOperatorReconcileErrors",
    } <= set(alerts)
    for name, alert in alerts.items():
        used = metric_names(alert["expr"])
        assert used, f"{name}: no metric in {alert['expr']!r}"
        assert used <= OPERATOR_METRICS | {"up"}, f"{name}: unknown metrics {used - OPERATOR_METRICS}"
        assert alert["labels"]["severity"]
        assert alert["annotations"]["summary"]
    service = one(monitoring_docs(), "Service")["metadata"]
    assert f'job="{service["name"]}"' in alerts["FraudModelOperatorDown"]["expr"]


def test_drift_rules_read_what_the_serving_pods_and_the_operator_export() -> None:
    """Each drift rule reads metrics that exist or series an earlier rule of its group records."""
    rule = one(monitoring_docs(), "PrometheusRule")
    drift = next(group["rules"] for group in rule["spec"]["groups"] if group["name"] == "fraudmodel-drift")
    recorded: set[str] = set()
    for r in drift:
        used = metric_names(r["expr"])
        assert used <= SERVING_METRICS | OPERATOR_METRICS, f"{r.get('record') or r['alert']}: {used}"
        assert set(RECORDED_NAME.findall(r["expr"])) <= recorded, r
        assert used or RECORDED_NAME.search(r["expr"]), r
        if "record" in r:
            recorded.add(r["record"])
    alerts = {r["alert"] for r in drift if "alert" in r}
    assert alerts == {"FraudModelScoreDrift", "FraudModelFeatureDrift", "FraudModelFlagRateShift", "FraudModelDrifting"}
    assert {"fraud_model:flag_rate:1h", "fraud_model:flag_rate:1d", "fraud_model:score_psi:1h"} <= recorded


def test_service_monitor_selects_the_metrics_service() -> None:
    docs = monitoring_docs()
    monitor = one(docs, "ServiceMonitor")
    service = one(docs, "Service")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_pod_monitor_relabels_track_fraudmodel_namespace() -> None:
    monitor = one(monitoring_docs(), "PodMonitor")
    relabel = {r["targetLabel"]: r["sourceLabels"] for r in monitor["spec"]["podMetricsEndpoints"][0]["relabelings"]}
    assert relabel["track"] == ["__meta_kubernetes_pod_label_serving_riskml_io_track"]
    assert relabel["fraudmodel"] == ["__meta_kubernetes_pod_label_app_kubernetes_io_instance"]
    assert relabel["namespace"] == ["__meta_kubernetes_namespace"]
    assert monitor["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/managed-by": "fraudmodel-operator"}


def test_dashboard_configmap_is_valid_and_shows_what_users_watch() -> None:
    configmap = one(monitoring_docs(), "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    (text,) = configmap["data"].values()
    dashboard = json.loads(text)
    assert dashboard == json.loads((CHART / "dashboards" / "fraudmodel-operator.json").read_text())
    assert dashboard["uid"]
    assert dashboard["title"]
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = set().union(*(metric_names(e) for e in exprs))
    assert used <= OPERATOR_METRICS | SERVING_METRICS, used - OPERATOR_METRICS - SERVING_METRICS
    must_show = {
        "fraudmodel_operator_canary_weight",
        "fraudmodel_operator_analysis_value",
        "fraudmodel_operator_analysis_threshold",
        "fraudmodel_operator_rollbacks_total",
        "bentoml_service_request_duration_seconds_bucket",
        "bentoml_service_request_total",
        "fraud_model_decisions_total",
        "fraud_model_score_bucket",
        "fraudmodel_operator_drifting",  # drift after promotion: the operator's condition and the reference
        "fraudmodel_operator_drift_value",
        "fraud_model_reference_flag_rate",
    }
    assert must_show <= used, must_show - used
    recorded = set().union(*(RECORDED_NAME.findall(e) for e in exprs))
    assert {"fraud_model:score_psi:1h", "fraud_model:feature_psi:1h", "fraud_model:flag_rate:1d"} <= recorded
    per_track = [e for e in exprs if metric_names(e) & SERVING_METRICS]
    assert all("track" in e for e in per_track), "serving panels must split by track"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "fraudmodel"} <= variables


# ------------------------------------------------------------------ Kubernetes schemas (kubeconform)


def openapi_document() -> Path | None:
    """swagger.json of the pinned Kubernetes: $FRAUDMODEL_K8S_OPENAPI, or the k8s.io/kubernetes Go module."""
    explicit = os.environ.get("FRAUDMODEL_K8S_OPENAPI")
    if explicit:
        return Path(explicit)
    relative = Path("api") / "openapi-spec" / "swagger.json"
    go = shutil.which("go")
    if go is None:
        gopath = os.environ.get("GOPATH", str(Path.home() / "go")).split(os.pathsep)[0]
        modcache = os.environ.get("GOMODCACHE", str(Path(gopath) / "pkg" / "mod"))
        path = Path(modcache) / f"k8s.io/kubernetes@v{kube_version()}" / relative
        return path if path.is_file() else None
    # Through the Go module proxy, like scripts/cluster/build (a no-op when the module is cached).
    result = subprocess.run(
        [go, "mod", "download", "-json", f"k8s.io/kubernetes@v{kube_version()}"],
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=tempfile.gettempdir(),
        env={**os.environ, "GOFLAGS": "-mod=mod"},
        check=False,
    )
    if result.returncode != 0:
        return None
    path = Path(json.loads(result.stdout)["Dir"]) / relative
    return path if path.is_file() else None


def _patch(node: Any) -> Any:
    """Kubernetes OpenAPI v2 -> strict standalone JSON schema (as kubeconform's `-strict` schemas)."""
    if isinstance(node, list):
        return [_patch(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _patch(value) for key, value in node.items()}
    if out.get("format") == "int-or-string":
        return {"oneOf": [{"type": "string"}, {"type": "integer"}]}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"].rsplit("/", 1)[-1]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _schema_file_name(api_version: str, kind: str) -> str:
    """kubeconform's `{{ .ResourceKind }}{{ .KindSuffix }}.json` naming."""
    group, _, version = api_version.rpartition("/")
    suffix = f"-{group.split('.')[0]}" if group else ""
    return f"{kind.lower()}{suffix}-{version}.json"


@pytest.fixture(scope="module")
def schema_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    swagger = openapi_document()
    if swagger is None:
        pytest.skip(
            f"no Kubernetes v{kube_version()} OpenAPI document: needs `go` (downloads the k8s.io/kubernetes "
            "module), the module in the Go module cache, or FRAUDMODEL_K8S_OPENAPI"
        )
    definitions = json.loads(swagger.read_text())["definitions"]
    quantity = "io.k8s.apimachinery.pkg.api.resource.Quantity"
    definitions[quantity] = {"oneOf": [{"type": "string"}, {"type": "number"}]}
    definitions = {name: _patch(schema) for name, schema in definitions.items()}
    out = tmp_path_factory.mktemp("schemas")
    for name, schema in definitions.items():
        for gvk in schema.get("x-kubernetes-group-version-kind", []):
            api_version = f"{gvk['group']}/{gvk['version']}" if gvk["group"] else gvk["version"]
            needed, todo = set(), [name]
            while todo:
                current = todo.pop()
                if current not in needed:
                    needed.add(current)
                    todo += list(_refs(definitions[current]))
            document = {"$ref": f"#/definitions/{name}", "definitions": {n: definitions[n] for n in needed}}
            (out / _schema_file_name(api_version, gvk["kind"])).write_text(json.dumps(document))
    # The chart's own CRDs: Kopf's peering objects.
    for crd in yaml.safe_load_all((CHART / "crds" / "kopf-peering.yaml").read_text()):
        for version in crd["spec"]["versions"]:
            schema = version["schema"]["openAPIV3Schema"]
            api_version = f"{crd['spec']['group']}/{version['name']}"
            (out / _schema_file_name(api_version, crd["spec"]["names"]["kind"])).write_text(json.dumps(schema))
    return out


@functools.cache
def kubeconform_binary() -> str:
    binary = find_tool("kubeconform")
    if binary is None:
        pytest.skip("no kubeconform: set $KUBECONFORM, put it on PATH, or run scripts/cluster/build")
    return binary


def kubeconform(manifests: str, schema_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            kubeconform_binary(),
            "-strict",
            "-summary",
            "-output",
            "json",
            "-kubernetes-version",
            kube_version(),
            "-schema-location",
            str(schema_dir / "{{ .ResourceKind }}{{ .KindSuffix }}.json"),
            "-skip",
            ",".join(MONITORING_KINDS),
        ],
        input=manifests,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("values", ALL_VALUES, ids=VALUES_IDS)
def test_rendered_manifests_match_kubernetes_schemas(values: Path, schema_dir: Path) -> None:
    result = kubeconform(template_text(values, crds=True), schema_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)["summary"]
    assert summary["invalid"] == summary["errors"] == 0
    assert summary["valid"] >= 8


def test_schema_validation_catches_a_misplaced_field(schema_dir: Path) -> None:
    """The generated schemas are strict: a field in the wrong place fails (so the test above can fail)."""
    docs = render()
    deployment = one(docs, "Deployment")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    broken["spec"]["replicas"] = "two"
    result = kubeconform(yaml.safe_dump(broken), schema_dir)
    assert result.returncode != 0
    assert "readOnlyRootFileSystem" in result.stdout


# ------------------------------------------------------------------ Argo CD Applications

APPLICATIONS = sorted((ROOT / "examples" / "argocd").glob("*.yaml"))


@pytest.mark.parametrize("path", APPLICATIONS, ids=[p.stem for p in APPLICATIONS])
def test_argocd_example_points_at_existing_files(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    if doc["kind"] != "Application":
        return
    source = doc["spec"]["source"]
    source_dir = ROOT / source["path"]
    assert source_dir.is_dir()
    for values in source.get("helm", {}).get("valueFiles", []):
        assert (source_dir / values).resolve().is_file(), values
    include = source.get("directory", {}).get("include")
    if include:
        for name in include.replace(".yaml", "").strip("{}").split(","):
            manifest = yaml.safe_load((source_dir / f"{name}.yaml").read_text())
            assert manifest["kind"] == "FraudModel"


def test_there_is_an_application_per_environment() -> None:
    names = {p.stem for p in APPLICATIONS}
    assert {f"fraudmodel-operator-{env}" for env in ("dev", "staging", "prod")} | {"fraudmodels"} <= names


# ------------------------------------------------------------------ NOTES.txt


def render_notes(tmp_path: Path, *values: Path) -> str:
    """`helm template` skips NOTES.txt: render it through a copy of the chart that wraps it in a document."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "_notes_under_test.tpl").write_text(
        f'{{{{- define "notes-under-test" -}}}}{notes}{{{{- end }}}}'
    )
    (chart / "templates" / "notes-under-test.yaml").write_text(
        'kind: Notes\ntext: |\n  {{- include "notes-under-test" . | nindent 2 }}\n'
    )
    args = ["template", "fraudmodel-operator", str(chart), "--namespace", "fraudmodel-system"]
    args += ["--kube-version", kube_version(), "--show-only", "templates/notes-under-test.yaml"]
    for path in values:
        args += ["--values", str(path)]
    text: str = yaml.safe_load(helm(*args).stdout)["text"]
    return text


@pytest.mark.parametrize("values", [(), (ROOT / "examples" / "values-prod.yaml",)], ids=["defaults", "prod"])
def test_notes_tell_what_to_run_next(tmp_path: Path, values: tuple[Path, ...]) -> None:
    notes = render_notes(tmp_path, *values)
    assert "kubectl -n fraudmodel-system rollout status deployment/fraudmodel-operator" in notes
    assert "--for=condition=Ready fraudmodel/" in notes
    assert "<no value>" not in notes
    if values:
        assert "kubectl -n fraud-serving apply -f examples/minimal.yaml" in notes
    else:
        assert "all namespaces" in notes
        assert "podMonitor" in notes
