"""The rollout state machine. Pure: no kopf, no client, no clock (`now` is passed in).

`decide()` judges a running canary and returns one frozen decision. `next_status()`
wraps it in the whole lifecycle (first deploy, new version, Immediate strategy,
promotion hand-over, rollback and scale-down, retry) and returns the next status
plus the Events to emit. All rollout state lives in `status`, so an operator
restarted at any point resumes exactly where it was.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from fraudmodel_operator.api import (
    ABORT_ANNOTATION,
    HISTORY_LIMIT,
    PAUSE_ANNOTATION,
    PROMOTE_ANNOTATION,
    RESUME_ANNOTATION,
    RETRY_ANNOTATION,
    AnalysisStatus,
    CanaryStatus,
    FraudModel,
    FraudModelStatus,
    HistoryEntry,
    ModelSpec,
    Phase,
    ShadowStatus,
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
    """Manual controls, from annotations (GitOps never sees them as drift). promote, abort and resume
    name a version or a revision and act once (see `FraudModelStatus.consumed_controls`)."""

    pause: bool = False
    promote: str | None = None  # version (or revision) to promote now
    abort: str | None = None  # version (or revision) to abort
    retry: str | None = None  # any new value retries a rolled-back version
    resume: str | None = None  # version (or revision) whose sticky pause ends

    @classmethod
    def from_annotations(cls, annotations: dict[str, str]) -> Controls:
        return cls(
            pause=annotations.get(PAUSE_ANNOTATION, "").lower() in ("true", "1", "yes"),
            promote=annotations.get(PROMOTE_ANNOTATION) or None,
            abort=annotations.get(ABORT_ANNOTATION) or None,
            retry=annotations.get(RETRY_ANNOTATION) or None,
            resume=annotations.get(RESUME_ANNOTATION) or None,
        )

    def naming(self, canary: TrackStatus, consumed: dict[str, str]) -> frozenset[str]:
        """The one-shot controls (promote, abort, resume) that name this canary (or shadow) and were not
        acted on yet."""
        named = set()
        for kind, value in (("promote", self.promote), ("abort", self.abort), ("resume", self.resume)):
            if value is not None and value in (canary.version, canary.revision) and consumed.get(kind) != value:
                named.add(kind)
        return frozenset(named)


def consume(consumed: dict[str, str], controls: Controls, canary: TrackStatus | None) -> dict[str, str]:
    """Controls naming a canary that ends are used up with it: a leftover never acts on a later revision."""
    if canary is None:
        return consumed
    out = dict(consumed)
    for kind in controls.naming(canary, consumed):
        value = getattr(controls, kind)
        assert isinstance(value, str)
        out[kind] = value
    return out


@dataclass(frozen=True)
class Observed:
    """What the cluster says about the tracks right now."""

    stable_ready: int = 0
    stable_desired: int = 0
    canary_ready: int = 0
    controls: Controls = field(default_factory=Controls)
    shadow_ready: int = 0


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


def _since(then: datetime | None, now: datetime) -> float:
    return (now - then).total_seconds() if then else 0.0


MIN_INTERVAL_SECONDS = 1.0  # analyses never come closer than this, whatever the spec lets through


def analysis_due(fm: FraudModel, now: datetime) -> bool:
    """Whether a running canary's step has waited `interval` since its weight was set or last analysed.
    A paused canary is analysed too (pause stops advancing, not protection)."""
    canary = fm.status.canary
    if canary is None or canary.promoting or canary.rolled_back_at or canary.weight <= 0:
        return False
    if canary.routed_weight is not None and canary.routed_weight != canary.weight:
        return False  # the step's weight is not routed yet: what would be judged is the previous step
    interval = max(parse_duration(fm.spec.rollout.interval), MIN_INTERVAL_SECONDS)
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


def stalled_seconds(canary: CanaryStatus, now: datetime) -> float:
    """Time without progress that counts against the progress deadline (paused time left out)."""
    since = _since(canary.progressed_at or canary.step_started_at or canary.started_at, now)
    return since - canary.paused_seconds - _since(canary.paused_at, now)


def analysed_steps(weights: tuple[int, ...]) -> tuple[int, ...]:
    """The steps that are analysed: a step at 100% is the promotion itself (the stable would have no
    traffic to compare against, and replica ratio no pod)."""
    return tuple(w for w in weights if w < 100)


# ---------------------------------------------------------------- the decision table


@dataclass(frozen=True)
class Facts:
    """Everything one decision about a running canary reads, computed once."""

    version: str
    weight: int
    step: int
    steps: tuple[int, ...]
    named: frozenset[str]  # one-shot controls naming this canary: promote, abort, resume
    paused: str | None  # why the rollout holds, if it does
    ready: bool  # the canary has a ready pod
    stalled: float
    deadline: float
    deadline_text: str
    verdict: Verdict | None
    failures: int  # over the rollout, this analysis included
    failure_limit: int
    inconclusive: int  # in a row, this analysis included
    inconclusive_limit: int
    on_inconclusive: str
    analysis: AnalysisStatus | None


def facts(fm: FraudModel, observed: Observed, analysis: AnalysisStatus | None, now: datetime) -> Facts:
    rollout, status = fm.spec.rollout, fm.status
    canary = status.canary
    assert canary is not None
    assert canary.version is not None
    named = observed.controls.naming(canary, status.consumed_controls)
    paused = None
    if rollout.paused:
        paused = "paused by spec.rollout.paused"
    elif observed.controls.pause:
        paused = f"paused by {PAUSE_ANNOTATION}"
    elif canary.pause_reason and "resume" not in named:
        paused = f"{canary.pause_reason}; resume with {RESUME_ANNOTATION}={canary.version}"
    verdict = analysis.verdict if analysis is not None else None
    limits = rollout.analysis
    inconclusive = 0 if "resume" in named else canary.inconclusive_checks
    return Facts(
        version=canary.version,
        weight=canary.weight,
        step=canary.step,
        steps=analysed_steps(rollout.weights),
        named=named,
        paused=paused,
        ready=observed.canary_ready >= 1,
        stalled=stalled_seconds(canary, now),
        deadline=parse_duration(rollout.progress_deadline),
        deadline_text=rollout.progress_deadline,
        verdict=verdict,
        failures=canary.failed_checks + (verdict == Verdict.FAIL),
        failure_limit=limits.failure_limit,
        inconclusive=inconclusive + (verdict == Verdict.INCONCLUSIVE),
        inconclusive_limit=limits.inconclusive_limit,
        on_inconclusive=limits.on_inconclusive,
        analysis=analysis,
    )


def _failed(f: Facts) -> Decision:
    assert f.analysis is not None
    return Rollback(*failed_reason(f.analysis))


def _first_step(f: Facts) -> Decision:
    if not f.steps:
        return Promote("a step at 100% is the promotion itself")
    return Advance(0, f.steps[0])


def _next_step(f: Facts) -> Decision:
    if f.step + 1 >= len(f.steps):
        return Promote(f"all {len(f.steps)} steps passed")
    return Advance(f.step + 1, f.steps[f.step + 1])


def _inconclusive_limit(f: Facts) -> Decision:
    message = f"{f.inconclusive} inconclusive analyses in a row at {f.weight}%"
    if f.on_inconclusive == "Rollback":
        return Rollback("AnalysisInconclusive", message)
    return Pause(message)


def _no_progress(f: Facts) -> Decision:
    return Rollback(
        "ProgressDeadlineExceeded",
        f"no conclusive analysis at {f.weight}% within {f.deadline_text} (paused time excluded)",
    )


In = TypeVar("In")
Out = TypeVar("Out")


@dataclass(frozen=True)
class Rule(Generic[In, Out]):
    """One row of a state table: in `state`, on `event`, go to `next` doing `actions`. Rows are tried
    in order and the first whose `when` holds decides, so the order of the table *is* the precedence."""

    state: str
    event: str
    next: str
    actions: str
    when: Callable[[In], bool]
    then: Callable[[In], Out]


RUNNING = "Warming, Stepping, Paused"
# A running canary (not promoting, not rolled back). Abort > promote > failure > unavailable canary
# > pause > first step > ... : pause stops advancing, never protection.
CANARY_RULES: tuple[Rule[Facts, Decision], ...] = (
    Rule(
        RUNNING,
        "the abort annotation names this version or revision",
        "RolledBack",
        "0% at once; history Aborted; the annotation value is consumed",
        lambda f: "abort" in f.named,
        lambda f: Rollback("Aborted", f"rollout of {f.version} aborted by the {ABORT_ANNOTATION} annotation"),
    ),
    Rule(
        RUNNING,
        "the promote annotation names this version or revision",
        "Promoting",
        "stable runs the canary's model; the annotation value is consumed",
        lambda f: "promote" in f.named,
        lambda f: Promote(f"promoted by the {PROMOTE_ANNOTATION} annotation"),
    ),
    Rule(
        RUNNING,
        "an analysis fails and the rollout's failures reach failureLimit (also while paused)",
        "RolledBack",
        "0% at once; Degraded with the failed check, value and threshold; Warning Event",
        lambda f: f.verdict == Verdict.FAIL and f.failures >= f.failure_limit,
        _failed,
    ),
    Rule(
        RUNNING,
        "the canary has no ready pod, past progressDeadline",
        "RolledBack",
        "ProgressDeadlineExceeded",
        lambda f: not f.ready and f.stalled > f.deadline,
        lambda f: Rollback(
            "ProgressDeadlineExceeded", f"canary pods of {f.version} not ready within {f.deadline_text}"
        ),
    ),
    Rule(
        RUNNING,
        "the canary has no ready pod",
        "(same)",
        "hold; the canary gets 0% until a pod is ready",
        lambda f: not f.ready,
        lambda f: Hold(f"waiting for canary pods of {f.version}"),
    ),
    Rule(
        RUNNING,
        "spec.rollout.paused, the pause annotation, or a sticky pause not resumed",
        "Paused",
        "hold the weight; keep analysing; the deadline stops",
        lambda f: f.paused is not None,
        lambda f: Pause(f.paused or ""),
    ),
    Rule(
        "Warming",
        "the canary has a ready pod",
        "Stepping (or Promoting when the only step is 100%)",
        "first step's weight, routed once the canary has its pods",
        lambda f: f.weight == 0,
        _first_step,
    ),
    Rule(
        "Stepping",
        "an analysis fails, below failureLimit",
        "Stepping",
        "hold; Warning Event AnalysisFailed",
        lambda f: f.verdict == Verdict.FAIL,
        lambda f: Hold(f"analysis failed ({f.failures}/{f.failure_limit} over the rollout)"),
    ),
    Rule(
        "Stepping",
        "inconclusiveLimit inconclusive analyses in a row",
        "Paused (sticky, until resumed) or RolledBack",
        "onInconclusive",
        lambda f: f.verdict == Verdict.INCONCLUSIVE and f.inconclusive >= f.inconclusive_limit,
        _inconclusive_limit,
    ),
    Rule(
        "Stepping",
        "no conclusive analysis within progressDeadline (paused time excluded)",
        "RolledBack",
        "ProgressDeadlineExceeded",
        lambda f: f.verdict != Verdict.PASS and f.stalled > f.deadline,
        _no_progress,
    ),
    Rule(
        "Stepping",
        "an analysis is inconclusive",
        "Stepping",
        "hold; re-analyse after interval",
        lambda f: f.verdict == Verdict.INCONCLUSIVE,
        lambda f: Hold(f"analysis inconclusive ({f.inconclusive}/{f.inconclusive_limit})"),
    ),
    Rule(
        "Stepping",
        "no analysis due yet",
        "Stepping",
        "hold",
        lambda f: f.verdict is None,
        lambda f: Hold(f"step {f.step + 1}/{len(f.steps)} at {f.weight}%: waiting for the next analysis"),
    ),
    Rule(
        "Stepping",
        "an analysis passes",
        "Stepping, or Promoting after the last step",
        "next step's weight (routed once the canary has its pods), or promotion",
        lambda f: True,
        _next_step,
    ),
)


def decide(fm: FraudModel, observed: Observed, analysis: AnalysisStatus | None, now: datetime) -> Decision:
    """The next move of a running canary (not promoting, not rolled back): the first rule that holds."""
    f = facts(fm, observed, analysis, now)
    return next(rule.then(f) for rule in CANARY_RULES if rule.when(f))


def render_table(rules: Sequence[Rule[Any, Any]]) -> str:
    """The rules as a Markdown table, in precedence order (docs/operator.md embeds it; a test keeps it true)."""
    lines = ["| # | state | event | next state | actions |", "|---|---|---|---|---|"]
    for i, r in enumerate(rules, 1):
        lines.append(f"| {i} | {r.state} | {r.event} | {r.next} | {r.actions} |")
    return "\n".join(lines)


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


@dataclass(frozen=True)
class Moment:
    """What one lifecycle step reads: the FraudModel, the cluster, the analysis, the time."""

    fm: FraudModel
    observed: Observed
    analysis: AnalysisStatus | None
    now: datetime
    base: FraudModelStatus  # the current status, at the current generation
    wanted: str  # revision of spec.model
    stable_ready: bool  # the stable track is ready at its full planned size, on its current spec

    @property
    def canary(self) -> CanaryStatus | None:
        return self.base.canary

    @property
    def promotion_stalled(self) -> bool:
        canary = self.canary
        deadline = parse_duration(self.fm.spec.rollout.progress_deadline)
        return canary is not None and _since(canary.progressed_at or canary.started_at, self.now) > deadline


def _deploy(m: Moment) -> Transition:
    spec = m.fm.spec
    stable = _track(spec.model, 100)
    event = Event("Normal", "Deploying", f"deploying {spec.model.version} as the stable track")
    # The message the next reconcile would write anyway: one status write per change, not two.
    update = {"stable": stable, "phase": Phase.PROGRESSING, "message": "waiting for stable pods"}
    return Transition(m.base.model_copy(update=update), (event,))


def _promotion_stalled(m: Moment) -> Transition:
    version = m.base.stable.version
    message = (
        f"promotion of {version} stalled: the new stable pods are not ready at full size within "
        f"{m.fm.spec.rollout.progress_deadline}; the canary keeps serving"
    )
    events = () if m.base.message == message else (Event("Warning", "PromotionDeadlineExceeded", message),)
    return Transition(m.base.model_copy(update={"phase": Phase.FAILED, "message": message}), events)


def _promotion_waits(m: Moment) -> Transition:
    message = "promoting: waiting for the new stable pods at full size"
    return Transition(m.base.model_copy(update={"phase": Phase.PROGRESSING, "message": message}))


def _promotion_done(m: Moment) -> Transition:
    """The canary goes; whatever the spec asks next is decided on the promoted status."""
    status = m.base
    consumed = consume(status.consumed_controls, m.observed.controls, status.canary)
    promoted = status.model_copy(
        update={
            "canary": None,
            "stable": status.stable.model_copy(update={"weight": 100}),
            "consumed_controls": consumed,
        }
    )
    then = next_status(m.fm.model_copy(update={"status": promoted}), m.observed, None, m.now)
    event = Event("Normal", "Promoted", f"{status.stable.version} is now stable")
    return Transition(then.status, (event, *then.events))


def _serve_stable(m: Moment) -> Transition:
    """The spec asks for what stable already serves: no canary (a revert aborts one)."""
    status, canary = m.base, m.canary
    events: list[Event] = []
    base = status
    if canary is not None and canary.rolled_back_at is None:
        version = m.fm.spec.model.version
        events.append(Event("Normal", "RolloutAborted", f"spec reverted to {version}: canary removed"))
        entry = HistoryEntry(version=canary.version or "", outcome="Aborted", reason="SpecReverted", time=m.now)
        base = base.model_copy(update={"history": _history(base, entry)})
    if status.shadow is not None:
        version = m.fm.spec.model.version
        events.append(Event("Normal", "RolloutAborted", f"spec reverted to {version}: shadow removed"))
        entry = HistoryEntry(version=status.shadow.version or "", outcome="Aborted", reason="SpecReverted", time=m.now)
        base = base.model_copy(update={"history": _history(base, entry), "shadow": None})
    phase = Phase.READY if m.stable_ready else Phase.PROGRESSING
    next_ = base.model_copy(
        update={
            "canary": None,
            "stable": status.stable.model_copy(update={"weight": 100}),
            "phase": phase,
            "rolled_back_revision": None,
            "consumed_controls": consume(status.consumed_controls, m.observed.controls, canary),
            "message": f"serving {status.stable.version}" if m.stable_ready else "waiting for stable pods",
        }
    )
    if phase == Phase.READY and status.phase != Phase.READY:
        events.append(Event("Normal", "Ready", f"{status.stable.version} is serving all traffic"))
    return Transition(next_, tuple(events))


def _replace_in_place(m: Moment) -> Transition:
    spec, status = m.fm.spec, m.base
    entry = HistoryEntry(version=spec.model.version, outcome="Promoted", reason="Immediate", time=m.now)
    next_ = status.model_copy(
        update={
            "stable": _track(spec.model, 100),
            "canary": None,
            "phase": Phase.PROGRESSING,
            "history": _history(status, entry),
            "message": f"replacing {status.stable.version} with {spec.model.version} (Immediate)",
        }
    )
    return Transition(next_, (Event("Normal", "Replacing", next_.message),))


def _new_rollout(fm: FraudModel, now: datetime) -> dict[str, object]:
    """A new version's first phase: a shadow phase when the spec asks for one, else a canary at 0%."""
    model, shadow = fm.spec.model, fm.spec.rollout.shadow
    if shadow is None:
        return {"canary": _new_canary(model, now), "shadow": None, "phase": Phase.PROGRESSING}
    return {"canary": None, "shadow": _new_shadow(model, shadow.sample, now), "phase": Phase.SHADOW}


def _retry(m: Moment) -> Transition:
    version, retry = m.fm.spec.model.version, m.observed.controls.retry
    event = Event("Normal", "RolloutRetried", f"retrying {version} ({RETRY_ANNOTATION}={retry})")
    next_ = m.base.model_copy(
        update={
            **_new_rollout(m.fm, m.now),
            "rolled_back_revision": None,
            "retry_token": retry,
            "message": f"retrying {version}",
        }
    )
    return Transition(next_, (event,))


def _rolled_back(m: Moment) -> Transition:
    canary, base = m.canary, m.base
    delay = parse_duration(m.fm.spec.rollout.on_rollback.scale_down_delay)
    if canary is not None and not canary.scaled_down and _since(canary.rolled_back_at, m.now) >= delay:
        canary = canary.model_copy(update={"scaled_down": True, "replicas": 0})
        message = f"canary {canary.version} scaled to zero"
        return Transition(
            base.model_copy(update={"canary": canary, "phase": Phase.ROLLED_BACK}),
            (Event("Normal", "CanaryScaledDown", message),),
        )
    return Transition(base.model_copy(update={"phase": Phase.ROLLED_BACK}))


def _start_canary(m: Moment) -> Transition:
    spec, status, canary = m.fm.spec, m.base, m.canary
    events: list[Event] = []
    base = status
    running = canary if canary is not None and canary.rolled_back_at is None else status.shadow
    consumed = consume(status.consumed_controls, m.observed.controls, canary)
    if running is not None:
        what = "canary" if running is canary else "shadow"
        entry = HistoryEntry(version=running.version or "", outcome="Replaced", reason="NewerVersion", time=m.now)
        base = base.model_copy(update={"history": _history(status, entry)})
        events.append(Event("Normal", "RolloutReplaced", f"{what} {running.version} replaced by {spec.model.version}"))
        consumed = consume(consumed, m.observed.controls, status.shadow)
    first = "shadow" if spec.rollout.shadow is not None else "canary"
    events.append(
        Event("Normal", "RolloutStarted", f"{first} {spec.model.version} started beside stable {status.stable.version}")
    )
    next_ = base.model_copy(
        update={
            **_new_rollout(m.fm, m.now),
            "rolled_back_revision": None,
            "stable": status.stable.model_copy(update={"weight": 100}),
            "consumed_controls": consumed,
            "message": f"starting {first} {spec.model.version}",
        }
    )
    return Transition(next_, tuple(events))


# ---------------------------------------------------------------- the shadow phase


def _new_shadow(model: ModelSpec, sample: float, now: datetime) -> ShadowStatus:
    return ShadowStatus(
        version=model.version,
        image=model.image,
        revision=revision_of(model),
        model=model,
        sample=sample,
        started_at=now,
        progressed_at=now,
    )


def shadow_analysis_due(fm: FraudModel, now: datetime) -> bool:
    """Whether a shadow phase's paired analysis is due: every `interval`, paused or not."""
    shadow = fm.status.shadow
    if shadow is None:
        return False
    interval = max(parse_duration(fm.spec.rollout.interval), MIN_INTERVAL_SECONDS)
    last = max(t for t in (shadow.started_at, shadow.analyzed_at) if t is not None)
    return _since(last, now) >= interval


@dataclass(frozen=True)
class EndShadow:
    """The paired gates passed for the whole `duration`: on to the canary steps, or promotion."""

    then: str  # Canary | Promote
    reason: str


ShadowDecision = Hold | Pause | Rollback | Promote | EndShadow


@dataclass(frozen=True)
class ShadowFacts:
    """Everything one decision about a shadow phase reads."""

    version: str
    named: frozenset[str]
    paused: str | None
    ready: bool
    stalled: float
    deadline: float
    deadline_text: str
    elapsed: float
    duration: float
    duration_text: str
    then: str
    verdict: Verdict | None
    passed: bool  # the latest analysis passed (this one, or the last one when none ran now)
    failures: int
    failure_limit: int
    inconclusive: int
    inconclusive_limit: int
    on_inconclusive: str
    samples: int | None
    min_samples: int
    analysis: AnalysisStatus | None


def shadow_facts(fm: FraudModel, observed: Observed, analysis: AnalysisStatus | None, now: datetime) -> ShadowFacts:
    rollout, shadow = fm.spec.rollout, fm.status.shadow
    assert shadow is not None
    assert shadow.version is not None
    spec = rollout.shadow
    duration_text = spec.duration if spec is not None else "0s"
    named = observed.controls.naming(shadow, fm.status.consumed_controls)
    paused = None
    if rollout.paused:
        paused = "paused by spec.rollout.paused"
    elif observed.controls.pause:
        paused = f"paused by {PAUSE_ANNOTATION}"
    verdict = analysis.verdict if analysis is not None else None
    passed = verdict == Verdict.PASS if verdict is not None else shadow.passed_at is not None
    limits = rollout.analysis
    since = _since(shadow.progressed_at or shadow.started_at, now)
    return ShadowFacts(
        version=shadow.version,
        named=named,
        paused=paused,
        ready=observed.shadow_ready >= 1,
        stalled=since - shadow.paused_seconds - _since(shadow.paused_at, now),
        deadline=parse_duration(rollout.progress_deadline),
        deadline_text=rollout.progress_deadline,
        elapsed=_since(shadow.started_at, now),
        duration=parse_duration(duration_text),
        duration_text=duration_text,
        # A spec that dropped `shadow` mid-phase ends it as a pass would: into the canary steps.
        then=spec.then if spec is not None else "Canary",
        verdict=verdict,
        passed=passed,
        failures=shadow.failed_checks + (verdict == Verdict.FAIL),
        failure_limit=limits.failure_limit,
        inconclusive=shadow.inconclusive_checks + (verdict == Verdict.INCONCLUSIVE),
        inconclusive_limit=limits.inconclusive_limit,
        on_inconclusive=limits.on_inconclusive,
        samples=_paired_samples(analysis, shadow.paired_samples),
        min_samples=spec.min_paired_samples if spec is not None else 0,
        analysis=analysis,
    )


def _shadow_waits(f: ShadowFacts) -> ShadowDecision:
    samples = "no paired samples yet" if f.samples is None else f"{f.samples} paired samples"
    if f.passed:
        return Hold(f"shadow {f.version}: paired gates pass ({samples}); it runs {f.duration_text} in all")
    return Hold(f"shadow {f.version}: {samples} (at least {f.min_samples}), waiting for the next analysis")


def _shadow_inconclusive(f: ShadowFacts) -> ShadowDecision:
    message = f"{f.inconclusive} inconclusive paired analyses in a row"
    return Rollback("AnalysisInconclusive", message) if f.on_inconclusive == "Rollback" else Pause(message)


SHADOW = "Shadow"
# A shadow phase. Abort > promote > failure > unavailable shadow > pause > ... : a failure rolls back
# at once (nobody was exposed, nothing to wait for), a pass counts only after `duration`.
SHADOW_RULES: tuple[Rule[ShadowFacts, ShadowDecision], ...] = (
    Rule(
        SHADOW,
        "the abort annotation names this version or revision",
        "RolledBack",
        "mirroring stops, the shadow track is deleted; history Aborted",
        lambda f: "abort" in f.named,
        lambda f: Rollback("Aborted", f"shadow of {f.version} aborted by the {ABORT_ANNOTATION} annotation"),
    ),
    Rule(
        SHADOW,
        "the promote annotation names this version or revision",
        "Progressing",
        "the stable runs the shadow's model (rolling update); history Promoted",
        lambda f: "promote" in f.named,
        lambda f: Promote(f"promoted from shadow by the {PROMOTE_ANNOTATION} annotation"),
    ),
    Rule(
        SHADOW,
        "a paired analysis fails and the phase's failures reach failureLimit (also while paused)",
        "RolledBack",
        "mirroring stops, the shadow track is deleted; Degraded with the failed gate; Warning Event",
        lambda f: f.verdict == Verdict.FAIL and f.failures >= f.failure_limit,
        lambda f: Rollback(*failed_reason(f.analysis)) if f.analysis else Rollback("AnalysisFailed", ""),
    ),
    Rule(
        SHADOW,
        "the shadow has no ready pod, past progressDeadline",
        "RolledBack",
        "ProgressDeadlineExceeded",
        lambda f: not f.ready and f.stalled > f.deadline,
        lambda f: Rollback(
            "ProgressDeadlineExceeded", f"shadow pods of {f.version} not ready within {f.deadline_text}"
        ),
    ),
    Rule(
        SHADOW,
        "the shadow has no ready pod",
        "Shadow",
        "hold (the stable mirrors nothing it could not deliver: failures are counted, never waited on)",
        lambda f: not f.ready,
        lambda f: Hold(f"waiting for shadow pods of {f.version}"),
    ),
    Rule(
        SHADOW,
        "spec.rollout.paused or the pause annotation",
        "Paused",
        "keep mirroring and analysing; never end the phase; the deadline stops",
        lambda f: f.paused is not None,
        lambda f: Pause(f.paused or ""),
    ),
    Rule(
        SHADOW,
        "a paired analysis fails, below failureLimit",
        "Shadow",
        "hold; Warning Event AnalysisFailed",
        lambda f: f.verdict == Verdict.FAIL,
        lambda f: Hold(f"paired analysis failed ({f.failures}/{f.failure_limit})"),
    ),
    Rule(
        SHADOW,
        "inconclusiveLimit inconclusive analyses in a row",
        "Paused (until an analysis is conclusive) or RolledBack",
        "onInconclusive",
        lambda f: f.inconclusive >= f.inconclusive_limit,
        _shadow_inconclusive,
    ),
    Rule(
        SHADOW,
        "no conclusive analysis within progressDeadline (paused time excluded)",
        "RolledBack",
        "ProgressDeadlineExceeded",
        lambda f: not f.passed and f.verdict != Verdict.FAIL and f.stalled > f.deadline,
        lambda f: Rollback(
            "ProgressDeadlineExceeded", f"no conclusive paired analysis of {f.version} within {f.deadline_text}"
        ),
    ),
    Rule(
        SHADOW,
        "the latest paired analysis passed and `duration` has run",
        "Warming (then: Canary) or Progressing (then: Promote)",
        "mirroring stops; the canary steps start, or the stable runs the new model; Normal ShadowPassed",
        lambda f: f.passed and f.elapsed >= f.duration,
        lambda f: EndShadow(f.then, f"paired gates passed over {f.duration_text} of shadow"),
    ),
    Rule(
        SHADOW,
        "anything else (inconclusive, or passing before `duration`)",
        "Shadow",
        "hold; re-analyse after interval",
        lambda f: True,
        _shadow_waits,
    ),
)


def decide_shadow(fm: FraudModel, observed: Observed, analysis: AnalysisStatus | None, now: datetime) -> ShadowDecision:
    """The next move of a shadow phase: the first rule of `SHADOW_RULES` that holds."""
    f = shadow_facts(fm, observed, analysis, now)
    return next(rule.then(f) for rule in SHADOW_RULES if rule.when(f))


def _paired_samples(analysis: AnalysisStatus | None, before: int | None) -> int | None:
    if analysis is None:
        return before
    return next((c.samples for c in analysis.checks if c.samples is not None), before)


def _shadow_counters(shadow: ShadowStatus, analysis: AnalysisStatus | None, now: datetime) -> dict[str, object]:
    if analysis is None:
        return {}
    counters: dict[str, object] = {"analyzed_at": now, "paired_samples": _paired_samples(analysis, None)}
    if analysis.verdict == Verdict.PASS:
        return counters | {"inconclusive_checks": 0, "progressed_at": now, "passed_at": now}
    if analysis.verdict == Verdict.FAIL:
        failed = shadow.failed_checks + 1
        return counters | {"failed_checks": failed, "inconclusive_checks": 0, "progressed_at": now, "passed_at": None}
    return counters | {"inconclusive_checks": shadow.inconclusive_checks + 1, "passed_at": None}


def _run_shadow(m: Moment) -> Transition:
    fm, base, analysis, now = m.fm, m.base, m.analysis, m.now
    shadow = base.shadow
    assert shadow is not None
    decision = decide_shadow(fm.model_copy(update={"status": base}), m.observed, analysis, now)
    controls = m.observed.controls
    shadow = shadow.model_copy(update=_shadow_counters(shadow, analysis, now))
    if isinstance(decision, Pause):
        shadow = shadow.model_copy(update={"paused_at": shadow.paused_at or now})
    elif shadow.paused_at is not None:
        spent = shadow.paused_seconds + _since(shadow.paused_at, now)
        shadow = shadow.model_copy(update={"paused_at": None, "paused_seconds": spent})
    update: dict[str, object] = {"shadow": shadow}
    if analysis is not None:
        update["last_analysis"] = analysis
    events: list[Event] = []
    if analysis is not None and analysis.verdict == Verdict.FAIL and not isinstance(decision, Rollback):
        events.append(Event("Warning", "AnalysisFailed", f"shadow {shadow.version}: {failed_reason(analysis)[1]}"))
    version = shadow.version or ""
    match decision:
        case Hold(reason=reason):
            update |= {"phase": Phase.SHADOW, "message": reason}
        case Pause(reason=reason):
            if base.phase != Phase.PAUSED:
                events.append(Event("Normal", "Paused", f"shadow of {version} paused: {reason}"))
            update |= {"phase": Phase.PAUSED, "message": reason}
        case Rollback(reason=reason, message=message):
            entry = HistoryEntry(version=version, outcome="RolledBack", reason=reason, time=now)
            update |= {
                "shadow": None,
                "phase": Phase.ROLLED_BACK,
                "message": f"rolled back shadow {version}: {message}",
                "rolled_back_revision": shadow.revision,
                "retry_token": controls.retry,
                "rollbacks": base.rollbacks + 1,
                "history": _history(base, entry),
                "consumed_controls": consume(base.consumed_controls, controls, shadow),
            }
            events.append(Event("Warning", "RolledBack", f"rolled back shadow {version}: {reason}: {message}"))
        case Promote(reason=reason) | EndShadow(then="Promote", reason=reason):
            model = shadow.model
            assert model is not None
            outcome_reason = "ShadowPassed" if isinstance(decision, EndShadow) else reason
            entry = HistoryEntry(version=version, outcome="Promoted", reason=outcome_reason, time=now)
            update |= {
                "shadow": None,
                "stable": _track(model, 100),
                "phase": Phase.PROGRESSING,
                "message": f"promoting {version} from shadow: {reason}",
                "history": _history(base, entry),
                "consumed_controls": consume(base.consumed_controls, controls, shadow),
            }
            if isinstance(decision, EndShadow):
                events.append(Event("Normal", "ShadowPassed", f"shadow {version}: {reason}"))
            events.append(Event("Normal", "Promoting", f"promoting {version}: {reason}"))
        case EndShadow(reason=reason):
            model = shadow.model
            assert model is not None
            update |= {
                "shadow": None,
                "canary": _new_canary(model, now),
                "phase": Phase.PROGRESSING,
                "message": f"shadow {version} passed: starting canary steps",
            }
            events.append(Event("Normal", "ShadowPassed", f"shadow {version}: {reason}; canary steps start"))
    return Transition(base.model_copy(update=update), tuple(events), None)


def _run_canary(m: Moment) -> Transition:
    decision = decide(m.fm.model_copy(update={"status": m.base}), m.observed, m.analysis, m.now)
    return _apply(m, decision)


def _promoting(m: Moment) -> bool:
    return m.canary is not None and m.canary.promoting


def _promotion_pending(m: Moment) -> bool:
    return _promoting(m) and not m.stable_ready and m.wanted == m.base.stable.revision


def _candidate_revision(m: Moment) -> str | None:
    """The revision a running rollout brings: the canary's, else the shadow's."""
    if m.canary is not None:
        return m.canary.revision
    return m.base.shadow.revision if m.base.shadow is not None else None


def _in_shadow(m: Moment) -> bool:
    return m.base.shadow is not None


def _retry_asked(m: Moment) -> bool:
    retry = m.observed.controls.retry
    return m.base.rolled_back_revision == m.wanted and retry is not None and retry != m.base.retry_token


LIFECYCLE: tuple[Rule[Moment, Transition], ...] = (
    Rule(
        "(none)",
        "first reconcile",
        "Progressing",
        "the spec's model becomes the stable track",
        lambda m: m.base.stable.model is None,
        _deploy,
    ),
    Rule(
        "Promoting",
        "the new stable is not ready at full size within progressDeadline",
        "Failed",
        "Warning PromotionDeadlineExceeded; the canary keeps serving its weight",
        lambda m: _promotion_pending(m) and m.promotion_stalled,
        _promotion_stalled,
    ),
    Rule(
        "Promoting",
        "the new stable is not ready at full size",
        "Promoting",
        "the canary keeps serving its weight",
        _promotion_pending,
        _promotion_waits,
    ),
    Rule(
        "Promoting",
        "the new stable is ready at full size (or the spec moved on)",
        "Ready (or the next row)",
        "all traffic to stable, then the canary is deleted (next reconcile)",
        _promoting,
        _promotion_done,
    ),
    Rule(
        "any",
        "spec.model is the stable's",
        "Ready once the stable is ready",
        "a running canary or shadow is removed (RolloutAborted, SpecReverted)",
        lambda m: m.wanted == m.base.stable.revision,
        _serve_stable,
    ),
    Rule(
        "any",
        "a new spec.model with strategy Immediate",
        "Progressing",
        "stable replaced in place",
        lambda m: m.fm.spec.rollout.strategy == Strategy.IMMEDIATE,
        _replace_in_place,
    ),
    Rule(
        "RolledBack",
        "the retry annotation has a value not seen before",
        "Shadow (with spec.rollout.shadow), else Warming",
        "a fresh shadow or canary",
        _retry_asked,
        _retry,
    ),
    Rule(
        "RolledBack",
        "anything else",
        "RolledBack",
        "canary scaled to zero after onRollback.scaleDownDelay",
        lambda m: m.base.rolled_back_revision == m.wanted,
        _rolled_back,
    ),
    Rule(
        "Ready, Shadow, Stepping",
        "a new spec.model",
        "Shadow (with spec.rollout.shadow), else Warming",
        "a shadow track, or a canary at 0%; a running one is Replaced",
        lambda m: _candidate_revision(m) != m.wanted,
        _start_canary,
    ),
    Rule("Shadow", "anything else", "(the shadow table)", "decided by `SHADOW_RULES`", _in_shadow, _run_shadow),
    Rule(RUNNING, "anything else", "(the canary table)", "decided by `CANARY_RULES`", lambda m: True, _run_canary),
)


def next_status(fm: FraudModel, observed: Observed, analysis: AnalysisStatus | None, now: datetime) -> Transition:
    """The whole lifecycle step: from the current status to the next one, and what to tell the user.
    The first row of `LIFECYCLE` whose `when` holds decides; a running canary then goes by `CANARY_RULES`."""
    moment = Moment(
        fm=fm,
        observed=observed,
        analysis=analysis,
        now=now,
        base=fm.status.model_copy(update={"observed_generation": fm.metadata.generation}),
        wanted=revision_of(fm.spec.model),
        stable_ready=observed.stable_desired > 0 and observed.stable_ready >= observed.stable_desired,
    )
    return next(step.then(moment) for step in LIFECYCLE if step.when(moment))


def _counters(canary: CanaryStatus, analysis: AnalysisStatus | None, resumed: bool, now: datetime) -> dict[str, object]:
    """Analysis bookkeeping: failures count over the rollout, inconclusive ones in a row."""
    inconclusive = 0 if resumed else canary.inconclusive_checks
    if analysis is None:
        return {"inconclusive_checks": inconclusive}
    counters: dict[str, object] = {"analyzed_at": now}
    if analysis.verdict == Verdict.PASS:
        return counters | {"inconclusive_checks": 0, "progressed_at": now}
    if analysis.verdict == Verdict.FAIL:
        return counters | {"failed_checks": canary.failed_checks + 1, "inconclusive_checks": 0, "progressed_at": now}
    return counters | {"inconclusive_checks": inconclusive + 1}


def _pause_clock(canary: CanaryStatus, decision: Decision, sticky: str | None, now: datetime) -> dict[str, object]:
    """Paused time is kept apart (the deadline does not run); a sticky pause remembers why."""
    if isinstance(decision, Pause):
        return {"paused_at": canary.paused_at or now, "pause_reason": sticky}
    spent = canary.paused_seconds + _since(canary.paused_at, now)
    return {"paused_at": None, "paused_seconds": spent, "pause_reason": None}


def _apply(m: Moment, decision: Decision) -> Transition:
    fm, base, analysis, now = m.fm, m.base, m.analysis, m.now
    canary = base.canary
    assert canary is not None
    controls = m.observed.controls
    named = controls.naming(canary, base.consumed_controls)
    weights = analysed_steps(fm.spec.rollout.weights)
    update: dict[str, object] = {}
    if analysis is not None:
        update["last_analysis"] = analysis
    consumed = dict(base.consumed_controls)
    if "resume" in named and controls.resume is not None:
        consumed["resume"] = controls.resume
    level_pause = fm.spec.rollout.paused or controls.pause
    sticky = canary.pause_reason if "resume" not in named else None
    if isinstance(decision, Pause) and not level_pause and sticky is None:
        sticky = decision.reason
    canary = canary.model_copy(
        update=_counters(canary, analysis, "resume" in named, now) | _pause_clock(canary, decision, sticky, now)
    )
    events: list[Event] = []
    if analysis is not None and analysis.verdict == Verdict.FAIL and not isinstance(decision, Rollback):
        _, detail = failed_reason(analysis)
        events.append(Event("Warning", "AnalysisFailed", f"{canary.version}: {detail}"))
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
        case Pause(reason=reason):
            if base.phase != Phase.PAUSED:
                events.append(Event("Normal", "Paused", f"rollout of {canary.version} paused: {reason}"))
            update |= {"phase": Phase.PAUSED, "message": reason}
        case Promote(reason=reason):
            model = canary.model
            assert model is not None
            entry = HistoryEntry(version=canary.version or "", outcome="Promoted", reason=reason, time=now)
            consumed = consume(consumed, controls, canary)
            canary = canary.model_copy(update={"promoting": True, "progressed_at": now, "paused_seconds": 0.0})
            update |= {
                "stable": _track(model, 100 - canary.weight),
                "phase": Phase.PROGRESSING,
                "message": f"promoting {canary.version}: {reason}",
                "history": _history(base, entry),
            }
            events.append(Event("Normal", "Promoting", f"promoting {canary.version}: {reason}"))
        case Rollback(reason=reason, message=message):
            entry = HistoryEntry(version=canary.version or "", outcome="RolledBack", reason=reason, time=now)
            consumed = consume(consumed, controls, canary)
            canary = canary.model_copy(update={"weight": 0, "rolled_back_at": now})
            update |= {
                "phase": Phase.ROLLED_BACK,
                "message": f"rolled back {canary.version}: {message}",
                "rolled_back_revision": canary.revision,
                "retry_token": controls.retry,  # a retry value set before the rollback does not relaunch it
                "rollbacks": base.rollbacks + 1,
                "history": _history(base, entry),
                "stable": base.stable.model_copy(update={"weight": 100}),
            }
            events.append(Event("Warning", "RolledBack", f"rolled back {canary.version}: {reason}: {message}"))
    if canary.weight and not canary.promoting:
        update.setdefault("stable", base.stable.model_copy(update={"weight": 100 - canary.weight}))
    update["consumed_controls"] = consumed
    return Transition(base.model_copy(update={"canary": canary, **update}), tuple(events), decision)


def rollout_deadline(fm: FraudModel, now: datetime) -> datetime | None:
    """When a running canary's (or a promotion's) progress deadline falls, for alerts and metrics;
    None while paused (the deadline does not run) or without a rollout."""
    canary = fm.status.canary
    if canary is None or canary.rolled_back_at or canary.paused_at is not None:
        return None
    start = (canary.progressed_at or canary.started_at or now) + timedelta(seconds=canary.paused_seconds)
    return start + timedelta(seconds=parse_duration(fm.spec.rollout.progress_deadline))
