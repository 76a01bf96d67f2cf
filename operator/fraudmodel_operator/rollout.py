"""The rollout state machine. Pure: no kopf, no client, no clock (`now` is passed in).

`decide()` judges a running canary and returns one frozen decision. `next_status()`
wraps it in the whole lifecycle (first deploy, new version, Immediate strategy,
promotion hand-over, rollback and scale-down, retry) and returns the next status
plus the Events to emit. All rollout state lives in `status`, so an operator
restarted at any point resumes exactly where it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from fraudmodel_operator.api import (
    ABORT_ANNOTATION,
    HISTORY_LIMIT,
    PAUSE_ANNOTATION,
    PROMOTE_ANNOTATION,
    RETRY_ANNOTATION,
    AnalysisStatus,
    CanaryStatus,
    FraudModel,
    FraudModelStatus,
    HistoryEntry,
    ModelSpec,
    Phase,
    Strategy,
    TrackStatus,
    Verdict,
    parse_duration,
    revision_of,
)

# ---------------------------------------------------------------- decisions


@dataclass(frozen=True)
class Advance:
    step: int
    weight: int


@dataclass(frozen=True)
class Hold:
    reason: str


@dataclass(frozen=True)
class Promote:
    reason: str


@dataclass(frozen=True)
class Rollback:
    reason: str  # CamelCase, for conditions and Events
    message: str


@dataclass(frozen=True)
class Pause:
    reason: str


Decision = Advance | Hold | Promote | Rollback | Pause


@dataclass(frozen=True)
class Controls:
    """Manual controls, from annotations (GitOps never sees them as drift)."""

    pause: bool = False
    promote: str | None = None  # version to promote now
    abort: str | None = None  # version to abort
    retry: str | None = None  # any new value retries a rolled-back version

    @classmethod
    def from_annotations(cls, annotations: dict[str, str]) -> Controls:
        return cls(
            pause=annotations.get(PAUSE_ANNOTATION, "").lower() in ("true", "1", "yes"),
            promote=annotations.get(PROMOTE_ANNOTATION) or None,
            abort=annotations.get(ABORT_ANNOTATION) or None,
            retry=annotations.get(RETRY_ANNOTATION) or None,
        )


@dataclass(frozen=True)
class Observed:
    """What the cluster says about the tracks right now."""

    stable_ready: int = 0
    stable_desired: int = 0
    canary_ready: int = 0
    controls: Controls = field(default_factory=Controls)


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


def _since(then: datetime | None, now: datetime) -> float:
    return (now - then).total_seconds() if then else 0.0


def analysis_due(fm: FraudModel, now: datetime) -> bool:
    """Whether a running canary's step has waited `interval` since its weight was set or last analysed."""
    canary = fm.status.canary
    if canary is None or canary.promoting or canary.rolled_back_at or canary.weight <= 0:
        return False
    interval = parse_duration(fm.spec.rollout.interval)
    last = max(t for t in (canary.step_started_at, canary.analyzed_at, canary.started_at) if t is not None)
    return _since(last, now) >= interval


def failed_reason(analysis: AnalysisStatus) -> tuple[str, str]:
    """`(Reason, message)` naming the failed checks with their value and threshold."""
    failed = [c for c in analysis.checks if c.verdict == Verdict.FAIL]
    names = "".join(c.name[:1].upper() + c.name[1:] for c in failed[:1]) or "Analysis"
    parts = []
    for c in failed:
        value = "n/a" if c.value is None else f"{c.value:.4g}"
        parts.append(f"{c.name}={value} (threshold {c.threshold})" + (f": {c.message}" if c.message else ""))
    return f"{names}Failed", "; ".join(parts) or "analysis failed"


def decide(fm: FraudModel, observed: Observed, analysis: AnalysisStatus | None, now: datetime) -> Decision:
    """The next move of a running canary (not promoting, not rolled back)."""
    rollout = fm.spec.rollout
    canary = fm.status.canary
    assert canary is not None
    assert canary.version is not None
    controls = observed.controls
    if controls.abort == canary.version:
        return Rollback("Aborted", f"rollout of {canary.version} aborted by the {ABORT_ANNOTATION} annotation")
    if controls.promote == canary.version:
        return Promote(f"promoted by the {PROMOTE_ANNOTATION} annotation")
    if rollout.paused or controls.pause:
        return Pause("paused by spec.rollout.paused" if rollout.paused else f"paused by {PAUSE_ANNOTATION}")
    deadline = parse_duration(rollout.progress_deadline)
    stalled = _since(canary.progressed_at or canary.step_started_at or canary.started_at, now)
    if observed.canary_ready < 1:
        if stalled > deadline:
            return Rollback(
                "ProgressDeadlineExceeded",
                f"canary pods of {canary.version} not ready within {rollout.progress_deadline}",
            )
        return Hold(f"waiting for canary pods of {canary.version}")
    weights = rollout.weights
    if canary.weight == 0:
        return Advance(0, weights[0])
    if analysis is None:
        if stalled > deadline:
            return Rollback(
                "ProgressDeadlineExceeded",
                f"no conclusive analysis at {canary.weight}% within {rollout.progress_deadline}",
            )
        return Hold(f"step {canary.step + 1}/{len(weights)} at {canary.weight}%: waiting for the next analysis")
    limits = rollout.analysis
    if analysis.verdict == Verdict.FAIL:
        if canary.failed_checks + 1 >= limits.failure_limit:
            reason, message = failed_reason(analysis)
            return Rollback(reason, message)
        return Hold(f"analysis failed ({canary.failed_checks + 1}/{limits.failure_limit})")
    if analysis.verdict == Verdict.INCONCLUSIVE:
        count = canary.inconclusive_checks + 1
        if count >= limits.inconclusive_limit:
            message = f"{count} inconclusive analyses in a row at {canary.weight}%"
            if limits.on_inconclusive == "Rollback":
                return Rollback("AnalysisInconclusive", message)
            return Pause(message)
        if stalled > deadline:
            return Rollback(
                "ProgressDeadlineExceeded",
                f"no conclusive analysis at {canary.weight}% within {rollout.progress_deadline}",
            )
        return Hold(f"analysis inconclusive ({count}/{limits.inconclusive_limit})")
    if canary.step + 1 >= len(weights):
        return Promote(f"all {len(weights)} steps passed")
    return Advance(canary.step + 1, weights[canary.step + 1])


# ---------------------------------------------------------------- the lifecycle


def _history(status: FraudModelStatus, entry: HistoryEntry) -> list[HistoryEntry]:
    return [entry, *status.history][:HISTORY_LIMIT]


def _track(model: ModelSpec, weight: int) -> TrackStatus:
    return TrackStatus(
        version=model.version, image=model.image, revision=revision_of(model), model=model, weight=weight
    )


def _new_canary(model: ModelSpec, now: datetime) -> CanaryStatus:
    return CanaryStatus(
        version=model.version,
        image=model.image,
        revision=revision_of(model),
        model=model,
        started_at=now,
        step_started_at=now,
        progressed_at=now,
    )


@dataclass(frozen=True)
class Transition:
    status: FraudModelStatus
    events: tuple[Event, ...] = ()
    decision: Decision | None = None


def next_status(fm: FraudModel, observed: Observed, analysis: AnalysisStatus | None, now: datetime) -> Transition:
    """The whole lifecycle step: from the current status to the next one, and what to tell the user."""
    spec, status = fm.spec, fm.status
    wanted = revision_of(spec.model)
    stable_ready = observed.stable_desired > 0 and observed.stable_ready >= observed.stable_desired
    base = status.model_copy(update={"observed_generation": fm.metadata.generation})

    # First deployment: the spec's model becomes the stable track.
    if status.stable.model is None:
        stable = _track(spec.model, 100)
        event = Event("Normal", "Deploying", f"deploying {spec.model.version} as the stable track")
        return Transition(base.model_copy(update={"stable": stable, "phase": Phase.PROGRESSING}), (event,))

    canary = status.canary
    events: list[Event] = []

    # Promotion hand-over: stable already runs the promoted version; the canary keeps serving
    # until the stable pods are ready (or the spec has moved on), then it goes.
    if canary is not None and canary.promoting:
        if not stable_ready and wanted == status.stable.revision:
            return Transition(base.model_copy(update={"message": "promoting: waiting for stable pods"}))
        events.append(Event("Normal", "Promoted", f"{status.stable.version} is now stable"))
        base = base.model_copy(update={"canary": None, "stable": status.stable.model_copy(update={"weight": 100})})
        canary = None

    # The spec asks for what stable already serves: no canary (a revert aborts one).
    if wanted == status.stable.revision:
        if canary is not None and canary.rolled_back_at is None:
            events.append(Event("Normal", "RolloutAborted", f"spec reverted to {spec.model.version}: canary removed"))
            base = base.model_copy(
                update={
                    "history": _history(
                        base,
                        HistoryEntry(version=canary.version or "", outcome="Aborted", reason="SpecReverted", time=now),
                    )
                }
            )
        phase = Phase.READY if stable_ready else Phase.PROGRESSING
        next_ = base.model_copy(
            update={
                "canary": None,
                "stable": status.stable.model_copy(update={"weight": 100}),
                "phase": phase,
                "rolled_back_revision": None,
                "message": f"serving {status.stable.version}" if stable_ready else "waiting for stable pods",
            }
        )
        if phase == Phase.READY and status.phase != Phase.READY:
            events.append(Event("Normal", "Ready", f"{status.stable.version} is serving all traffic"))
        return Transition(next_, tuple(events))

    # Immediate strategy: replace the stable track in place.
    if spec.rollout.strategy == Strategy.IMMEDIATE:
        entry = HistoryEntry(version=spec.model.version, outcome="Promoted", reason="Immediate", time=now)
        next_ = base.model_copy(
            update={
                "stable": _track(spec.model, 100),
                "canary": None,
                "phase": Phase.PROGRESSING,
                "history": _history(status, entry),
                "message": f"replacing {status.stable.version} with {spec.model.version} (Immediate)",
            }
        )
        return Transition(next_, (Event("Normal", "Replacing", next_.message),))

    # A version rolled back before stays rolled back until a retry or a new version.
    if status.rolled_back_revision == wanted:
        retry = observed.controls.retry
        if retry is not None and retry != status.retry_token:
            events.append(
                Event("Normal", "RolloutRetried", f"retrying {spec.model.version} ({RETRY_ANNOTATION}={retry})")
            )
            fresh = _new_canary(spec.model, now)
            next_ = base.model_copy(
                update={
                    "canary": fresh,
                    "rolled_back_revision": None,
                    "retry_token": retry,
                    "phase": Phase.PROGRESSING,
                    "message": f"retrying {spec.model.version}",
                }
            )
            return Transition(next_, tuple(events))
        return _rolled_back(fm, base, now)

    # A new version (or a different one than the running canary): start a canary.
    if canary is None or canary.revision != wanted:
        if canary is not None and canary.rolled_back_at is None:
            entry = HistoryEntry(version=canary.version or "", outcome="Replaced", reason="NewerVersion", time=now)
            base = base.model_copy(update={"history": _history(status, entry)})
            events.append(
                Event("Normal", "RolloutReplaced", f"canary {canary.version} replaced by {spec.model.version}")
            )
        events.append(
            Event(
                "Normal",
                "RolloutStarted",
                f"canary {spec.model.version} started beside stable {status.stable.version}",
            )
        )
        next_ = base.model_copy(
            update={
                "canary": _new_canary(spec.model, now),
                "rolled_back_revision": None,
                "phase": Phase.PROGRESSING,
                "stable": status.stable.model_copy(update={"weight": 100}),
                "message": f"starting canary {spec.model.version}",
            }
        )
        return Transition(next_, tuple(events))

    decision = decide(fm, observed, analysis, now)
    return _apply(fm, base, decision, analysis, now)


def _rolled_back(fm: FraudModel, base: FraudModelStatus, now: datetime) -> Transition:
    canary = base.canary
    delay = parse_duration(fm.spec.rollout.on_rollback.scale_down_delay)
    if canary is not None and not canary.scaled_down and _since(canary.rolled_back_at, now) >= delay:
        canary = canary.model_copy(update={"scaled_down": True, "replicas": 0})
        message = f"canary {canary.version} scaled to zero"
        return Transition(
            base.model_copy(update={"canary": canary, "phase": Phase.ROLLED_BACK}),
            (Event("Normal", "CanaryScaledDown", message),),
        )
    return Transition(base.model_copy(update={"phase": Phase.ROLLED_BACK}))


def _apply(
    fm: FraudModel, base: FraudModelStatus, decision: Decision, analysis: AnalysisStatus | None, now: datetime
) -> Transition:
    canary = base.canary
    assert canary is not None
    weights = fm.spec.rollout.weights
    update: dict[str, object] = {}
    counters: dict[str, object] = {}
    if analysis is not None:
        update["last_analysis"] = analysis
        counters["analyzed_at"] = now
        if analysis.verdict == Verdict.PASS:
            counters |= {"failed_checks": 0, "inconclusive_checks": 0, "progressed_at": now}
        elif analysis.verdict == Verdict.FAIL:
            counters |= {"failed_checks": canary.failed_checks + 1, "inconclusive_checks": 0, "progressed_at": now}
        else:
            counters |= {"inconclusive_checks": canary.inconclusive_checks + 1}
    canary = canary.model_copy(update=counters)
    events: list[Event] = []
    match decision:
        case Advance(step=step, weight=weight):
            canary = canary.model_copy(
                update={"step": step, "weight": weight, "step_started_at": now, "progressed_at": now}
            )
            message = f"step {step + 1}/{len(weights)}: canary {canary.version} at {weight}%"
            events.append(Event("Normal", "StepAdvanced", message))
            update |= {"phase": Phase.PROGRESSING, "message": message}
        case Hold(reason=reason):
            update |= {"phase": Phase.PROGRESSING, "message": reason}
            if analysis is not None and analysis.verdict == Verdict.FAIL:
                _, detail = failed_reason(analysis)
                events.append(Event("Warning", "AnalysisFailed", f"{canary.version}: {detail}"))
        case Pause(reason=reason):
            if base.phase != Phase.PAUSED:
                events.append(Event("Normal", "Paused", f"rollout of {canary.version} paused: {reason}"))
            update |= {"phase": Phase.PAUSED, "message": reason}
        case Promote(reason=reason):
            model = canary.model
            assert model is not None
            entry = HistoryEntry(version=canary.version or "", outcome="Promoted", reason=reason, time=now)
            canary = canary.model_copy(update={"promoting": True})
            update |= {
                "stable": _track(model, 100 - canary.weight),
                "phase": Phase.PROGRESSING,
                "message": f"promoting {canary.version}: {reason}",
                "history": _history(base, entry),
            }
            events.append(Event("Normal", "Promoting", f"promoting {canary.version}: {reason}"))
        case Rollback(reason=reason, message=message):
            entry = HistoryEntry(version=canary.version or "", outcome="RolledBack", reason=reason, time=now)
            canary = canary.model_copy(update={"weight": 0, "rolled_back_at": now})
            update |= {
                "phase": Phase.ROLLED_BACK,
                "message": f"rolled back {canary.version}: {message}",
                "rolled_back_revision": canary.revision,
                "rollbacks": base.rollbacks + 1,
                "history": _history(base, entry),
                "stable": base.stable.model_copy(update={"weight": 100}),
            }
            events.append(Event("Warning", "RolledBack", f"rolled back {canary.version}: {reason}: {message}"))
    if canary.weight and not canary.promoting:
        update.setdefault("stable", base.stable.model_copy(update={"weight": 100 - canary.weight}))
    return Transition(base.model_copy(update={"canary": canary, **update}), tuple(events), decision)


def rollout_deadline(fm: FraudModel, now: datetime) -> datetime | None:
    """When a running canary's progress deadline falls (for alerts and metrics)."""
    canary = fm.status.canary
    if canary is None or canary.rolled_back_at or canary.promoting:
        return None
    start = canary.progressed_at or canary.started_at or now
    return start + timedelta(seconds=parse_duration(fm.spec.rollout.progress_deadline))
