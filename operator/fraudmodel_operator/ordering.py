"""The order of one reconcile's writes. Pure: the reconciler's ordering *is* safety policy.

Two rules keep a rollout from dropping requests, and both are decided here, from the
target status, the live children and the weight the router carries now:

- `route_weight()`: the canary weight the router may carry in this reconcile. It rises
  only when the canary has ready pods for it (the previous weight is kept until then,
  as Argo Rollouts does); it falls at once (rollback, abort, a canary with no ready pod).
- `plan_writes()`: the writes in order, each with its reason (`RANKS`): traffic moves
  away first, capacity is added before traffic is, and nothing is scaled to zero or
  deleted until the router had already moved away from it when this reconcile began
  (drain, then delete). A write that needs the router to have moved is skipped when a
  route write of the same reconcile failed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from fraudmodel_operator.api import FraudModel
from fraudmodel_operator.edge_routing import routing_rank
from fraudmodel_operator.kube import Manifest, up_to_date
from fraudmodel_operator.planner import TRACK_LABEL, child_name

Verb = Literal["finalize-old", "route", "apply", "delete"]
LiveChildren = Mapping[tuple[str, str], Manifest]

# Rank of each kind of write: lower goes first. The reason is what the write plan says.
RANKS: dict[str, tuple[int, str]] = {
    "finalize-old": (0, "the previous router is finalised before another takes over"),
    "reduce": (1, "traffic moves away from the canary before anything else"),
    "capacity": (2, "pods and Services are in place before traffic reaches them"),
    "expose": (3, "traffic rises only once the canary has ready pods for it"),
    "shrink": (4, "replicas are lowered only after the traffic they carried has moved"),
    "remove": (5, "objects are deleted only once no route pointed at them (drain, then delete)"),
}


# What a route or the shared Service names: the canary's go only once it left the routes in an earlier
# reconcile. Its HPA and PDB (capacity, not routes) go as soon as no traffic reaches its pods.
ROUTED_KINDS = ("Service", "Deployment")


@dataclass(frozen=True)
class Write:
    """One write of a reconcile, and why it sits where it does."""

    verb: Verb
    kind: str
    name: str
    rank: str  # a key of RANKS
    manifest: Manifest | None = None  # apply: the manifest; delete: the live object
    weight: int = 0  # route: the canary percent
    needs_route: bool = False  # skipped when a route write of this reconcile failed

    @property
    def reason(self) -> str:
        return RANKS[self.rank][1]


@dataclass(frozen=True)
class Deferred:
    """A write the policy holds back in this reconcile, and why."""

    kind: str
    name: str
    why: str


@dataclass(frozen=True)
class WritePlan:
    writes: tuple[Write, ...]
    deferred: tuple[Deferred, ...] = ()


def route_weight(target: FraudModel, canary_ready: int, canary_pods: int, live: int) -> tuple[int, str]:
    """The canary weight to route now, and why. `canary_ready`: ready pods of the canary's revision;
    `canary_pods`: the pods its step needs; `live`: the canary weight the router carries now."""
    canary = target.status.canary
    if canary is None:
        return 0, "no canary"
    if canary.rolled_back_at is not None:
        return 0, f"{canary.version} rolled back: no traffic"
    if canary_ready < 1:
        return 0, f"canary {canary.version} has no ready pod: no traffic"
    if canary.promoting:
        return min(live, canary.weight), "promoting: the canary serves until the new stable is ready at full size"
    if canary.weight <= live:
        return canary.weight, f"{canary.weight}%"
    if canary_ready >= canary_pods:
        return canary.weight, f"{canary.weight}%: canary ready at {canary_ready}/{canary_pods} pods"
    return live, f"holding {live}%: canary has {canary_ready} of the {canary_pods} ready pods {canary.weight}% needs"


def _replicas(manifest: Manifest | None) -> int | None:
    spec = (manifest or {}).get("spec") or {}
    if manifest is None:
        return None
    if manifest.get("kind") == "HorizontalPodAutoscaler":
        return int(spec.get("minReplicas", 1))
    return int(spec["replicas"]) if "replicas" in spec else None


def _selects_canary(service: Manifest | None) -> bool:
    return service is not None and TRACK_LABEL not in ((service.get("spec") or {}).get("selector") or {})


def _apply_rank(desired: Manifest, live: Manifest | None, shared: str) -> str:
    """Where an apply goes: the shared Service is the replica-ratio router's route, the edge's routing
    config (edge_routing.routing_rank) the stable edge's; fewer replicas
    (or a lower HPA floor) wait for the traffic to move; everything else is capacity."""
    if desired["kind"] == "Service" and desired["metadata"]["name"] == shared:
        return "expose" if _selects_canary(desired) and not _selects_canary(live) else "reduce"
    if desired["kind"] == "ConfigMap":  # the stable edge's routing config: a route like the router's
        return routing_rank(desired, live)
    want, have = _replicas(desired), _replicas(live)
    if want is not None and have is not None and want < have:
        return "shrink"
    return "capacity"


def plan_writes(
    before: FraudModel,
    target: FraudModel,
    desired: list[Manifest],
    live: LiveChildren,
    routed: int,
    live_weight: int,
    router_changed: bool = False,
) -> WritePlan:
    """The ordered writes that bring the children and the router from `before` to `target` with
    `routed`% on the canary.

    `desired`: the planned children (with owner), `live`: what the cluster has, `live_weight`: the
    canary weight the router(s) carried when this reconcile began, `router_changed`: the spec names
    another router than the one that carries the traffic now.
    """
    name = target.metadata.name
    shared = child_name(name)
    canary_track = {child_name(name, "canary")}
    canary = target.status.canary
    # No canary pod took traffic when this reconcile began, nor will after it.
    drained = live_weight == 0 and routed == 0 and not _selects_canary(live.get(("Service", shared)))
    # Routes name the canary Service while a canary is in status; it left them in an earlier reconcile.
    unrouted = drained and before.status.canary is None
    writes: list[Write] = []
    deferred: list[Deferred] = []
    if router_changed:
        writes.append(Write("finalize-old", "Router", "previous", "finalize-old"))
    gone = canary is None
    if gone or routed != live_weight or router_changed:
        # Less traffic to the canary goes first; anything else (a first route, a canary at 0% leaving the
        # route) after the Services it names exist.
        writes.append(Write("route", "Router", name, "reduce" if routed < live_weight else "expose", weight=routed))
    for manifest in desired:
        key = (manifest["kind"], manifest["metadata"]["name"])
        current = live.get(key)
        if up_to_date(manifest, current):
            continue
        rank = _apply_rank(manifest, current, shared)
        if rank == "shrink" and key[1] in canary_track and _replicas(manifest) == 0 and not drained:
            deferred.append(Deferred(*key, f"scaled to zero once the router has moved away ({live_weight}% now)"))
            continue
        writes.append(Write("apply", *key, rank, manifest, needs_route=rank == "shrink"))
    wanted = {(m["kind"], m["metadata"]["name"]) for m in desired}
    for key, obj in live.items():
        if key in wanted:
            continue
        if key[1] in canary_track and not (unrouted if key[0] in ROUTED_KINDS else drained):
            deferred.append(Deferred(*key, "deleted once no route points at the canary (drain, then delete)"))
            continue
        writes.append(Write("delete", *key, "remove", obj, needs_route=True))
    # By rank; within a rank Services go before what serves behind them (no new connection, then no pod).
    writes.sort(key=lambda w: (RANKS[w.rank][0], w.kind != "Service"))
    return WritePlan(tuple(writes), tuple(deferred))
