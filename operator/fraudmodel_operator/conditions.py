"""kstatus conditions (Ready, Progressing, Degraded) from the phase. Pure."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fraudmodel_operator.api import Condition, FraudModelStatus, Phase

Status = Literal["True", "False", "Unknown"]


def _degraded_reason(status: FraudModelStatus) -> str:
    if status.phase == Phase.ROLLED_BACK and status.history and status.history[0].outcome == "RolledBack":
        return status.history[0].reason
    return "InvalidSpec" if status.phase == Phase.FAILED else ""


def desired_conditions(
    status: FraudModelStatus, failure_reason: str = "", failure_message: str = ""
) -> list[tuple[str, Status, str, str]]:
    """`(type, status, reason, message)` for Ready, Progressing and Degraded.

    A `failure_message` (e.g. `ApplyFailed`: the API server refused a child) makes Degraded True
    whatever the phase, and keeps Ready False: what was asked for is not what runs."""
    phase, message = status.phase, status.message
    ready: Status = "True" if phase == Phase.READY and not failure_message else "False"
    progressing: Status = "True" if phase in (Phase.PENDING, Phase.PROGRESSING) else "False"
    degraded: Status = "True" if phase in (Phase.ROLLED_BACK, Phase.FAILED) or failure_message else "False"
    reason = failure_reason or _degraded_reason(status)
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
