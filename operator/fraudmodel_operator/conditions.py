"""Status conditions from the phase. Pure.

Two audiences: humans, `kubectl wait` and Argo CD read Ready, Progressing and Degraded;
kstatus (sigs.k8s.io/cli-utils, what Flux, kpt, Config Sync and kubectl tooling use) reads
only Reconciling and Stalled (plus observedGeneration): Reconciling=True is InProgress,
Stalled=True is Failed, neither is Current.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fraudmodel_operator.api import Condition, FraudModelStatus, Phase

Status = Literal["True", "False", "Unknown"]


def _degraded_reason(status: FraudModelStatus) -> str:
    if status.phase == Phase.ROLLED_BACK and status.history and status.history[0].outcome == "RolledBack":
        return status.history[0].reason
    if status.phase == Phase.FAILED and status.canary is not None and status.canary.promoting:
        return "PromotionDeadlineExceeded"
    return "InvalidSpec" if status.phase == Phase.FAILED else ""


# phase -> (Reconciling, Stalled), as kstatus must read it.
KSTATUS: dict[Phase, tuple[Status, Status]] = {
    Phase.PENDING: ("True", "False"),  # InProgress
    Phase.PROGRESSING: ("True", "False"),  # InProgress
    Phase.SHADOW: ("True", "False"),  # InProgress: a shadow phase is a rollout under way
    Phase.PAUSED: ("True", "False"),  # InProgress: the rollout is not finished, it waits for a human
    Phase.READY: ("False", "False"),  # Current
    Phase.ROLLED_BACK: ("False", "True"),  # Failed: stays so until a new version or a retry
    Phase.FAILED: ("False", "True"),  # Failed
}
STALLED: tuple[Status, Status] = ("False", "True")  # a failure outlived its deadline, whatever the phase


def desired_conditions(
    status: FraudModelStatus, failure_reason: str = "", failure_message: str = "", stalled: bool = False
) -> list[tuple[str, Status, str, str]]:
    """`(type, status, reason, message)` for Ready, Progressing, Degraded, Reconciling and Stalled.

    A `failure_message` (e.g. `ApplyFailed`: the API server refused a child) makes Degraded True
    whatever the phase, and keeps Ready False: what was asked for is not what runs. `stalled`
    (the failure outlived its deadline) makes Stalled True whatever the phase."""
    phase, message = status.phase, status.message
    ready: Status = "True" if phase == Phase.READY and not failure_message else "False"
    progressing: Status = "True" if phase in (Phase.PENDING, Phase.PROGRESSING, Phase.SHADOW) else "False"
    degraded: Status = "True" if phase in (Phase.ROLLED_BACK, Phase.FAILED) or failure_message else "False"
    reason = failure_reason or _degraded_reason(status) or str(phase)
    detail = failure_message or message
    return [
        (
            "Ready",
            ready,
            "Serving" if ready == "True" else (failure_reason if failure_message else str(phase)),
            message,
        ),
        ("Progressing", progressing, "RolloutInProgress" if progressing == "True" else str(phase), message),
        ("Degraded", degraded, reason if degraded == "True" else "AsExpected", detail if degraded == "True" else ""),
        *_kstatus(status, reason, detail, stalled),
    ]


def _kstatus(
    status: FraudModelStatus, failure_reason: str, detail: str, past_deadline: bool
) -> list[tuple[str, Status, str, str]]:
    reconciling, stalled = STALLED if past_deadline else KSTATUS[status.phase]
    phase = str(status.phase)
    return [
        ("Reconciling", reconciling, phase, status.message if reconciling == "True" else ""),
        ("Stalled", stalled, failure_reason if stalled == "True" else phase, detail if stalled == "True" else ""),
    ]


def merge_conditions(
    previous: list[Condition],
    wanted: list[tuple[str, Status, str, str]],
    generation: int,
    now: datetime,
) -> list[Condition]:
    """New conditions, keeping lastTransitionTime where the status did not change."""
    old = {c.type: c for c in previous}
    result = []
    for kind, state, reason, message in wanted:
        before = old.get(kind)
        changed = before is None or before.status != state
        when = now if changed or before is None else before.last_transition_time
        result.append(
            Condition(
                type=kind,
                status=state,
                reason=reason,
                message=message,
                last_transition_time=when,
                observed_generation=generation,
            )
        )
    return result
