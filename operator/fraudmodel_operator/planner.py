"""Plan the desired child objects of a FraudModel. Pure: no kopf, no client, no I/O, no clock.

The plan reads the *tracks* from the status (which version each track serves, its
weight), and how to serve them from the spec. Each child is a plain manifest ready
for server-side apply; the owner reference is added by the applier.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from fraudmodel_operator.api import FraudModel, ModelSpec, ServingSpec
from fraudmodel_operator.edge_routing import edge_routing, plan_routing_configmap, stable_pod_mount

Track = Literal["stable", "canary", "shadow"]
Manifest = dict[str, Any]

MANAGED_BY = "fraudmodel-operator"
TRACK_LABEL = "serving.riskml.io/track"
INSTANCE_LABEL = "serving.riskml.io/fraudmodel"
CONTAINER = "bentoml"


@dataclass(frozen=True)
class TrackPlan:
    """What one track should run: its model, weight and replica bounds."""

    track: Track
    model: ModelSpec
    weight: int
    replicas: int  # fixed replicas (no autoscaling) or the HPA floor
    max_replicas: int | None  # None without autoscaling


def child_name(fm_name: str, track: Track | None = None) -> str:
    return f"{fm_name}-{track}" if track else fm_name


def selector_labels(fm_name: str, track: Track | None = None) -> dict[str, str]:
    labels = {
        "app.kubernetes.io/instance": fm_name,
        "app.kubernetes.io/component": "predictor",
        INSTANCE_LABEL: fm_name,
    }
    if track:
        labels[TRACK_LABEL] = track
    return labels


def common_labels(fm: FraudModel, track: Track | None = None, model: ModelSpec | None = None) -> dict[str, str]:
    model = model or fm.spec.model
    return {
        "app.kubernetes.io/name": model.name,
        "app.kubernetes.io/version": model.version,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/part-of": "fraud-detection",
        **selector_labels(fm.metadata.name, track),
    }


# ---------------------------------------------------------------- replicas


def replicas_for_weight(total: int, weight: int) -> int:
    """Canary pods for a weight: proportional, rounded up, at least one while it has traffic."""
    if weight <= 0 or total <= 0:
        return 0
    return max(1, math.ceil(total * weight / 100))


def plan_tracks(fm: FraudModel, routed: int | None = None) -> list[TrackPlan]:
    """The tracks to run, from the status (which models) and the spec (how many pods).

    `routed` is the canary weight the router carries in this reconcile (it lags the step's
    weight until the canary has the pods for it; see ordering.route_weight); by default the
    step's weight. The canary is sized for its step, the stable for what is routed, so with
    the replica-ratio router the stable shrinks only once the canary's pods are ready (the
    surge Argo Rollouts makes too) and grows back at once when the canary loses its traffic.
    With autoscaling the stable HPA keeps its floor whatever the router.
    """
    serving = fm.spec.serving
    status = fm.status
    stable_model = status.stable.model or fm.spec.model
    canary = status.canary
    canary_weight = canary.weight if canary else 0
    routed = canary_weight if routed is None else routed
    # With stickyBy every request reaches the stable pods first (their edge forwards the canary's keys):
    # the stable keeps its full size, the split is not a replica ratio.
    replica_ratio = fm.spec.rollout.traffic_routing.kind == "replicaRatio" and fm.spec.rollout.sticky_by is None
    auto = serving.autoscaling
    total = auto.min_replicas if auto else serving.replicas
    canary_pods = replicas_for_weight(total, canary_weight)
    if canary is not None and canary.scaled_down:
        canary_pods = 0  # rolled back and scaled down
    elif canary is not None and canary_pods == 0:
        canary_pods = 1  # a canary without traffic still runs one pod, to warm up and be analysed
    stable_pods = total
    if replica_ratio and auto is None and canary is not None and not canary.promoting and routed > 0:
        # The split *is* the replica ratio: the canary's routed pods come out of the stable.
        stable_pods = max(1, total - replicas_for_weight(total, routed))
    max_replicas = auto.max_replicas if auto else None
    tracks = [TrackPlan("stable", stable_model, 100 - routed, stable_pods, max_replicas)]
    if canary is not None and canary.model is not None:
        tracks.append(TrackPlan("canary", canary.model, canary_weight, canary_pods, max_replicas))
    shadow = status.shadow
    if shadow is not None and shadow.model is not None:
        # Sized for the share mirrored to it; it answers no client (weight 0, on no route).
        pods = replicas_for_weight(total, max(1, math.ceil(shadow.sample * 100)))
        tracks.append(TrackPlan("shadow", shadow.model, 0, pods, max_replicas))
    return tracks


def shared_selects_canary(fm: FraudModel, routed: int) -> bool:
    """Whether the shared Service selects canary pods: only with the replica-ratio router, and only
    while the canary is routed traffic (a warming or rolled-back canary takes none). With a mesh or
    ingress router the router alone sends traffic to the canary; clients that bypass it reach stable.
    With stickyBy never: the stable pods' edge forwards the canary's keys (the routing config).
    A shadow and a canary never run together (the canary starts as the shadow ends), so a shared
    Service that selects every track's pods never reaches a shadow pod."""
    return (
        fm.spec.rollout.traffic_routing.kind == "replicaRatio"
        and fm.spec.rollout.sticky_by is None
        and fm.status.canary is not None
        and routed > 0
    )


# ---------------------------------------------------------------- manifests


def _meta(fm: FraudModel, name: str, track: Track | None, model: ModelSpec | None = None) -> dict[str, Any]:
    return {"name": name, "namespace": fm.metadata.namespace, "labels": common_labels(fm, track, model)}


def _env(fm: FraudModel, plan: TrackPlan) -> list[dict[str, str]]:
    model = plan.model
    env = [
        {"name": "FRAUDMODEL_NAME", "value": model.name},
        {"name": "FRAUDMODEL_VERSION", "value": model.version},
        {"name": "FRAUDMODEL_TRACK", "value": plan.track},
        {"name": "FRAUDMODEL_FEATURE_SCHEMA", "value": model.feature_schema_version},
        {"name": "BENTOML_PORT", "value": str(fm.spec.serving.port)},
        {"name": "TMPDIR", "value": "/tmp"},
    ]
    if model.threshold is not None:  # else the model's own, chosen at training
        env.append({"name": "FRAUDMODEL_THRESHOLD", "value": repr(model.threshold)})
    if model.tag:
        env.append({"name": "FRAUDMODEL_MODEL_TAG", "value": model.tag})
    if model.uri:
        env.append({"name": "FRAUDMODEL_MODEL_URI", "value": model.uri})
    env += [{"name": e.name, "value": e.value} for e in fm.spec.serving.env]
    if plan.track == "stable":  # the stable edge's routing config (edge_routing)
        env.append(stable_pod_mount(fm.metadata.name)[2])
    return env


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def _pod_security(serving: ServingSpec) -> dict[str, Any]:
    """Pod Security "restricted", with numeric ids: the kubelet refuses runAsNonRoot with a named image user."""
    ids = serving.security_context
    context: dict[str, Any] = {
        "runAsNonRoot": True,
        "runAsUser": ids.run_as_user,
        "runAsGroup": ids.run_as_group,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if ids.fs_group is not None:
        context["fsGroup"] = ids.fs_group
    return context


def _pod_spec(fm: FraudModel, plan: TrackPlan) -> dict[str, Any]:
    serving: ServingSpec = fm.spec.serving
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": plan.model.image,
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": "http", "containerPort": serving.port, "protocol": "TCP"}],
        "env": _env(fm, plan),
        "resources": serving.resources.model_dump(mode="json"),
        "startupProbe": _probe("/readyz", 2, 90),
        "livenessProbe": _probe("/livez", 10, 3),
        "readinessProbe": _probe("/readyz", 5, 3),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    pod: dict[str, Any] = {
        "automountServiceAccountToken": serving.automount_service_account_token,
        "securityContext": _pod_security(serving),
        "terminationGracePeriodSeconds": 30,
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}],
    }
    if plan.track == "stable":
        # Mounted always, so that a rollout changing what the edge does never changes (and restarts) the pods.
        volume, mount, _ = stable_pod_mount(fm.metadata.name)
        pod["volumes"].append(volume)
        container["volumeMounts"].append(mount)
    if serving.service_account_name:
        pod["serviceAccountName"] = serving.service_account_name
    if serving.node_selector:
        pod["nodeSelector"] = dict(serving.node_selector)
    if serving.tolerations:
        pod["tolerations"] = [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in serving.tolerations]
    if serving.topology_spread:
        pod["topologySpreadConstraints"] = _spread(fm, plan.track)
    return pod


def _spread(fm: FraudModel, track: Track) -> list[dict[str, Any]]:
    """One constraint per domain, over this track's pods of the same revision (pod-template-hash)."""
    return [
        {
            "maxSkew": spread.max_skew,
            "topologyKey": spread.topology_key,
            "whenUnsatisfiable": spread.when_unsatisfiable,
            "labelSelector": {"matchLabels": selector_labels(fm.metadata.name, track)},
            "matchLabelKeys": ["pod-template-hash"],
        }
        for spread in fm.spec.serving.topology_spread
    ]


def plan_deployment(fm: FraudModel, plan: TrackPlan) -> Manifest:
    serving = fm.spec.serving
    pod_labels = {**serving.pod_labels, **common_labels(fm, plan.track, plan.model)}
    annotations = {
        **serving.pod_annotations,
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(serving.port),
        "prometheus.io/path": "/metrics",
    }
    spec: dict[str, Any] = {
        "selector": {"matchLabels": selector_labels(fm.metadata.name, plan.track)},
        "revisionHistoryLimit": 3,
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}},
        "template": {
            "metadata": {"labels": pod_labels, "annotations": annotations},
            "spec": _pod_spec(fm, plan),
        },
    }
    if plan.max_replicas is None or plan.replicas == 0:
        # Without an HPA the operator owns `replicas`; with one, the HPA does (we never fight it).
        spec["replicas"] = plan.replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(fm, child_name(fm.metadata.name, plan.track), plan.track, plan.model),
        "spec": spec,
    }


def plan_service(fm: FraudModel, track: Track | None, model: ModelSpec, both: bool = False) -> Manifest:
    """A track's Service, or (track None) the shared one, which selects the stable pods unless `both`."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(fm, child_name(fm.metadata.name, track), track, model),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(fm.metadata.name, track or (None if both else "stable")),
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def plan_hpa(fm: FraudModel, plan: TrackPlan) -> Manifest:
    auto = fm.spec.serving.autoscaling
    assert auto is not None
    assert plan.max_replicas is not None
    metrics: list[dict[str, Any]] = [
        {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": auto.target_cpu_utilization},
            },
        }
    ]
    if auto.target_requests_per_second is not None:
        metrics.append(
            {
                "type": "Pods",
                "pods": {
                    "metric": {"name": "bentoml_service_request_per_second"},
                    "target": {"type": "AverageValue", "averageValue": str(auto.target_requests_per_second)},
                },
            }
        )
    floor = max(1, plan.replicas)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _meta(fm, child_name(fm.metadata.name, plan.track), plan.track, plan.model),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": child_name(fm.metadata.name, plan.track),
            },
            "minReplicas": floor,
            "maxReplicas": max(floor, plan.max_replicas),
            "metrics": metrics,
        },
    }


def plan_pdb(fm: FraudModel, plan: TrackPlan) -> Manifest:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(fm, child_name(fm.metadata.name, plan.track), plan.track, plan.model),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(fm.metadata.name, plan.track)},
        },
    }


def plan_children(fm: FraudModel, routed: int | None = None) -> list[Manifest]:
    """Every child the FraudModel should own right now (router objects are planned by the router).

    `routed`: the canary weight routed in this reconcile (default: the step's weight)."""
    routed = (fm.status.canary.weight if fm.status.canary else 0) if routed is None else routed
    tracks = plan_tracks(fm, routed)
    children: list[Manifest] = [plan_service(fm, None, tracks[0].model, shared_selects_canary(fm, routed))]
    children.append(plan_routing_configmap(fm, edge_routing(fm, routed), common_labels(fm, None, tracks[0].model)))
    for plan in tracks:
        children.append(plan_deployment(fm, plan))
        children.append(plan_service(fm, plan.track, plan.model))
        if plan.max_replicas is not None and plan.replicas > 0:
            children.append(plan_hpa(fm, plan))
        if plan.replicas > 1:  # both tracks: a drain evicts one pod of a track at a time
            children.append(plan_pdb(fm, plan))
    return children
