"""Pod statuses -> the reason and message a FraudModel reports (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from fraudmodel_operator.api import Condition
from fraudmodel_operator.pods import PodState, needs_explaining, pod_problem, said, stalled_by_pods, summarize

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
            (
                "PodsUnavailable",
                "stable pod bot-stable-1: running but not ready since 2026-11-28T11:55:00Z (readiness probe failing)",
            ),
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


def serving_pod(probe: dict[str, Any] | None, ip: str | None = "10.1.2.3", **status: Any) -> dict[str, Any]:
    body = pod(**RUNNING, **status)
    container: dict[str, Any] = {"name": "serving", "ports": [{"name": "http", "containerPort": 3000}]}
    if probe is not None:
        container["readinessProbe"] = {"httpGet": probe}
    body["spec"] = {"containers": [container]}
    if ip:
        body["status"]["podIP"] = ip
    return body


@pytest.mark.parametrize(
    ("body", "url"),
    [
        (serving_pod({"path": "/readyz", "port": "http"}), "http://10.1.2.3:3000/readyz"),  # as the planner writes it
        (serving_pod({"path": "readyz", "port": 8080, "scheme": "HTTPS"}), "https://10.1.2.3:8080/readyz"),
        (serving_pod({"path": "/readyz", "port": "http"}, ip="fd00::7"), "http://[fd00::7]:3000/readyz"),
        (serving_pod({"path": "/readyz", "port": "metrics"}), None),  # no such named port
        (serving_pod(None), None),  # no HTTP probe
        (serving_pod({"path": "/readyz", "port": "http"}, ip=None), None),  # no address yet
    ],
    ids=["named-port", "https-number", "ipv6", "unknown-port", "no-probe", "no-ip"],
)
def test_the_readiness_endpoint_is_read_from_the_pod(body: dict[str, Any], url: str | None) -> None:
    assert summarize(body).readiness_url == url


def test_a_ready_pod_is_never_asked() -> None:
    assert summarize(serving_pod({"path": "/readyz", "port": "http"})).readiness_url is not None  # not ready
    body = serving_pod({"path": "/readyz", "port": "http"})
    body["status"]["conditions"][0]["status"] = "True"
    assert summarize(body).readiness_url is None


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"ready": "false", "reason": "ModelVersionMismatch", "message": "declared v1 but\n loaded v2"},
            ("ModelVersionMismatch", "declared v1 but loaded v2"),
        ),
        ({"reason": "ModelNotPromotable"}, ("ModelNotPromotable", "")),
        ({"reason": "not a reason", "message": "x"}, None),
        ({"reason": "A" * 65}, None),
        ({"message": "no reason"}, None),
        (["ModelVersionMismatch"], None),
        ({"reason": "Long", "message": "m" * 2000}, ("Long", "m" * 512)),
    ],
    ids=["bento-503", "no-message", "spaces", "too-long", "no-reason", "not-an-object", "message-capped"],
)
def test_what_a_readiness_body_says(body: Any, expected: tuple[str, str] | None) -> None:
    assert said(body) == expected


def test_a_pods_own_reason_replaces_the_probes_generic_one() -> None:
    failing = summarize(serving_pod({"path": "/readyz", "port": "http"}))
    assert needs_explaining([failing], NOW) == [failing]
    assert needs_explaining([failing], NOW - timedelta(minutes=4)) == []  # still within the grace period
    explained = {failing.name: ("ModelVersionMismatch", "declared version v1 but the loaded model is v2")}
    assert pod_problem([failing], NOW, explained) == (
        "ModelVersionMismatch",
        "stable pod bot-stable-1: not ready since 2026-11-28T11:55:00Z: declared version v1 but the loaded model "
        "is v2 (its readiness endpoint)",
    )
    # ranked as the failing probe it is: an image that cannot be pulled is still reported first
    pulling = summarize(pod("bot-canary-1", "canary", **waiting("ErrImagePull")))
    assert pod_problem([failing, pulling], NOW, explained) == (
        "ImagePullFailed",
        "canary pod bot-canary-1: ErrImagePull",
    )
    # the same text at every reconcile while it lasts: one status write, one Event
    assert pod_problem([failing], NOW + timedelta(minutes=5), explained) == pod_problem([failing], NOW, explained)
