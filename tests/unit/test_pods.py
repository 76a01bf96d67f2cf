"""Pod statuses -> the reason and message a FraudModel reports (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from fraudmodel_operator.api import Condition
from fraudmodel_operator.pods import PodState, pod_problem, stalled_by_pods, summarize

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def pod(name: str = "bot-stable-1", track: str = "stable", ready: bool = False, **status: Any) -> dict[str, Any]:
    conditions = [
        {"type": "Ready", "status": "True" if ready else "False", "lastTransitionTime": "2026-11-28T11:55:00Z"}
    ]
    return {
        "metadata": {"name": name, "labels": {"serving.riskml.io/track": track}},
        "status": {"conditions": conditions + status.pop("conditions", []), **status},
    }


def waiting(reason: str, message: str = "") -> dict[str, Any]:
    return {"containerStatuses": [{"name": "serving", "state": {"waiting": {"reason": reason, "message": message}}}]}


RUNNING = {"containerStatuses": [{"name": "serving", "state": {"running": {"startedAt": "2026-11-28T11:55:00Z"}}}]}
UNSCHEDULABLE = {
    "conditions": [
        {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": "0/3 nodes: 3 Insufficient cpu",
        }
    ]
}


@pytest.mark.parametrize(
    ("pods", "expected"),
    [
        ([pod(ready=True, **RUNNING)], None),
        (
            [pod(**waiting("ImagePullBackOff", 'Back-off pulling image "bot:v9"'))],
            ("ImagePullFailed", 'stable pod bot-stable-1: ImagePullBackOff: Back-off pulling image "bot:v9"'),
        ),
        ([pod(**waiting("ErrImagePull"))], ("ImagePullFailed", "stable pod bot-stable-1: ErrImagePull")),
        (
            [pod(**waiting("CrashLoopBackOff", "back-off 40s restarting failed container"))],
            ("CrashLoopBackOff", "stable pod bot-stable-1: CrashLoopBackOff: back-off 40s restarting failed container"),
        ),
        (
            [pod(**waiting("CreateContainerConfigError", 'secret "creds" not found'))],
            ("ContainerConfigInvalid", 'stable pod bot-stable-1: CreateContainerConfigError: secret "creds" not found'),
        ),
        ([pod(**UNSCHEDULABLE)], ("Unschedulable", "stable pod bot-stable-1: 0/3 nodes: 3 Insufficient cpu")),
        (
            [pod(**RUNNING)],
            ("PodsUnavailable", "stable pod bot-stable-1: running but not ready for 300s (readiness probe failing)"),
        ),
        ([pod(**waiting("ContainerCreating"))], None),  # starting: not a problem yet
        (
            [pod("bot-canary-1", "canary", **waiting("CrashLoopBackOff")), pod(**waiting("ImagePullBackOff"))],
            ("ImagePullFailed", "stable pod bot-stable-1: ImagePullBackOff"),
        ),
        (
            [
                pod("bot-canary-2", "canary", **waiting("ErrImagePull")),
                pod("bot-canary-1", "canary", **waiting("ErrImagePull")),
            ],
            ("ImagePullFailed", "canary pod bot-canary-1 (and 1 more): ErrImagePull"),
        ),
    ],
    ids=[
        "ready",
        "image-pull-backoff",
        "err-image-pull",
        "crash-loop",
        "config-error",
        "unschedulable",
        "readiness-failing",
        "creating",
        "worst-first",
        "counted",
    ],
)
def test_pod_problem(pods: list[dict[str, Any]], expected: tuple[str, str] | None) -> None:
    assert pod_problem([summarize(p) for p in pods], NOW) == expected


def test_readiness_is_given_time_to_load_the_model() -> None:
    state = summarize(pod(**RUNNING))
    assert pod_problem([state], NOW - timedelta(minutes=4)) is None  # 60s after the pod went not ready


def test_terminating_pods_are_ignored() -> None:
    state = summarize({**pod(**waiting("ErrImagePull")), "metadata": {"name": "x", "deletionTimestamp": "2026"}})
    assert state.terminating
    assert pod_problem([state], NOW) is None


def test_summary_keeps_only_what_it_needs() -> None:
    assert summarize(pod(**waiting("ImagePullBackOff", "m"))) == PodState(
        name="bot-stable-1", track="stable", ready=False, waiting=("ImagePullBackOff", "m")
    )


@pytest.mark.parametrize(
    ("degraded", "reason", "stalled"),
    [
        (("True", "ImagePullFailed", 11), "ImagePullFailed", True),
        (("True", "ImagePullFailed", 9), "ImagePullFailed", False),
        (("True", "ApplyFailed", 11), "ImagePullFailed", False),
        (("False", "AsExpected", 11), "ImagePullFailed", False),
    ],
    ids=["past-deadline", "within-deadline", "other-reason", "not-degraded"],
)
def test_stalled_by_pods(degraded: tuple[str, str, int], reason: str, stalled: bool) -> None:
    state, why, minutes = degraded
    condition = Condition(
        type="Degraded", status=state, reason=why, message="", last_transition_time=NOW - timedelta(minutes=minutes)
    )
    assert stalled_by_pods([condition], reason, 600, NOW) is stalled
