"""The planner: children per track, replicas and HPA floors from the weight, hardening, PDB rules."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from fraudmodel_operator.api import OPERATOR_ENV, FraudModelStatus, TrackStatus, revision_of
from fraudmodel_operator.kube import up_to_date, with_owner
from fraudmodel_operator.planner import plan_children, replicas_for_weight
from tests.unit.factories import canary, fraudmodel, model, track


def by_name(children: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(c["kind"], c["metadata"]["name"]): c for c in children}


STABLE_ONLY = FraudModelStatus(stable=track("v1"))


@pytest.mark.parametrize(
    ("total", "weight", "expected"),
    [(10, 0, 0), (10, 5, 1), (10, 10, 1), (10, 25, 3), (3, 50, 2), (2, 100, 2), (0, 50, 0)],
    ids=["no-weight", "rounds-up-to-one", "ten-percent", "quarter", "half-of-three", "all", "no-pods"],
)
def test_canary_replicas_follow_weight(total: int, weight: int, expected: int) -> None:
    assert replicas_for_weight(total, weight) == expected


def test_stable_only_children_and_labels() -> None:
    children = by_name(plan_children(fraudmodel(status=STABLE_ONLY, serving={"replicas": 3})))
    assert set(children) == {
        ("Service", "bot"),
        ("Deployment", "bot-stable"),
        ("Service", "bot-stable"),
        ("PodDisruptionBudget", "bot-stable"),
        ("ConfigMap", "bot-routing"),  # the stable edge's routing config, always present
    }
    deployment = children[("Deployment", "bot-stable")]
    labels = deployment["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "bot-detector"
    assert labels["app.kubernetes.io/instance"] == "bot"
    assert labels["app.kubernetes.io/version"] == "v1"
    assert labels["app.kubernetes.io/component"] == "predictor"
    assert labels["app.kubernetes.io/managed-by"] == "fraudmodel-operator"
    assert labels["app.kubernetes.io/part-of"] == "fraud-detection"
    assert labels["serving.riskml.io/track"] == "stable"
    assert "app.kubernetes.io/version" not in deployment["spec"]["selector"]["matchLabels"], "selectors are immutable"
    assert deployment["spec"]["replicas"] == 3
    shared = children[("Service", "bot")]
    assert shared["spec"]["selector"]["serving.riskml.io/track"] == "stable", "no canary: stable pods only"


@pytest.mark.parametrize(
    ("router", "weight", "routed", "both"),
    [
        ({"replicaRatio": {}}, 0, 0, False),
        ({"replicaRatio": {}}, 10, 0, False),
        ({"replicaRatio": {}}, 10, 10, True),
        ({"istio": {"virtualService": "vs"}}, 30, 30, False),
        ({"gatewayAPI": {"httpRoute": "r"}}, 30, 30, False),
        ({"nginx": {"ingress": "i"}}, 30, 30, False),
    ],
    ids=["ratio-warming", "ratio-not-yet-routed", "ratio-routed", "istio", "gateway", "nginx"],
)
def test_shared_service_selects_canary_pods_only_while_replica_ratio_routes_them(
    router: dict[str, Any], weight: int, routed: int, both: bool
) -> None:
    """A warming or rolled-back canary takes no traffic through the shared Service; with a mesh or ingress
    router clients that bypass the router reach the stable only."""
    status = FraudModelStatus(stable=track("v1", 100 - weight), canary=canary("v2", weight))
    fm = fraudmodel("v2", status=status, serving={"replicas": 4}, rollout={"trafficRouting": router})
    selector = by_name(plan_children(fm, routed))[("Service", "bot")]["spec"]["selector"]
    assert ("serving.riskml.io/track" not in selector) is both
    if not both:
        assert selector["serving.riskml.io/track"] == "stable"


@pytest.mark.parametrize(
    ("routed", "stable_pods"), [(10, 9), (30, 7)], ids=["canary-not-ready-for-30", "canary-ready-for-30"]
)
def test_replica_ratio_stable_shrinks_only_for_routed_weight(routed: int, stable_pods: int) -> None:
    """The canary is sized for its step at once; the stable gives up pods only once they are routed."""
    status = FraudModelStatus(stable=track("v1", 70), canary=canary("v2", 30, step=2))
    children = by_name(plan_children(fraudmodel("v2", status=status, serving={"replicas": 10}), routed))
    assert children[("Deployment", "bot-canary")]["spec"]["replicas"] == 3
    assert children[("Deployment", "bot-stable")]["spec"]["replicas"] == stable_pods


def test_promotion_runs_the_new_stable_at_full_size_beside_the_canary() -> None:
    """stepWeight == maxWeight == 100 deadlocked: the stable was planned at 0 pods while promoting."""
    status = FraudModelStatus(stable=track("v2", 0), canary=canary("v2", 100, promoting=True))
    children = by_name(plan_children(fraudmodel("v2", status=status, serving={"replicas": 4}), 100))
    assert children[("Deployment", "bot-stable")]["spec"]["replicas"] == 4
    assert children[("Deployment", "bot-canary")]["spec"]["replicas"] == 4


def test_pods_are_hardened_probed_and_scraped() -> None:
    deployment = by_name(plan_children(fraudmodel(status=STABLE_ONLY)))[("Deployment", "bot-stable")]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    # Numeric ids: with runAsNonRoot the kubelet refuses an image whose USER is a name (bentoml's).
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 1034,
        "runAsGroup": 1034,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["automountServiceAccountToken"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "3000"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert (env["FRAUDMODEL_TRACK"], env["FRAUDMODEL_VERSION"]) == ("stable", "v1")
    assert "FRAUDMODEL_THRESHOLD" not in env  # unset in the spec: the model's own threshold


def test_pod_ids_follow_the_fraudmodel() -> None:
    fm = fraudmodel(
        status=STABLE_ONLY, serving={"securityContext": {"runAsUser": 65532, "runAsGroup": 0, "fsGroup": 2000}}
    )
    pod = by_name(plan_children(fm))[("Deployment", "bot-stable")]["spec"]["template"]["spec"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 0,
        "fsGroup": 2000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


@pytest.mark.parametrize("ids", [{"runAsUser": 0}, {"runAsUser": -1}, {"runAsGroup": 2**31}, {"privileged": True}])
def test_pod_ids_outside_the_restricted_profile_are_refused(ids: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        fraudmodel(status=STABLE_ONLY, serving={"securityContext": ids})


def test_service_account_token_only_when_asked() -> None:
    fm = fraudmodel(status=STABLE_ONLY, serving={"automountServiceAccountToken": True, "serviceAccountName": "m"})
    pod = by_name(plan_children(fm))[("Deployment", "bot-stable")]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is True
    assert pod["serviceAccountName"] == "m"


@pytest.mark.parametrize(
    ("replicas", "pdb"),
    [(1, False), (2, True), (5, True)],
    ids=["single-replica-no-pdb", "two-replicas-pdb", "five-replicas-pdb"],
)
def test_pdb_only_with_more_than_one_stable_replica(replicas: int, pdb: bool) -> None:
    children = by_name(plan_children(fraudmodel(status=STABLE_ONLY, serving={"replicas": replicas})))
    assert (("PodDisruptionBudget", "bot-stable") in children) is pdb


@pytest.mark.parametrize(
    ("router", "weight", "stable_pods", "canary_pods"),
    [
        ({"replicaRatio": {}}, 0, 10, 1),
        ({"replicaRatio": {}}, 10, 9, 1),
        ({"replicaRatio": {}}, 30, 7, 3),
        ({"replicaRatio": {}}, 50, 5, 5),
        ({"istio": {"virtualService": "vs"}}, 30, 10, 3),
        ({"gatewayAPI": {"httpRoute": "r"}}, 50, 10, 5),
    ],
    ids=["warming", "ratio-10", "ratio-30", "ratio-50", "istio-keeps-stable", "gateway-keeps-stable"],
)
def test_fixed_replicas_per_track(router: dict[str, Any], weight: int, stable_pods: int, canary_pods: int) -> None:
    status = FraudModelStatus(stable=track("v1", 100 - weight), canary=canary("v2", weight))
    fm = fraudmodel("v2", status=status, serving={"replicas": 10}, rollout={"trafficRouting": router})
    children = by_name(plan_children(fm))
    assert children[("Deployment", "bot-stable")]["spec"]["replicas"] == stable_pods
    assert children[("Deployment", "bot-canary")]["spec"]["replicas"] == canary_pods
    canary_image = children[("Deployment", "bot-canary")]["spec"]["template"]["spec"]["containers"][0]["image"]
    assert canary_image == "bot:v2"
    assert children[("Service", "bot-canary")]["spec"]["selector"]["serving.riskml.io/track"] == "canary"


@pytest.mark.parametrize("router", [{"istio": {"virtualService": "vs"}}, {"replicaRatio": {}}], ids=["istio", "ratio"])
@pytest.mark.parametrize(
    ("weight", "canary_floor"),
    [(0, 1), (10, 1), (25, 1), (50, 2), (100, 4)],
    ids=["warming", "w10", "w25", "w50", "w100"],
)
def test_per_track_hpa_floor_follows_weight(router: dict[str, Any], weight: int, canary_floor: int) -> None:
    """The stable HPA keeps its floor whatever the router (it was lowered 4 -> 3 -> 2 by replica ratio)."""
    status = FraudModelStatus(stable=track("v1", 100 - weight), canary=canary("v2", weight))
    fm = fraudmodel(
        "v2",
        status=status,
        serving={"autoscaling": {"minReplicas": 4, "maxReplicas": 12}},
        rollout={"trafficRouting": router},
    )
    children = by_name(plan_children(fm))
    stable_hpa = children[("HorizontalPodAutoscaler", "bot-stable")]["spec"]
    canary_hpa = children[("HorizontalPodAutoscaler", "bot-canary")]["spec"]
    assert (stable_hpa["minReplicas"], stable_hpa["maxReplicas"]) == (4, 12)
    assert (canary_hpa["minReplicas"], canary_hpa["maxReplicas"]) == (canary_floor, 12)
    assert canary_hpa["scaleTargetRef"]["name"] == "bot-canary"
    for deployment in ("bot-stable", "bot-canary"):
        assert "replicas" not in children[("Deployment", deployment)]["spec"], "the HPA owns replicas"


def test_rolled_back_canary_is_scaled_to_zero_without_hpa() -> None:
    status = FraudModelStatus(
        stable=track("v1"), canary=canary("v2", 0, rolled_back_at=None, scaled_down=True), rolled_back_revision="x"
    )
    fm = fraudmodel("v2", status=status, serving={"autoscaling": {"minReplicas": 2, "maxReplicas": 5}})
    children = by_name(plan_children(fm))
    assert children[("Deployment", "bot-canary")]["spec"]["replicas"] == 0
    assert ("HorizontalPodAutoscaler", "bot-canary") not in children


def test_requests_per_second_target_adds_a_pods_metric() -> None:
    fm = fraudmodel(
        status=STABLE_ONLY, serving={"autoscaling": {"minReplicas": 2, "maxReplicas": 5, "targetRequestsPerSecond": 40}}
    )
    metrics = by_name(plan_children(fm))[("HorizontalPodAutoscaler", "bot-stable")]["spec"]["metrics"]
    assert [m["type"] for m in metrics] == ["Resource", "Pods"]
    assert metrics[1]["pods"]["target"] == {"type": "AverageValue", "averageValue": "40.0"}


def test_stable_track_serves_the_status_model_not_the_spec() -> None:
    """During a rollout the spec names the new version; the stable Deployment must keep the old one."""
    status = FraudModelStatus(stable=track("v1", 90), canary=canary("v2", 10))
    children = by_name(plan_children(fraudmodel("v2", status=status)))
    image = children[("Deployment", "bot-stable")]["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "bot:v1"


def test_every_variable_the_operator_sets_is_reserved_and_tuning_knobs_pass_through() -> None:
    """What the planner sets from the spec, a FraudModel's serving.env must not override;
    the bento's own tuning knobs reach the container."""
    m = model("v1", tag="bot:v1", uri="s3://models/bot/v1")
    stable = TrackStatus(version="v1", image=m.image, revision=revision_of(m), model=m, weight=100)
    fm = fraudmodel(
        status=FraudModelStatus(stable=stable), serving={"env": [{"name": "FRAUDMODEL_WORKERS", "value": "2"}]}
    )
    deployment = by_name(plan_children(fm))[("Deployment", "bot-stable")]
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    names = [e["name"] for e in env]
    assert {"FRAUDMODEL_MODEL_TAG", "FRAUDMODEL_MODEL_URI"} <= set(names)
    assert set(names) - {"FRAUDMODEL_WORKERS"} <= set(OPERATOR_ENV), "every variable the operator sets is reserved"
    assert {"name": "FRAUDMODEL_WORKERS", "value": "2"} in env


@pytest.mark.parametrize(
    ("replicas", "weight", "canary_pdb"),
    [(10, 10, False), (10, 20, True), (4, 50, True)],
    ids=["one-canary-pod-no-pdb", "two-canary-pods-pdb", "half-pdb"],
)
def test_canary_track_gets_a_pdb_with_more_than_one_pod(replicas: int, weight: int, canary_pdb: bool) -> None:
    status = FraudModelStatus(stable=track("v1", 100 - weight), canary=canary("v2", weight))
    children = by_name(plan_children(fraudmodel("v2", status=status, serving={"replicas": replicas})))
    assert (("PodDisruptionBudget", "bot-canary") in children) is canary_pdb
    if canary_pdb:
        pdb = children[("PodDisruptionBudget", "bot-canary")]["spec"]
        assert pdb == {
            "maxUnavailable": 1,
            "selector": {"matchLabels": children[("Deployment", "bot-canary")]["spec"]["selector"]["matchLabels"]},
        }


def test_pods_spread_over_nodes_and_zones_by_default() -> None:
    status = FraudModelStatus(stable=track("v1", 80), canary=canary("v2", 20))
    children = by_name(plan_children(fraudmodel("v2", status=status, serving={"replicas": 10})))
    for name in ("bot-stable", "bot-canary"):
        deployment = children[("Deployment", name)]["spec"]
        spread = deployment["template"]["spec"]["topologySpreadConstraints"]
        assert [c["topologyKey"] for c in spread] == ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
        for constraint in spread:
            assert constraint["maxSkew"] == 1
            assert constraint["whenUnsatisfiable"] == "ScheduleAnyway", "a single-node cluster still schedules"
            assert constraint["labelSelector"] == {"matchLabels": deployment["selector"]["matchLabels"]}
            assert constraint["matchLabelKeys"] == ["pod-template-hash"], "each revision spreads on its own"


@pytest.mark.parametrize(
    ("spread", "expected"),
    [
        ([], None),
        (
            [{"topologyKey": "topology.kubernetes.io/zone", "maxSkew": 2, "whenUnsatisfiable": "DoNotSchedule"}],
            [("topology.kubernetes.io/zone", 2, "DoNotSchedule")],
        ),
    ],
    ids=["none", "zones-hard"],
)
def test_topology_spread_from_the_spec(
    spread: list[dict[str, Any]], expected: list[tuple[str, int, str]] | None
) -> None:
    fm = fraudmodel(status=STABLE_ONLY, serving={"replicas": 3, "topologySpread": spread})
    pod = by_name(plan_children(fm))[("Deployment", "bot-stable")]["spec"]["template"]["spec"]
    got = pod.get("topologySpreadConstraints")
    assert (
        None if got is None else [(c["topologyKey"], c["maxSkew"], c["whenUnsatisfiable"]) for c in got]
    ) == expected


@pytest.mark.parametrize(
    "spread",
    [
        [{"maxSkew": 1}],
        [{"topologyKey": "zone", "maxSkew": 0}],
        [{"topologyKey": "zone", "whenUnsatisfiable": "Maybe"}],
    ],
    ids=["no-key", "zero-skew", "unknown-policy"],
)
def test_bad_topology_spread_is_rejected(spread: list[dict[str, Any]]) -> None:
    with pytest.raises(ValidationError):
        fraudmodel(serving={"topologySpread": spread})


# ---------------------------------------------------------------- applied as declared


def applied(fm: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """The children as the operator applies them (owned, stamped with the applied hash)."""
    return {key: with_owner(child, fm) for key, child in by_name(plan_children(fm)).items()}


def as_served(manifest: dict[str, Any], replace: dict[str, str] | None = None) -> dict[str, Any]:
    """What the API server hands back: our manifest with its defaults added and quantities canonicalised."""
    text = json.dumps(manifest)
    for ours, canonical in (replace or {}).items():
        text = text.replace(json.dumps(ours), json.dumps(canonical))
    served: dict[str, Any] = json.loads(text)
    served["metadata"] |= {"uid": "child-uid", "resourceVersion": "7", "generation": 1}
    served.setdefault("status", {})
    return served


@pytest.mark.parametrize(
    "removed",
    [
        {"nodeSelector": {"pool": "fraud"}},
        {"tolerations": [{"key": "dedicated", "value": "fraud", "effect": "NoSchedule"}]},
        {"podAnnotations": {"example.com/owner": "risk"}},
        {"podLabels": {"team": "risk"}},
        {"serviceAccountName": "fraud-sa"},
    ],
    ids=["nodeSelector", "tolerations", "podAnnotations", "podLabels", "serviceAccountName"],
)
def test_a_field_removed_from_the_spec_is_applied_again(removed: dict[str, Any]) -> None:
    """Fields we stop setting never reached the cluster: only the fields we set were compared."""
    before = applied(fraudmodel(status=STABLE_ONLY, serving=removed))
    live = {key: as_served(child) for key, child in before.items()}
    assert all(up_to_date(child, live[key]) for key, child in before.items()), "nothing to do while unchanged"
    after = applied(fraudmodel(status=STABLE_ONLY))
    key = ("Deployment", "bot-stable")
    assert not up_to_date(after[key], live[key]), f"removing {removed} must re-apply the Deployment"
    assert all(up_to_date(after[k], live[k]) for k in after if k != key), "other children are untouched"


def test_quantities_the_api_server_canonicalises_are_not_re_applied() -> None:
    """`1000m` comes back as `1`, `1024Mi` as `1Gi`, `0.25` as `250m`, `40.0` as `40`: the same values."""
    fm = fraudmodel(
        status=STABLE_ONLY,
        serving={
            "resources": {"requests": {"cpu": "0.25", "memory": "1024Mi"}, "limits": {"cpu": "1000m", "memory": "2Gi"}},
            "autoscaling": {"minReplicas": 2, "maxReplicas": 4, "targetRequestsPerSecond": 40},
        },
    )
    canonical = {"0.25": "250m", "1024Mi": "1Gi", "1000m": "1", "40.0": "40"}
    for key, child in applied(fm).items():
        assert up_to_date(child, as_served(child, canonical)), key
    deployment = applied(fm)[("Deployment", "bot-stable")]
    more_cpu = as_served(deployment, {"1000m": "2"})
    assert not up_to_date(deployment, more_cpu), "a different quantity is still a change"


def test_threshold_is_passed_only_when_the_fraudmodel_sets_one() -> None:
    fm = fraudmodel("v1")
    pinned = fm.model_copy(update={"spec": fm.spec.model_copy(update={"model": model("v1", threshold=0.7)})})
    deployment = by_name(plan_children(pinned, 0))[("Deployment", "bot-stable")]
    env = {e["name"]: e["value"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["FRAUDMODEL_THRESHOLD"] == "0.7"
