"""Why a FraudModel's pods do not run: pod statuses -> `(reason, message)`. Pure.

The operator indexes the pods of its FraudModels (a Kopf index of `PodState`s, small on
purpose: no spec, no managedFields) and surfaces the worst problem as the Degraded
condition, a Warning Event, and, past `progressDeadline`, `Stalled` (kstatus: Failed),
instead of leaving the FraudModel silently Progressing.

A pod that runs but fails its readiness probe says why only in the probe's response body
(the bento answers 503 with `{"reason": ..., "message": ...}`: a model other than the
declared one, a model that failed its release gate, ...). The kubelet never passes that
body on: its Events say only "HTTP probe failed with statuscode: 503" (kubernetes#99425).
So the operator asks the same endpoint itself (`readiness.py`), and `pod_problem` reports
the pod's own reason and message.
"""

from __future__ import annotations

import re
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
# What a readiness body's reason must look like to become the condition's reason (CamelCase, short).
PROBE_REASON = re.compile(r"^[A-Z][A-Za-z0-9]{0,63}$")
PROBE_MESSAGE_LIMIT = 512


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
    readiness_url: str | None = None  # the readiness probe's HTTP endpoint on the pod (podIP, port, path)


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def readiness_url(pod: Mapping[str, Any]) -> str | None:
    """The URL of the first container's HTTP readiness probe, as the kubelet calls it (None if there is none)."""
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    containers = spec.get("containers") or []
    ip = status.get("podIP")
    if not containers or not ip:
        return None
    get = ((containers[0].get("readinessProbe") or {}).get("httpGet")) or {}
    port = get.get("port")
    if isinstance(port, str):  # a named port
        named = [p for c in containers for p in c.get("ports") or [] if p.get("name") == port]
        port = named[0].get("containerPort") if named else None
    if not isinstance(port, int):
        return None
    scheme = str(get.get("scheme") or "HTTP").lower()
    host = get.get("host") or ip
    host = f"[{host}]" if ":" in str(host) else host
    path = str(get.get("path") or "/")
    return f"{scheme}://{host}:{port}{path if path.startswith('/') else '/' + path}"


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
        readiness_url=readiness_url(pod) if since is not None else None,
    )


def said(body: Any) -> tuple[str, str] | None:
    """`(reason, message)` from a readiness response body, if it gives a usable reason. Pure."""
    if not isinstance(body, Mapping):
        return None
    reason, message = body.get("reason"), body.get("message")
    if not isinstance(reason, str) or not PROBE_REASON.match(reason):
        return None
    text = " ".join(str(message).split()) if isinstance(message, str) else ""
    return reason, text[:PROBE_MESSAGE_LIMIT]


def _problem(pod: PodState, now: datetime, explained: tuple[str, str] | None = None) -> tuple[str, str] | None:
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
            # A fixed text while the problem lasts: a message that changed at every reconcile would
            # rewrite status and post a new Event each time.
            since = pod.not_ready_since.strftime("%Y-%m-%dT%H:%M:%SZ")
            if explained is not None:
                reason, message = explained
                return reason, f"not ready since {since}: {message or reason} (its readiness endpoint)"
            return NOT_READY, f"running but not ready since {since} (readiness probe failing)"
    return None


def _rank(reason: str) -> int:
    """A pod's own readiness reason ranks as any failing readiness probe."""
    return RANK.index(reason) if reason in RANK else RANK.index(NOT_READY)


def needs_explaining(pods: Iterable[PodState], now: datetime) -> list[PodState]:
    """The pods whose readiness endpoint the operator should ask why: running, not ready past the grace."""
    return [p for p in pods if p.readiness_url and _problem(p, now) is not None and p.waiting is None]


def pod_problem(
    pods: Iterable[PodState], now: datetime, explained: Mapping[str, tuple[str, str]] | None = None
) -> tuple[str, str] | None:
    """The worst problem among the pods, as `(reason, message)` naming the pod and how many share it.
    `explained`: what a not-ready pod's readiness endpoint said, by pod name (see `said`)."""
    why = explained or {}
    found = [(pod, problem) for pod in pods if (problem := _problem(pod, now, why.get(pod.name))) is not None]
    if not found:
        return None
    found.sort(key=lambda item: (_rank(item[1][0]), item[0].track != "stable", item[0].name))
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
