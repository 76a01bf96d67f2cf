"""One reconcile of one FraudModel: observe, decide, plan, apply what differs, patch status once.

Everything here is glue between the pure core (rollout, planner, conditions,
analysis.assess) and the adapters (Kube, routers, metric provider); it holds no
decisions of its own beyond ordering the steps.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from fraudmodel_operator.analysis import MetricProvider, run_analysis
from fraudmodel_operator.api import FraudModel, FraudModelStatus, Phase, SpecError, parse_fraudmodel
from fraudmodel_operator.conditions import desired_conditions, merge_conditions
from fraudmodel_operator.kube import Kube, Manifest, NotServable, merge_patch, up_to_date, with_owner
from fraudmodel_operator.metrics import OperatorMetrics
from fraudmodel_operator.planner import child_name, plan_children
from fraudmodel_operator.rollout import Controls, Event, Observed, analysis_due, next_status, rollout_deadline
from fraudmodel_operator.routers import router_for

log = logging.getLogger(__name__)

LiveChildren = Mapping[tuple[str, str], Manifest]  # (kind, name) -> live object
Emit = Callable[[Event], None]


@dataclass
class Context:
    """What a reconcile needs from outside (the handlers build it once at startup)."""

    kube: Kube
    metrics: OperatorMetrics
    provider_for: Callable[[FraudModel], MetricProvider]


@dataclass(frozen=True)
class Outcome:
    phase: Phase
    writes: int
    outcome: str  # unchanged | changed | invalid | error
    status: dict[str, Any] | None = None  # the status written, if any


def status_caught_up(body: Mapping[str, Any], written: dict[str, Any]) -> bool:
    """Whether the watched body already shows the status we wrote (else a reconcile would use stale state)."""
    return merge_patch(_old_status(body), written) is None


def deployment_ready(live: Manifest | None, image: str | None) -> tuple[int, int]:
    """`(ready, desired)` pods of a Deployment whose rollout to `image` has finished (else ready is 0)."""
    if not live:
        return 0, 0
    spec, status = live.get("spec") or {}, live.get("status") or {}
    desired = int(spec.get("replicas", 1))
    containers = (((spec.get("template") or {}).get("spec") or {}).get("containers")) or [{}]
    current = status.get("observedGeneration", 0) >= live.get("metadata", {}).get("generation", 0)
    updated = int(status.get("updatedReplicas") or 0) >= desired
    if image is not None and containers[0].get("image") != image:
        return 0, desired
    ready = int(status.get("readyReplicas") or 0)
    return (ready if current and updated else min(ready, int(status.get("updatedReplicas") or 0))), desired


def observe(fm: FraudModel, live: LiveChildren) -> Observed:
    name = fm.metadata.name
    stable_image = fm.status.stable.image
    canary_image = fm.status.canary.image if fm.status.canary else None
    stable_ready, stable_desired = deployment_ready(live.get(("Deployment", child_name(name, "stable"))), stable_image)
    canary_ready, _ = deployment_ready(live.get(("Deployment", child_name(name, "canary"))), canary_image)
    return Observed(
        stable_ready=stable_ready,
        stable_desired=stable_desired,
        canary_ready=canary_ready,
        controls=Controls.from_annotations(dict(fm.metadata.annotations)),
    )


def _with_replicas(status: FraudModelStatus, fm: FraudModel, live: LiveChildren) -> FraudModelStatus:
    name = fm.metadata.name
    stable_ready, stable_desired = deployment_ready(live.get(("Deployment", child_name(name, "stable"))), None)
    update: dict[str, Any] = {
        "stable": status.stable.model_copy(update={"replicas": stable_desired, "ready_replicas": stable_ready})
    }
    if status.canary is not None:
        ready, desired = deployment_ready(live.get(("Deployment", child_name(name, "canary"))), None)
        update["canary"] = status.canary.model_copy(update={"replicas": desired, "ready_replicas": ready})
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


async def apply_children(ctx: Context, fm: FraudModel, live: LiveChildren) -> int:
    """Apply each planned child that differs from its live copy; delete owned children no longer planned."""
    writes = 0
    desired = [with_owner(m, fm) for m in plan_children(fm)]
    wanted = {(m["kind"], m["metadata"]["name"]) for m in desired}
    for manifest in desired:
        if not up_to_date(manifest, live.get((manifest["kind"], manifest["metadata"]["name"]))):
            log.debug("applying %s %s", manifest["kind"], manifest["metadata"]["name"])
            await ctx.kube.apply(manifest)
            ctx.metrics.writes.labels("apply").inc()
            writes += 1
    for (kind, name), obj in live.items():
        if (kind, name) not in wanted:
            await ctx.kube.delete(obj.get("apiVersion", ""), kind, fm.metadata.namespace, name)
            ctx.metrics.writes.labels("delete").inc()
            writes += 1
    return writes


async def reconcile(ctx: Context, body: Mapping[str, Any], live: LiveChildren, now: datetime, emit: Emit) -> Outcome:
    """Bring one FraudModel's children and status in line with its spec. Never raises on bad input."""
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
    if analysis_due(fm, now) and observed.canary_ready > 0 and not (fm.spec.rollout.paused or observed.controls.pause):
        analysis = await run_analysis(ctx.provider_for(fm), fm, now)
        ctx.metrics.observe_analysis(ns, name, analysis)
    transition = next_status(fm, observed, analysis, now)
    status = transition.status
    target = fm.model_copy(update={"status": status})
    failure = ""
    try:
        writes = await apply_children(ctx, target, live)
        router = router_for(target, ctx.kube)
        if status.canary is None:
            await router.finalize(target)
        else:
            await router.set_weights(target, 100 - status.canary.weight, status.canary.weight)
    except NotServable as exc:
        failure = "RouterUnavailable"
        writes = 0
        status = status.model_copy(update={"phase": Phase.FAILED, "message": str(exc)})
        if fm.status.message != str(exc):
            emit(Event("Warning", failure, str(exc)))
    status = _with_replicas(status, fm, live)
    conditions = merge_conditions(
        fm.status.conditions, desired_conditions(status, failure), fm.metadata.generation, now
    )
    status = status.model_copy(update={"conditions": conditions})
    written = await _patch_status(ctx, body, status)
    writes += int(written is not None)
    for event in transition.events:
        emit(event)
        if event.reason == "RolledBack" and status.history:
            ctx.metrics.rollbacks.labels(ns, name, status.history[0].reason).inc()
    m = ctx.metrics
    m.observe_phase(ns, name, status.phase)
    m.weight.labels(ns, name).set(status.canary.weight if status.canary else 0)
    deadline = rollout_deadline(target, now)
    m.deadline.labels(ns, name).set(1 if deadline is not None and now > deadline else 0)
    result = "changed" if writes else "unchanged"
    m.reconciles.labels(result).inc()
    m.duration.labels(result).observe(time.monotonic() - started)
    return Outcome(status.phase, writes, result, written)
