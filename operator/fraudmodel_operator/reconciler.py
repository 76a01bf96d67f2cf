"""One reconcile of one FraudModel: observe, decide, plan, apply what differs, patch status once.

Everything here is glue between the pure core (rollout, planner, conditions,
analysis.assess) and the adapters (Kube, routers, metric provider); it holds no
decisions of its own beyond ordering the steps.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from fraudmodel_operator.analysis import MetricProvider
from fraudmodel_operator.api import (
    Condition,
    FraudModel,
    FraudModelStatus,
    Phase,
    SpecError,
    parse_duration,
    parse_fraudmodel,
)
from fraudmodel_operator.conditions import Status, desired_conditions, merge_conditions
from fraudmodel_operator.kube import Kube, Manifest, NotServable, WriteRefused, merge_patch, with_owner
from fraudmodel_operator.metrics import OperatorMetrics
from fraudmodel_operator.monitoring import CONDITION as DRIFTING
from fraudmodel_operator.monitoring import assess as assess_drift
from fraudmodel_operator.monitoring import drift_event, drifting, monitoring_due
from fraudmodel_operator.monitoring import measure as measure_drift
from fraudmodel_operator.ordering import Write, WritePlan, plan_writes, route_weight
from fraudmodel_operator.paired import run_shadow_analysis
from fraudmodel_operator.planner import Track, child_name, plan_children, plan_tracks
from fraudmodel_operator.pods import PodState, needs_explaining, pod_problem, stalled_by_pods
from fraudmodel_operator.readiness import HttpReadiness
from fraudmodel_operator.rollout import (
    Controls,
    Event,
    Observed,
    analysis_due,
    next_status,
    rollout_deadline,
    shadow_analysis_due,
)
from fraudmodel_operator.routers import ReplicaRatioRouter, TrafficRouter, router_for, router_from
from fraudmodel_operator.sticky import analyse

log = logging.getLogger(__name__)

LiveChildren = Mapping[tuple[str, str], Manifest]  # (kind, name) -> live object
Emit = Callable[[Event], None]


@dataclass
class Context:
    """What a reconcile needs from outside (the handlers build it once at startup)."""

    kube: Kube
    metrics: OperatorMetrics
    provider_for: Callable[[FraudModel], MetricProvider]
    # When each FraudModel's stable model was last measured against its reference, and which version
    # (in memory: a measurement writes nothing unless the Drifting condition changes).
    monitored: dict[tuple[str, str], tuple[str, datetime]] = field(default_factory=dict)
    # Asks a not-ready pod's readiness endpoint why (None: not asked, the generic message is reported).
    readiness: HttpReadiness | None = None


@dataclass(frozen=True)
class Outcome:
    phase: Phase
    writes: int
    outcome: str  # unchanged | changed | invalid | error
    status: dict[str, Any] | None = None  # the status written, if any


def status_caught_up(body: Mapping[str, Any], written: dict[str, Any]) -> bool:
    """Whether the watched body already shows the status we wrote (else a reconcile would use stale state)."""
    return merge_patch(_old_status(body), written) is None


def deployment_ready(live: Manifest | None, image: str | None, strict: bool = False) -> tuple[int, int]:
    """`(ready, desired)` pods of a Deployment running `image`, counted only once its rollout has finished.

    `strict`: pods of the *current* spec only, as a hand-over needs: while the controller has not
    observed the latest generation (a threshold or URI change keeps the image), none are. Otherwise
    (capacity, e.g. a canary being scaled up) the ready pods of the last observed template count.
    """
    if not live:
        return 0, 0
    spec, status = live.get("spec") or {}, live.get("status") or {}
    desired = int(spec.get("replicas", 1))
    containers = (((spec.get("template") or {}).get("spec") or {}).get("containers")) or [{}]
    current = status.get("observedGeneration", 0) >= live.get("metadata", {}).get("generation", 0)
    updated = int(status.get("updatedReplicas") or 0)
    if image is not None and containers[0].get("image") != image:
        return 0, desired
    if strict and not current:
        return 0, desired
    ready = int(status.get("readyReplicas") or 0)
    return (ready if current and updated >= desired else min(ready, updated)), desired


def observe(fm: FraudModel, live: LiveChildren) -> Observed:
    """Ready pods per track. The stable counts as ready only at its full planned size (an HPA floor
    the Deployment has not reached yet is not ready), with every pod on the current spec."""
    name = fm.metadata.name
    stable_image = fm.status.stable.image
    canary_image = fm.status.canary.image if fm.status.canary else None
    stable_live = live.get(("Deployment", child_name(name, "stable")))
    stable_ready, stable_desired = deployment_ready(stable_live, stable_image, strict=True)
    canary_ready, _ = deployment_ready(live.get(("Deployment", child_name(name, "canary"))), canary_image)
    shadow_image = fm.status.shadow.image if fm.status.shadow else None
    shadow_ready, _ = deployment_ready(live.get(("Deployment", child_name(name, "shadow"))), shadow_image)
    planned = plan_tracks(fm)[0].replicas
    return Observed(
        stable_ready=stable_ready,
        stable_desired=max(stable_desired, planned) if stable_live else 0,
        canary_ready=canary_ready,
        controls=Controls.from_annotations(dict(fm.metadata.annotations)),
        shadow_ready=shadow_ready if shadow_image else 0,
    )


def _with_replicas(
    status: FraudModelStatus, fm: FraudModel, live: LiveChildren, planned: LiveChildren
) -> FraudModelStatus:
    """Ready pods as the Deployments report them; desired pods as just planned where the operator
    sets them (else the next reconcile would write the status again only to catch up)."""

    def counts(track: Track) -> dict[str, int]:
        key = ("Deployment", child_name(fm.metadata.name, track))
        ready, desired = deployment_ready(live.get(key), None)
        wanted = ((planned.get(key) or {}).get("spec") or {}).get("replicas")
        return {"replicas": desired if wanted is None else int(wanted), "ready_replicas": ready}

    update: dict[str, Any] = {"stable": status.stable.model_copy(update=counts("stable"))}
    if status.canary is not None:
        update["canary"] = status.canary.model_copy(update=counts("canary"))
    if status.shadow is not None:
        update["shadow"] = status.shadow.model_copy(update=counts("shadow"))
    return status.model_copy(update=update)


def _dump(status: FraudModelStatus) -> dict[str, Any]:
    return status.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"kopf"})


def _old_status(body: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in dict(body.get("status") or {}).items() if k != "kopf"}


async def _patch_status(ctx: Context, body: Mapping[str, Any], status: FraudModelStatus) -> dict[str, Any] | None:
    """Patch what differs; the full new status if anything was written."""
    new = _dump(status)
    patch = merge_patch(_old_status(body), new)
    if not patch:
        return None
    meta = body["metadata"]
    await ctx.kube.patch_status(meta.get("namespace", "default"), meta["name"], patch)
    ctx.metrics.writes.labels("patch_status").inc()
    return new


async def _invalid(ctx: Context, body: Mapping[str, Any], error: SpecError, now: datetime, emit: Emit) -> Outcome:
    try:
        previous = FraudModelStatus.model_validate(body.get("status") or {})
    except ValidationError:
        previous = FraudModelStatus()
    message = f"invalid spec: {error}"
    status = previous.model_copy(
        update={
            "phase": Phase.FAILED,
            "message": message,
            "observed_generation": body["metadata"].get("generation", 0),
        }
    )
    conditions = merge_conditions(
        previous.conditions, desired_conditions(status, "InvalidSpec"), status.observed_generation or 0, now
    )
    status = status.model_copy(update={"conditions": conditions})
    if previous.message != message:
        emit(Event("Warning", "InvalidSpec", message))
    written = await _patch_status(ctx, body, status)
    return Outcome(Phase.FAILED, int(written is not None), "invalid", written)


@dataclass(frozen=True)
class Routing:
    """The routers of one reconcile and what they carried when it began."""

    router: TrafficRouter
    weights: tuple[int, int] | None  # live (stable, canary) of the spec's router; None: not set up
    old: TrafficRouter | None = None  # the router status says carries traffic, when spec names another
    old_canary: int = 0

    @property
    def live_canary(self) -> int:
        return (self.weights[1] if self.weights else 0) + self.old_canary


async def read_routing(ctx: Context, fm: FraudModel, target: FraudModel) -> Routing:
    """Read the router's live weights (`get_weights`), and the previous router's when spec switched."""
    router = router_for(target, ctx.kube)
    canary_involved = fm.status.canary is not None or target.status.canary is not None
    weights = None
    if canary_involved or not isinstance(router, ReplicaRatioRouter):
        weights = await router.get_weights(target)
    previous = fm.status.traffic_routing
    if previous is None or previous == fm.spec.rollout.traffic_routing:
        return Routing(router, weights)
    old = router_from(previous, ctx.kube)
    old_weights = await old.get_weights(fm)
    return Routing(router, weights, old, old_weights[1] if old_weights else 0)


ROUTE_RANKS = ("reduce", "expose")  # writes that move traffic (ordering.RANKS)


@dataclass
class Applied:
    """What executing a write plan did."""

    writes: int = 0
    refused: list[str] = field(default_factory=list)  # "Kind name: the API server's message"
    unservable: str = ""
    routed: bool = True  # every route write succeeded
    skipped: list[str] = field(default_factory=list)


async def execute(ctx: Context, target: FraudModel, routing: Routing, plan: WritePlan) -> Applied:
    """Run the writes one by one, in the plan's order. A refused write is collected, never raised:
    the others still go through (writes that need the router to have moved are skipped)."""
    done = Applied()
    for held in plan.deferred:
        log.debug(
            "%s/%s: %s %s held back: %s",
            target.metadata.namespace,
            target.metadata.name,
            held.kind,
            held.name,
            held.why,
        )
    for write in plan.writes:
        if write.needs_route and not done.routed:
            done.skipped.append(f"{write.kind} {write.name}")
            continue
        try:
            await _write(ctx, target, routing, write)
        except WriteRefused as exc:
            log.warning("%s/%s: %s refused: %s", target.metadata.namespace, target.metadata.name, write.verb, exc)
            done.refused.append(str(exc))
            # A refused route write, or a refused apply of the replica-ratio router's route (the shared
            # Service, ranked reduce or expose), leaves the traffic where it was.
            done.routed = done.routed and write.verb not in ("route", "finalize-old") and write.rank not in ROUTE_RANKS
            continue
        except NotServable as exc:
            done.unservable = str(exc)
            done.routed = False
            continue
        if write.verb in ("apply", "delete"):
            done.writes += 1
    return done


async def _write(ctx: Context, target: FraudModel, routing: Routing, write: Write) -> None:
    match write.verb:
        case "finalize-old":
            assert routing.old is not None
            await routing.old.finalize(target)
        case "route":
            if routing.weights is None:
                await routing.router.reconcile(target)
            if target.status.canary is None:
                await routing.router.finalize(target)
            else:
                await routing.router.set_weights(target, 100 - write.weight, write.weight)
        case "apply":
            assert write.manifest is not None
            log.debug("applying %s %s (%s)", write.kind, write.name, write.reason)
            await ctx.kube.apply(write.manifest)
            ctx.metrics.writes.labels("apply").inc()
        case "delete":
            assert write.manifest is not None
            api_version = write.manifest.get("apiVersion", "")
            await ctx.kube.delete(api_version, write.kind, target.metadata.namespace, write.name)
            ctx.metrics.writes.labels("delete").inc()


def _canary_pods(target: FraudModel) -> int:
    return next((t.replicas for t in plan_tracks(target) if t.track == "canary"), 0)


def _routed_status(
    status: FraudModelStatus, fm: FraudModel, routing: Routing, routed: int, why: str, done: Applied, now: datetime
) -> FraudModelStatus:
    """The status with the router that carries traffic now and the canary's effective weight."""
    update: dict[str, Any] = {}
    if done.routed:
        update["traffic_routing"] = fm.spec.rollout.traffic_routing
    canary = status.canary
    if canary is not None:
        replica_ratio = isinstance(routing.router, ReplicaRatioRouter)
        live = routing.weights[1] if routing.weights else 0
        effective = routed if done.routed and (routed == 0 or not replica_ratio) else live
        running = canary.rolled_back_at is None and not canary.promoting
        carried = routed if done.routed else canary.routed_weight
        fields: dict[str, Any] = {"effective_weight": effective, "routed_weight": carried}
        if running and carried == canary.weight and canary.routed_weight not in (None, canary.weight):
            fields["step_started_at"] = now  # the step's interval starts once its weight is routed
        update["canary"] = canary.model_copy(update=fields)
        if running and routed != canary.weight and status.phase == Phase.PROGRESSING:
            update["message"] = f"{status.message} ({why})"
    return status.model_copy(update=update)


def _served_weight(status: FraudModelStatus) -> int:
    """What the canary really gets (the router's read-back), else its step's weight."""
    canary = status.canary
    if canary is None:
        return 0
    return canary.effective_weight if canary.effective_weight is not None else canary.weight


def _approximation(target: FraudModel, transition_events: tuple[Event, ...]) -> Event | None:
    """A Warning when the replica-ratio router cannot express a new step's weight with the pods it has."""
    canary = target.status.canary
    if canary is None or not any(e.reason == "StepAdvanced" for e in transition_events):
        return None
    if target.spec.rollout.traffic_routing.kind != "replicaRatio":
        return None
    tracks = plan_tracks(target)
    pods = [t.replicas for t in tracks]
    share = round(100 * pods[1] / sum(pods)) if sum(pods) else 0
    if abs(share - canary.weight) < 5:
        return None
    return Event(
        "Warning",
        "WeightApproximated",
        f"step {canary.weight}% is served as {share}% by replica ratio ({pods[1]} canary of {sum(pods)} pods); "
        "use more replicas or a traffic router for finer steps",
    )


async def _explained(ctx: Context, pods: Sequence[PodState], now: datetime) -> dict[str, tuple[str, str]]:
    """What the readiness endpoints of pods failing their probe say (pods.py: the kubelet never tells)."""
    asking = needs_explaining(pods, now)
    if ctx.readiness is None or not asking:
        return {}
    return await ctx.readiness.explain(asking)


def _drifting(fm: FraudModel, status: FraudModelStatus) -> Condition | None:
    """The Drifting condition status holds, if it describes the stable model still served."""
    if fm.status.stable.version != status.stable.version:
        return None  # promoted: the old model's drift says nothing about the new one
    return next((c for c in fm.status.conditions if c.type == DRIFTING), None)


async def _watch_stable(
    ctx: Context, fm: FraudModel, status: FraudModelStatus, now: datetime
) -> tuple[str, Status, str, str] | None:
    """Measure the stable model against its reference when due (monitoring.py); the Drifting condition."""
    ns, name = fm.metadata.namespace, fm.metadata.name
    target = fm.model_copy(update={"status": status})
    report = None
    if monitoring_due(target, ctx.monitored.get((ns, name)), now):
        measures = await measure_drift(ctx.provider_for(fm), target)
        report = assess_drift(fm.spec.monitoring, status.stable.version or "", measures)
        ctx.monitored[(ns, name)] = (report.version, now)
        ctx.metrics.observe_drift(ns, name, report)
    drift = drifting(fm.spec.monitoring, status.stable.version, report, _drifting(fm, status))
    ctx.metrics.observe_drifting(ns, name, drift is not None and drift[1] == "True")
    return drift


async def reconcile(
    ctx: Context, body: Mapping[str, Any], live: LiveChildren, now: datetime, emit: Emit, pods: Sequence[PodState] = ()
) -> Outcome:
    """Bring one FraudModel's children and status in line with its spec. Never raises on bad input,
    nor on a write the API server refuses: status is always written."""
    started = time.monotonic()
    try:
        fm = parse_fraudmodel(body)
    except SpecError as error:
        outcome = await _invalid(ctx, body, error, now, emit)
        ctx.metrics.observe_phase(body["metadata"].get("namespace", "default"), body["metadata"]["name"], Phase.FAILED)
        ctx.metrics.reconciles.labels(outcome.outcome).inc()
        return outcome
    ns, name = fm.metadata.namespace, fm.metadata.name
    observed = observe(fm, live)
    analysis = None
    if analysis_due(fm, now) and observed.canary_ready > 0:  # also while paused: pause stops advancing only
        analysis = await analyse(ctx.provider_for(fm), fm, now)
        ctx.metrics.observe_analysis(ns, name, analysis)
    elif shadow_analysis_due(fm, now) and observed.shadow_ready > 0:
        analysis = await run_shadow_analysis(ctx.provider_for(fm), fm, now)
        ctx.metrics.observe_analysis(ns, name, analysis)
    transition = next_status(fm, observed, analysis, now)
    status = transition.status
    target = fm.model_copy(update={"status": status})
    events = list(transition.events)
    done = Applied()
    routed, why = 0, ""
    planned: dict[tuple[str, str], Manifest] = {}
    try:
        routing = await read_routing(ctx, fm, target)
    except NotServable as exc:
        done.unservable, done.routed = str(exc), False
        routing = Routing(ReplicaRatioRouter(ctx.kube), None)
    else:
        routed, why = route_weight(target, observed.canary_ready, _canary_pods(target), routing.live_canary)
        desired = [with_owner(m, target) for m in plan_children(target, routed)]
        planned = {(m["kind"], m["metadata"]["name"]): m for m in desired}
        plan = plan_writes(fm, target, desired, live, routed, routing.live_canary, routing.old is not None)
        done = await execute(ctx, target, routing, plan)
        status = _routed_status(status, fm, routing, routed, why, done, now)
    approximation = _approximation(target, transition.events)
    if approximation is not None:
        events.append(approximation)
    failure, detail = "", ""
    if done.unservable:
        failure, detail = "RouterUnavailable", done.unservable
        status = status.model_copy(update={"phase": Phase.FAILED, "message": done.unservable})
    elif done.refused:
        failure, detail = "ApplyFailed", "; ".join(done.refused)
    elif (problem := pod_problem(pods, now, await _explained(ctx, pods, now))) is not None:
        failure, detail = problem
    deadline_s = parse_duration(fm.spec.rollout.progress_deadline)
    stalled = bool(failure) and stalled_by_pods(fm.status.conditions, failure, deadline_s, now)
    status = _with_replicas(status, fm, live, planned)
    wanted = desired_conditions(status, failure, detail, stalled)
    drift = await _watch_stable(ctx, fm, status, now)
    if drift is not None:
        wanted.append(drift)
        if (news := drift_event(_drifting(fm, status), drift)) is not None:
            events.append(news)
    conditions = merge_conditions(fm.status.conditions, wanted, fm.metadata.generation, now)
    status = status.model_copy(update={"conditions": conditions})
    previous = next((c for c in fm.status.conditions if c.type == "Degraded"), None)
    if failure and (previous is None or previous.reason != failure or previous.message != detail):
        events.append(Event("Warning", failure, detail))
    written = await _patch_status(ctx, body, status)
    writes = done.writes + int(written is not None)
    for event in events:
        emit(event)
        if event.reason == "RolledBack" and status.history:
            ctx.metrics.rollbacks.labels(ns, name, status.history[0].reason).inc()
    m = ctx.metrics
    m.observe_phase(ns, name, status.phase)
    m.weight.labels(ns, name).set(_served_weight(status))
    deadline = rollout_deadline(target, now)
    m.deadline.labels(ns, name).set(1 if deadline is not None and now > deadline else 0)
    result = "changed" if writes else "unchanged"
    m.reconciles.labels(result).inc()
    m.duration.labels(result).observe(time.monotonic() - started)
    return Outcome(status.phase, writes, result, written)
