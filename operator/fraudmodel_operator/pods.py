"""Why a FraudModel's pods do not run: pod statuses -> `(reason, message)`. Pure.

The operator indexes the pods of its FraudModels (a Kopf index of `PodState`s, small on
purpose: no spec, no managedFields) and surfaces the worst problem as the Degraded
condition, a Warning Event, and, past `progressDeadline`, `Stalled` (kstatus: Failed),
instead of leaving the FraudModel silently Progressing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fraudmodel_operator.api import Condition
from fraudmodel_operator.planner import TRACK_LABEL

# Kubelet waiting reasons -> our condition reason, worst first (the first found is reported).
WAITING_REASONS: dict[str, str] = {
    "ErrImagePull": "ImagePullFailed",
    "ImagePullBackOff": "ImagePullFailed",
    "InvalidImageName": "ImagePullFailed",
    "ErrImageNeverPull": "ImagePullFailed",
    "CreateContainerConfigError": "ContainerConfigInvalid",
    "CreateContainerError": "ContainerCreateFailed",
    "RunContainerError": "ContainerCreateFailed",
    "CrashLoopBackOff": "CrashLoopBackOff",
}
UNSCHEDULABLE = "Unschedulable"
NOT_READY = "PodsUnavailable"  # running, but the readiness probe keeps failing
RANK = [*dict.fromkeys(WAITING_REASONS.values()), UNSCHEDULABLE, NOT_READY]
POD_REASONS = frozenset(RANK)
READINESS_GRACE_SECONDS = 120.0  # a running pod not ready for this long is reported (model loading is shorter)


@dataclass(frozen=True)
class PodState:
    """What the operator keeps of one pod."""

    name: str
    track: str
    ready: bool
    waiting: tuple[str, str] | None = None  # (kubelet reason, message) of the first waiting container
    unschedulable: str | None = None  # the scheduler's message
    not_ready_since: datetime | None = None  # Ready=False since, while every container runs
    terminating: bool = False


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def summarize(pod: Mapping[str, Any]) -> PodState:
    """The `PodState` of a pod object (as the API serves it)."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    ready = (conditions.get("Ready") or {}).get("status") == "True"
    containers = [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
    waiting = None
    for container in containers:
        state = (container.get("state") or {}).get("waiting")
        if state and state.get("reason") in WAITING_REASONS:
            waiting = (str(state["reason"]), str(state.get("message") or ""))
            break
    scheduled = conditions.get("PodScheduled") or {}
    unschedulable = None
    if scheduled.get("status") == "False" and scheduled.get("reason") == UNSCHEDULABLE:
        unschedulable = str(scheduled.get("message") or "no node fits")
    running = bool(containers) and all("running" in (c.get("state") or {}) for c in containers)
    since = _parse_time((conditions.get("Ready") or {}).get("lastTransitionTime")) if running and not ready else None
    return PodState(
        name=str(meta.get("name", "")),
        track=str((meta.get("labels") or {}).get(TRACK_LABEL, "")),
        ready=ready,
        waiting=waiting,
        unschedulable=unschedulable,
        not_ready_since=since,
        terminating=bool(meta.get("deletionTimestamp")),
    )


def _problem(pod: PodState, now: datetime) -> tuple[str, str] | None:
    if pod.ready or pod.terminating:
        return None
    if pod.waiting is not None:
        kubelet_reason, message = pod.waiting
        return WAITING_REASONS[kubelet_reason], f"{kubelet_reason}: {message}" if message else kubelet_reason
    if pod.unschedulable is not None:
        return UNSCHEDULABLE, pod.unschedulable
    if pod.not_ready_since is not None:
        seconds = (now - pod.not_ready_since).total_seconds()
        if seconds >= READINESS_GRACE_SECONDS:
            return NOT_READY, f"running but not ready for {int(seconds)}s (readiness probe failing)"
    return None


def pod_problem(pods: Iterable[PodState], now: datetime) -> tuple[str, str] | None:
    """The worst problem among the pods, as `(reason, message)` naming the pod and how many share it."""
    found = [(pod, problem) for pod in pods if (problem := _problem(pod, now)) is not None]
    if not found:
        return None
    found.sort(key=lambda item: (RANK.index(item[1][0]), item[0].track != "stable", item[0].name))
    pod, (reason, message) = found[0]
    same = sum(1 for _, (r, _) in found if r == reason)
    others = f" (and {same - 1} more)" if same > 1 else ""
    return reason, f"{pod.track or 'model'} pod {pod.name}{others}: {message}"


def stalled_by_pods(previous: list[Condition], reason: str, deadline_seconds: float, now: datetime) -> bool:
    """Whether Degraded has named the same pod problem for longer than the deadline."""
    degraded = next((c for c in previous if c.type == "Degraded"), None)
    if degraded is None or degraded.status != "True" or degraded.reason != reason:
        return False
    since = degraded.last_transition_time
    return since is not None and (now - since).total_seconds() > deadline_seconds
