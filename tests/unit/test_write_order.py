"""One reconcile against a recording fake cluster: what is written, in which order, and what happens
when the API server refuses a write. The ordering is safety policy (ordering.py): traffic leaves the
canary first, rises only once the canary has ready pods for it, and nothing is deleted or scaled to
zero until no route pointed at it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from fraudmodel_operator.analysis import MetricProvider, Vector
from fraudmodel_operator.api import FraudModel, FraudModelStatus, Phase, TrafficRouting
from fraudmodel_operator.kube import Manifest, WriteRefused, with_owner
from fraudmodel_operator.metrics import OperatorMetrics
from fraudmodel_operator.ordering import plan_writes, route_weight
from fraudmodel_operator.planner import plan_children
from fraudmodel_operator.reconciler import Context, deployment_ready, reconcile
from fraudmodel_operator.rollout import Event
from fraudmodel_operator.routers.gateway_api import plan_httproute
from fraudmodel_operator.routers.istio import plan_virtualservice
from tests.unit.factories import at, canary, fraudmodel, model, track

GATEWAY = {"gatewayAPI": {"httpRoute": "bot-route"}}
ISTIO = {"istio": {"virtualService": "bot-vs"}}
RATIO: dict[str, Any] = {"replicaRatio": {}}


class NoMetrics:
    async def query(self, promql: str) -> Vector:
        return []

    async def is_online(self) -> bool:
        return True


@dataclass
class Cluster:
    """A fake API server: serves objects, records every write in order, refuses what it is told to."""

    objects: dict[tuple[str, str], Manifest] = field(default_factory=dict)
    refuse: dict[tuple[str, str], str] = field(default_factory=dict)
    calls: list[tuple[str, str, str]] = field(default_factory=list)  # (verb, kind, name)
    status_patches: list[dict[str, Any]] = field(default_factory=list)

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> Manifest | None:
        return self.objects.get((kind, name))

    async def apply(self, manifest: Manifest) -> None:
        key = (manifest["kind"], manifest["metadata"]["name"])
        self.calls.append(("apply", *key))
        if key in self.refuse:
            raise WriteRefused(*key, self.refuse[key])
        self.objects[key] = {**self.objects.get(key, {}), **manifest}

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        self.calls.append(("delete", kind, name))
        self.objects.pop((kind, name), None)

    async def patch_status(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        self.calls.append(("patch_status", "FraudModel", name))
        self.status_patches.append(patch)

    def writes(self) -> list[tuple[str, str, str]]:
        return [c for c in self.calls if c[0] != "patch_status"]


def deployment(manifest: Manifest, ready: int | None = None) -> Manifest:
    n = int(manifest["spec"].get("replicas", 1)) if ready is None else ready
    return {**manifest, "status": {"readyReplicas": n, "updatedReplicas": n, "replicas": n}}


def live_of(
    fm: FraudModel, ready: dict[str, int] | None = None, routed: int | None = None
) -> dict[tuple[str, str], Manifest]:
    """The cluster as the plan of `fm` left it, with `ready` pods per Deployment (default: all)."""
    ready = ready or {}
    live = {}
    for m in plan_children(fm, routed):
        m = with_owner(m, fm)
        name = m["metadata"]["name"]
        live[(m["kind"], name)] = deployment(m, ready.get(name)) if m["kind"] == "Deployment" else m
    return live


@dataclass
class Run:
    cluster: Cluster
    status: FraudModelStatus
    events: list[Event]
    metrics: OperatorMetrics


async def run(fm: FraudModel, live: dict[tuple[str, str], Manifest], cluster: Cluster, seconds: float = 1) -> Run:
    def provider(_fm: FraudModel) -> MetricProvider:
        return NoMetrics()

    events: list[Event] = []
    body = fm.model_dump(mode="json", by_alias=True, exclude_none=True)
    ctx = Context(kube=cluster, metrics=OperatorMetrics(), provider_for=provider)
    outcome = await reconcile(ctx, body, live, at(seconds), events.append)
    written = outcome.status if outcome.status is not None else body["status"]  # None: nothing changed
    return Run(cluster, FraudModelStatus.model_validate(written), events, ctx.metrics)


def running(weight: int, router: dict[str, Any], replicas: int = 10, **fields: Any) -> FraudModel:
    status = FraudModelStatus(
        stable=track("v1", 100 - weight),
        canary=canary("v2", weight, step=1 if weight else 0, analyzed_at=at(0), **fields),
        phase=Phase.PROGRESSING,
        traffic_routing=TrafficRouting.model_validate(router),
    )
    rollout = {"steps": [10, 50], "interval": "1m", "trafficRouting": router}
    return fraudmodel("v2", status=status, serving={"replicas": replicas}, rollout=rollout)


def route_of(fm: FraudModel, canary_weight: int) -> dict[tuple[str, str], Manifest]:
    config = fm.spec.rollout.traffic_routing.gateway_api
    assert config is not None
    return {("HTTPRoute", "bot-route"): with_owner(plan_httproute(fm, config, 100 - canary_weight, canary_weight), fm)}


def canary_weight_of(cluster: Cluster) -> int:
    refs = cluster.objects[("HTTPRoute", "bot-route")]["spec"]["rules"][0]["backendRefs"]
    return next((r["weight"] for r in refs if r["name"] == "bot-canary"), 0)


async def test_weight_rises_only_when_the_canary_has_ready_pods_for_it() -> None:
    """Step 50% needs 5 canary pods; with 1 ready the router keeps 10% (it was set to 50% at once)."""
    fm = running(50, GATEWAY)
    before = running(10, GATEWAY)
    live = live_of(before)
    cluster = Cluster(objects=route_of(fm, 10))
    result = await run(fm, live, cluster)
    assert canary_weight_of(cluster) == 10, "the previous weight is kept"
    assert ("apply", "Deployment", "bot-canary") in cluster.writes(), "the canary is scaled up for its step"
    assert result.status.canary is not None
    assert (result.status.canary.weight, result.status.canary.effective_weight) == (50, 10)
    assert "1 of the 5 ready pods" in result.status.message
    assert result.metrics.weight.labels("risk", "bot")._value.get() == 10, "the metric says what is served"

    again = await run(fm, live_of(fm, routed=10), cluster)
    assert canary_weight_of(cluster) == 50, "ready at its desired count: the step's weight is routed"
    assert again.status.canary is not None
    assert again.status.canary.effective_weight == 50


async def test_a_canary_with_no_ready_pod_gets_no_traffic_at_once() -> None:
    fm = running(30, GATEWAY)
    cluster = Cluster(objects=route_of(fm, 30))
    await run(fm, live_of(fm, ready={"bot-canary": 0}), cluster)
    assert cluster.writes()[0] == ("apply", "HTTPRoute", "bot-route"), "traffic moves first"
    assert canary_weight_of(cluster) == 0


async def test_abort_moves_traffic_first_and_a_refused_child_does_not_stop_it() -> None:
    """One refused write raised out of the reconcile before the router was touched: 50% stayed on
    an aborted canary, with no status, condition or Event."""
    fm = running(50, GATEWAY)
    fm = fm.model_copy(
        update={"metadata": fm.metadata.model_copy(update={"annotations": {"serving.riskml.io/abort": "v2"}})}
    )
    live = live_of(fm)
    del live[("Service", "bot-stable")]  # to be re-created: and the API server refuses it
    cluster = Cluster(objects=route_of(fm, 50), refuse={("Service", "bot-stable"): "exceeded quota: services=10"})
    result = await run(fm, live, cluster)
    assert cluster.writes()[0] == ("apply", "HTTPRoute", "bot-route")
    assert canary_weight_of(cluster) == 0
    assert ("apply", "Service", "bot-stable") in cluster.writes(), "attempted, refused, collected"
    assert cluster.calls[-1][0] == "patch_status", "status is always written"
    assert result.status.phase == Phase.ROLLED_BACK
    degraded = next(c for c in result.status.conditions if c.type == "Degraded")
    assert (degraded.status, degraded.reason) == ("True", "ApplyFailed")
    assert "Service bot-stable: exceeded quota: services=10" in degraded.message
    warnings = [e for e in result.events if e.reason == "ApplyFailed"]
    assert warnings
    assert warnings[0].type == "Warning"
    assert "bot-stable" in warnings[0].message


async def test_every_refused_child_is_reported_and_the_others_still_applied() -> None:
    """A child the API server refuses (a name starting with a digit, requests above limits, ...)."""
    fm = fraudmodel("v1", status=FraudModelStatus(stable=track("v1")))
    cluster = Cluster(
        refuse={
            ("Deployment", "bot-stable"): 'Deployment.apps "bot-stable" is invalid: spec.template...: must be <= limit',
            ("Service", "bot"): "admission webhook denied the request",
        }
    )
    result = await run(fm, {}, cluster)
    applied = {(k, n) for v, k, n in cluster.writes()}
    assert {("Service", "bot-stable"), ("PodDisruptionBudget", "bot-stable")} <= applied
    degraded = next(c for c in result.status.conditions if c.type == "Degraded")
    assert degraded.reason == "ApplyFailed"
    assert "must be <= limit" in degraded.message
    assert "admission webhook denied" in degraded.message
    ready = next(c for c in result.status.conditions if c.type == "Ready")
    assert ready.status == "False"

    # The same refusal at the next reconcile: status already says so, no second Event.
    refused_again = fm.model_copy(update={"status": result.status})
    again = await run(refused_again, {}, Cluster(refuse=cluster.refuse))
    assert [e for e in again.events if e.reason == "ApplyFailed"] == []


def promoting(router: dict[str, Any], replicas: int = 4) -> FraudModel:
    status = FraudModelStatus(
        stable=track("v2", 50),
        canary=canary("v2", 50, step=1, promoting=True),
        phase=Phase.PROGRESSING,
        traffic_routing=TrafficRouting.model_validate(router),
    )
    rollout = {"steps": [10, 50], "trafficRouting": router}
    return fraudmodel("v2", status=status, serving={"replicas": replicas}, rollout=rollout)


async def test_promotion_hand_over_waits_for_the_new_stable_at_full_size() -> None:
    """The canary was deleted with 2 of 4 new stable pods serving."""
    fm = promoting(ISTIO)
    cluster = Cluster()
    result = await run(fm, live_of(fm, ready={"bot-stable": 2}), cluster)
    assert result.status.canary is not None, "the canary keeps serving"
    assert not [w for w in cluster.writes() if w[0] == "delete"]


async def test_promotion_routes_away_then_deletes_the_canary_at_the_next_reconcile() -> None:
    """Promotion and spec revert deleted the canary Deployment and Service before the router moved."""
    fm = promoting(ISTIO)
    config = fm.spec.rollout.traffic_routing.istio
    assert config is not None
    vs = with_owner(plan_virtualservice(fm, config, 50, 50), fm)
    cluster = Cluster(objects={("VirtualService", "bot-vs"): vs})
    live = live_of(fm)
    done = await run(fm, live, cluster)
    assert done.status.canary is None
    assert [e.reason for e in done.events][:1] == ["Promoted"]
    assert cluster.writes() == [("apply", "VirtualService", "bot-vs")], "route away, delete nothing yet"
    hosts = [
        r["destination"]["host"] for r in cluster.objects[("VirtualService", "bot-vs")]["spec"]["http"][0]["route"]
    ]
    assert hosts == ["bot-stable.risk.svc.cluster.local"]

    after = fm.model_copy(update={"status": done.status})
    cluster.calls.clear()
    await run(after, live, cluster)
    assert cluster.writes()[-3:] == [
        ("delete", "Service", "bot-canary"),
        ("delete", "Deployment", "bot-canary"),
        ("delete", "PodDisruptionBudget", "bot-canary"),
    ]


async def test_hand_over_waits_for_the_controller_to_observe_the_new_spec() -> None:
    """A promotion that keeps the image (threshold change): the old pods' status must not hand over."""
    fm = promoting(ISTIO)
    live = live_of(fm)
    stable = live[("Deployment", "bot-stable")]
    live[("Deployment", "bot-stable")] = {
        **stable,
        "metadata": {**stable["metadata"], "generation": 7},
        "status": {**stable["status"], "observedGeneration": 6},
    }
    result = await run(fm, live, Cluster())
    assert result.status.canary is not None


@pytest.mark.parametrize(
    ("generation", "observed", "ready"),
    [(7, 6, 0), (7, 7, 4), (0, 0, 4)],
    ids=["not-observed-yet", "observed", "no-generation-reported"],
)
def test_deployment_ready_needs_the_current_generation_for_a_hand_over(
    generation: int, observed: int, ready: int
) -> None:
    live = {
        "metadata": {"generation": generation},
        "spec": {"replicas": 4, "template": {"spec": {"containers": [{"image": "bot:v2"}]}}},
        "status": {"observedGeneration": observed, "readyReplicas": 4, "updatedReplicas": 4},
    }
    assert deployment_ready(live, "bot:v2", strict=True) == (ready, 4)


async def test_replica_ratio_rollback_takes_the_canary_out_of_the_shared_service_first() -> None:
    """A rolled-back canary kept serving (33% at replicas 2) until scaleDownDelay."""
    fm = running(10, RATIO, replicas=2)
    live = live_of(fm)
    abort = {"serving.riskml.io/abort": "v2"}
    fm = fm.model_copy(update={"metadata": fm.metadata.model_copy(update={"annotations": abort})})
    cluster = Cluster()
    result = await run(fm, live, cluster)
    assert result.status.phase == Phase.ROLLED_BACK
    assert cluster.writes()[0] == ("apply", "Service", "bot")
    assert cluster.objects[("Service", "bot")]["spec"]["selector"]["serving.riskml.io/track"] == "stable"
    assert result.status.canary is not None
    assert result.status.canary.effective_weight == 0


async def test_warming_replica_ratio_canary_takes_no_traffic() -> None:
    """The warming canary at weight 0 took 1/(N+1) of the traffic through the shared Service."""
    fm = running(0, RATIO, replicas=2)
    live = live_of(fm)
    shared = live[("Service", "bot")]
    selector = {k: v for k, v in shared["spec"]["selector"].items() if k != "serving.riskml.io/track"}
    live[("Service", "bot")] = {**shared, "spec": {**shared["spec"], "selector": selector}}  # both tracks
    fm = fm.model_copy(
        update={"spec": fm.spec.model_copy(update={"rollout": fm.spec.rollout.model_copy(update={"paused": True})})}
    )
    cluster = Cluster()
    await run(fm, live, cluster)
    assert cluster.writes()[0] == ("apply", "Service", "bot")
    assert cluster.objects[("Service", "bot")]["spec"]["selector"]["serving.riskml.io/track"] == "stable"


async def test_spec_revert_routes_away_before_deleting_the_canary() -> None:
    fm = running(30, ISTIO)
    config = fm.spec.rollout.traffic_routing.istio
    assert config is not None
    vs = with_owner(plan_virtualservice(fm, config, 70, 30), fm)
    reverted = fm.model_copy(update={"spec": fm.spec.model_copy(update={"model": model("v1")})})
    cluster = Cluster(objects={("VirtualService", "bot-vs"): vs})
    result = await run(reverted, live_of(fm), cluster)
    assert result.status.canary is None
    assert cluster.writes()[0] == ("apply", "VirtualService", "bot-vs")
    assert not [w for w in cluster.writes() if w[0] == "delete"], "deleted at the next reconcile, once drained"


async def test_router_switched_mid_rollout_is_finalised_first() -> None:
    """The old router kept sending traffic to a canary Service about to be deleted."""
    fm = running(30, GATEWAY)
    old_vs = with_owner(plan_virtualservice(fm, TrafficRouting.model_validate(ISTIO).istio, 70, 30), fm)  # type: ignore[arg-type]
    fm = fm.model_copy(
        update={"status": fm.status.model_copy(update={"traffic_routing": TrafficRouting.model_validate(ISTIO)})}
    )
    cluster = Cluster(objects={("VirtualService", "bot-vs"): old_vs})
    result = await run(fm, live_of(fm), cluster)
    assert cluster.writes()[:2] == [("apply", "VirtualService", "bot-vs"), ("apply", "HTTPRoute", "bot-route")]
    hosts = [
        r["destination"]["host"] for r in cluster.objects[("VirtualService", "bot-vs")]["spec"]["http"][0]["route"]
    ]
    assert hosts == ["bot-stable.risk.svc.cluster.local"]
    assert result.status.traffic_routing == TrafficRouting.model_validate(GATEWAY)


async def test_stable_below_its_hpa_floor_is_not_ready() -> None:
    """Ready was declared with 1 stable replica against an HPA minimum of 4."""
    fm = fraudmodel(
        "v1",
        status=FraudModelStatus(stable=track("v1"), phase=Phase.PROGRESSING),
        serving={"autoscaling": {"minReplicas": 4, "maxReplicas": 8}},
    )
    live = live_of(fm)
    stable = live[("Deployment", "bot-stable")]
    live[("Deployment", "bot-stable")] = deployment({**stable, "spec": {**stable["spec"], "replicas": 1}})
    result = await run(fm, live, Cluster())
    assert result.status.phase == Phase.PROGRESSING


async def test_a_step_replica_counts_cannot_express_is_reported() -> None:
    """With replicas 2 every step from 10% to 50% is really 50%."""
    fm = running(0, RATIO, replicas=2)
    result = await run(fm, live_of(fm), Cluster())
    assert result.status.canary is not None
    assert result.status.canary.weight == 10
    warning = next(e for e in result.events if e.reason == "WeightApproximated")
    assert warning.type == "Warning"
    assert "50%" in warning.message


@pytest.mark.parametrize(
    ("weight", "ready", "pods", "live", "expected"),
    [
        (50, 1, 5, 10, 10),
        (50, 5, 5, 10, 50),
        (10, 0, 1, 30, 0),
        (10, 3, 1, 50, 10),
    ],
    ids=["rise-waits-for-pods", "rise-when-ready", "no-ready-pod-zero", "fall-at-once"],
)
def test_route_weight(weight: int, ready: int, pods: int, live: int, expected: int) -> None:
    assert route_weight(running(weight, GATEWAY), ready, pods, live)[0] == expected


def test_write_plan_orders_by_rank_and_says_why() -> None:
    before = running(50, GATEWAY)
    target = before.model_copy(
        update={
            "status": before.status.model_copy(
                update={"canary": before.status.canary.model_copy(update={"weight": 0, "rolled_back_at": at(1)})}
            )
        }  # type: ignore[union-attr]
    )
    desired = [with_owner(m, target) for m in plan_children(target, 0)]
    plan = plan_writes(before, target, desired, live_of(before), routed=0, live_weight=50)
    assert plan.writes[0].verb == "route"
    assert plan.writes[0].reason == "traffic moves away from the canary before anything else"
    ranks = [w.rank for w in plan.writes]
    assert ranks == sorted(ranks, key=["finalize-old", "reduce", "capacity", "expose", "shrink", "remove"].index)


def test_model_factory_is_the_one_the_cluster_would_see() -> None:
    assert model("v2").image == "bot:v2"


async def test_a_first_route_is_written_after_the_services_it_names() -> None:
    fm = fraudmodel(
        "v1", status=FraudModelStatus(stable=track("v1")), rollout={"trafficRouting": GATEWAY}, serving={"replicas": 2}
    )
    cluster = Cluster()
    await run(fm, {}, cluster)
    writes = cluster.writes()
    assert writes.index(("apply", "HTTPRoute", "bot-route")) > writes.index(("apply", "Service", "bot-stable"))


async def test_replica_ratio_keeps_the_stable_when_the_shared_service_write_is_refused() -> None:
    """With replicaRatio the shared Service is the route: when the API server refuses the write that
    adds the canary's pods to it, the stable must not shrink for traffic the canary never got (the
    stable went 4 -> 3 pods behind a Service that still sent it everything)."""
    before = running(0, RATIO, replicas=4)
    fm = running(25, RATIO, replicas=4)
    live = live_of(before, ready={"bot-canary": 1})
    cluster = Cluster(refuse={("Service", "bot"): "admission webhook denied the request"})
    result = await run(fm, live, cluster)
    assert ("apply", "Service", "bot") in cluster.writes(), "attempted, refused, collected"
    assert ("apply", "Deployment", "bot-stable") not in cluster.writes(), "the stable keeps its 4 pods"
    assert result.status.canary is not None
    assert result.status.canary.routed_weight in (None, 0), "status does not claim a route the cluster lacks"
    assert any(c.reason == "ApplyFailed" for c in result.status.conditions)

    cluster.refuse.clear()  # the write goes through at the next reconcile: then the stable shrinks after it
    await run(fm, live, cluster)
    order = [w for w in cluster.writes() if w[1:] in {("Service", "bot"), ("Deployment", "bot-stable")}]
    assert order[-2:] == [("apply", "Service", "bot"), ("apply", "Deployment", "bot-stable")]
