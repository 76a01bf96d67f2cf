"""The rollout state machine, table-driven: every transition, manual controls, limits, restarts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fraudmodel_operator.api import (
    AnalysisStatus,
    CheckResult,
    FraudModel,
    FraudModelStatus,
    Phase,
    Verdict,
    revision_of,
)
from fraudmodel_operator.rollout import (
    CANARY_RULES,
    LIFECYCLE,
    SHADOW_RULES,
    Advance,
    Controls,
    Decision,
    Hold,
    Observed,
    Pause,
    Promote,
    Rollback,
    analysis_due,
    decide,
    next_status,
    render_table,
)
from tests.unit.factories import at, canary, fraudmodel, model, track

READY = Observed(stable_ready=2, stable_desired=2, canary_ready=1)
ROLLOUT = {"steps": [10, 50], "interval": "1m", "progressDeadline": "10m", "analysis": {"failureLimit": 2}}


def analysis(
    verdict: Verdict, name: str = "scoreDrift", value: float = 0.4, threshold: str = "<= 0.2"
) -> AnalysisStatus:
    check = CheckResult(name=name, verdict=verdict, value=value, threshold=threshold)
    return AnalysisStatus(time=at(60), verdict=verdict, checks=[check])


def running(
    weight: int = 10,
    step: int = 0,
    rollout: dict[str, Any] | None = None,
    status_extra: dict[str, Any] | None = None,
    **canary_fields: Any,
) -> FraudModel:
    status = FraudModelStatus(
        stable=track("v1", 100 - weight),
        canary=canary("v2", weight, step=step, **canary_fields),
        phase=Phase.PROGRESSING,
        **(status_extra or {}),
    )
    return fraudmodel("v2", status=status, rollout=rollout or ROLLOUT)


@dataclass
class Case:
    name: str
    fm: FraudModel
    expected: Decision
    observed: Observed = READY
    analysis: AnalysisStatus | None = None
    now: float = 61
    extra: dict[str, Any] = field(default_factory=dict)


CASES = [
    Case("warming-then-first-step", running(weight=0), Advance(0, 10)),
    Case(
        "canary-not-ready-holds",
        running(),
        Hold("waiting for canary pods of v2"),
        observed=Observed(stable_ready=2, stable_desired=2, canary_ready=0),
    ),
    Case(
        "canary-never-ready-hits-deadline",
        running(),
        Rollback("ProgressDeadlineExceeded", "canary pods of v2 not ready within 10m"),
        observed=Observed(stable_ready=2, stable_desired=2, canary_ready=0),
        now=601,
    ),
    Case("waits-for-analysis", running(), Hold("step 1/2 at 10%: waiting for the next analysis")),
    Case("pass-advances", running(), Advance(1, 50), analysis=analysis(Verdict.PASS)),
    Case("pass-on-last-step-promotes", running(50, 1), Promote("all 2 steps passed"), analysis=analysis(Verdict.PASS)),
    Case(
        "first-failure-holds",
        running(),
        Hold("analysis failed (1/2 over the rollout)"),
        analysis=analysis(Verdict.FAIL),
    ),
    Case(
        "failures-count-over-the-rollout-not-in-a-row",
        running(50, 1, failed_checks=1, inconclusive_checks=0),
        Rollback("ScoreDriftFailed", "scoreDrift=0.4 (threshold <= 0.2)"),
        analysis=analysis(Verdict.FAIL),
    ),
    Case(
        "paused-canary-is-still-rolled-back-on-failure",
        running(failed_checks=1),
        Rollback("ScoreDriftFailed", "scoreDrift=0.4 (threshold <= 0.2)"),
        observed=Observed(2, 2, 1, Controls(pause=True)),
        analysis=analysis(Verdict.FAIL),
    ),
    Case(
        "sticky-pause-holds-without-analysis",
        running(pause_reason="5 inconclusive analyses in a row at 10%", paused_at=at(30)),
        Pause("5 inconclusive analyses in a row at 10%; resume with serving.riskml.io/resume=v2"),
    ),
    Case(
        "resume-ends-a-sticky-pause",
        running(pause_reason="5 inconclusive analyses in a row at 10%", paused_at=at(30)),
        Hold("step 1/2 at 10%: waiting for the next analysis"),
        observed=Observed(2, 2, 1, Controls(resume="v2")),
    ),
    Case(
        "paused-time-does-not-count-against-the-deadline",
        running(paused_seconds=3600.0),
        Hold("analysis inconclusive (1/60)"),
        analysis=analysis(Verdict.INCONCLUSIVE),
        now=3700,
    ),
    Case(
        "deadline-stops-while-paused",
        running(paused_at=at(10)),
        Pause("paused by serving.riskml.io/pause"),
        observed=Observed(2, 2, 1, Controls(pause=True)),
        now=7200,
    ),
    Case(
        "a-step-at-100-is-the-promotion",
        running(50, 0, rollout={**ROLLOUT, "steps": [50, 100]}),
        Promote("all 1 steps passed"),
        analysis=analysis(Verdict.PASS),
    ),
    Case(
        "only-a-100-step-promotes-once-ready",
        running(0, rollout={**ROLLOUT, "steps": [], "stepWeight": 100, "maxWeight": 100}),
        Promote("a step at 100% is the promotion itself"),
    ),
    Case(
        "max-weight-is-the-last-weight",
        running(40, 1, rollout={"stepWeight": 20, "maxWeight": 50}),
        Advance(2, 50),
        analysis=analysis(Verdict.PASS),
    ),
    Case(
        "consumed-promote-does-not-promote-again",
        running(status_extra={"consumed_controls": {"promote": "v2"}}),
        Hold("step 1/2 at 10%: waiting for the next analysis"),
        observed=Observed(2, 2, 1, Controls(promote="v2")),
    ),
    Case(
        "promote-by-revision",
        running(status_extra={"consumed_controls": {"promote": "v2"}}),
        Promote("promoted by the serving.riskml.io/promote annotation"),
        observed=Observed(2, 2, 1, Controls(promote=revision_of(model("v2")))),
    ),
    Case(
        "failure-limit-rolls-back-naming-the-check",
        running(failed_checks=1),
        Rollback("ScoreDriftFailed", "scoreDrift=0.4 (threshold <= 0.2)"),
        analysis=analysis(Verdict.FAIL),
    ),
    Case(
        "inconclusive-holds-never-passes",
        running(),
        Hold("analysis inconclusive (1/60)"),
        analysis=analysis(Verdict.INCONCLUSIVE),
    ),
    Case(
        "inconclusive-limit-pauses",
        running(inconclusive_checks=59),
        Pause("60 inconclusive analyses in a row at 10%"),
        analysis=analysis(Verdict.INCONCLUSIVE),
    ),
    Case(
        "inconclusive-limit-rolls-back-when-configured",
        running(
            inconclusive_checks=1,
            rollout={**ROLLOUT, "analysis": {"inconclusiveLimit": 2, "onInconclusive": "Rollback"}},
        ),
        Rollback("AnalysisInconclusive", "2 inconclusive analyses in a row at 10%"),
        analysis=analysis(Verdict.INCONCLUSIVE),
    ),
    Case(
        "inconclusive-past-deadline-rolls-back",
        running(),
        Rollback("ProgressDeadlineExceeded", "no conclusive analysis at 10% within 10m (paused time excluded)"),
        analysis=analysis(Verdict.INCONCLUSIVE),
        now=601,
    ),
    Case(
        "paused-by-annotation",
        running(),
        Pause("paused by serving.riskml.io/pause"),
        observed=Observed(2, 2, 1, Controls(pause=True)),
        analysis=analysis(Verdict.FAIL),
    ),
    Case(
        "paused-by-spec",
        running(rollout={**ROLLOUT, "paused": True}),
        Pause("paused by spec.rollout.paused"),
    ),
    Case(
        "promote-now",
        running(),
        Promote("promoted by the serving.riskml.io/promote annotation"),
        observed=Observed(2, 2, 1, Controls(promote="v2")),
    ),
    Case(
        "promote-annotation-for-another-version-is-ignored",
        running(),
        Hold("step 1/2 at 10%: waiting for the next analysis"),
        observed=Observed(2, 2, 1, Controls(promote="v1")),
    ),
    Case(
        "abort-now",
        running(),
        Rollback("Aborted", "rollout of v2 aborted by the serving.riskml.io/abort annotation"),
        observed=Observed(2, 2, 1, Controls(abort="v2", pause=True)),
    ),
    Case(
        "step-weight-up-to-max-multiple",
        running(40, 1, rollout={"stepWeight": 20, "maxWeight": 60}),
        Advance(2, 60),
        analysis=analysis(Verdict.PASS),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_decide(case: Case) -> None:
    assert decide(case.fm, case.observed, case.analysis, at(case.now)) == case.expected


def test_first_deploy_makes_spec_the_stable_track() -> None:
    t = next_status(fraudmodel("v1"), Observed(), None, at(0))
    assert t.status.stable.version == "v1"
    assert t.status.stable.model == model("v1")
    assert t.status.canary is None
    assert t.status.phase == Phase.PROGRESSING
    assert t.status.observed_generation == 3


def test_stable_becomes_ready_when_its_pods_are() -> None:
    fm = fraudmodel("v1", status=FraudModelStatus(stable=track("v1")))
    assert next_status(fm, Observed(0, 2, 0), None, at(0)).status.phase == Phase.PROGRESSING
    ready = next_status(fm, Observed(2, 2, 0), None, at(0))
    assert ready.status.phase == Phase.READY
    assert [e.reason for e in ready.events] == ["Ready"]


def test_new_version_starts_a_canary_beside_stable() -> None:
    fm = fraudmodel("v2", status=FraudModelStatus(stable=track("v1"), phase=Phase.READY))
    t = next_status(fm, READY, None, at(5))
    assert t.status.stable.version == "v1"
    assert t.status.canary is not None
    assert (t.status.canary.version, t.status.canary.weight, t.status.canary.started_at) == ("v2", 0, at(5))
    assert [e.reason for e in t.events] == ["RolloutStarted"]


def test_pass_records_analysis_and_sets_weights() -> None:
    t = next_status(running(), READY, analysis(Verdict.PASS), at(61))
    assert t.status.canary is not None
    assert (t.status.canary.step, t.status.canary.weight) == (1, 50)
    assert t.status.stable.weight == 50
    assert t.status.last_analysis == analysis(Verdict.PASS)
    assert t.status.canary.failed_checks == 0


def test_rollback_sets_status_history_and_counter() -> None:
    t = next_status(running(failed_checks=1), READY, analysis(Verdict.FAIL), at(61))
    s = t.status
    assert s.phase == Phase.ROLLED_BACK
    assert s.canary is not None
    assert (s.canary.weight, s.canary.rolled_back_at) == (0, at(61))
    assert s.stable.weight == 100
    assert s.rollbacks == 1
    assert s.rolled_back_revision == revision_of(model("v2"))
    assert (s.history[0].version, s.history[0].outcome, s.history[0].reason) == ("v2", "RolledBack", "ScoreDriftFailed")
    warning = next(e for e in t.events if e.reason == "RolledBack")
    assert warning.type == "Warning"
    assert "scoreDrift=0.4" in warning.message
    assert "<= 0.2" in warning.message


def rolled_back(seconds_ago: float = 0, **extra: Any) -> FraudModel:
    status = FraudModelStatus(
        stable=track("v1"),
        canary=canary("v2", 0, rolled_back_at=at(100 - seconds_ago)),
        rolled_back_revision=revision_of(model("v2")),
        phase=Phase.ROLLED_BACK,
        **extra,
    )
    return fraudmodel("v2", status=status, rollout={**ROLLOUT, "onRollback": {"scaleDownDelay": "30s"}})


def test_rolled_back_version_is_not_retried_by_itself() -> None:
    t = next_status(rolled_back(seconds_ago=5), READY, None, at(100))
    assert t.status.phase == Phase.ROLLED_BACK
    assert t.status.canary is not None
    assert not t.status.canary.scaled_down
    assert t.events == ()


def test_rolled_back_canary_is_scaled_down_after_the_delay() -> None:
    t = next_status(rolled_back(seconds_ago=31), READY, None, at(100))
    assert t.status.canary is not None
    assert t.status.canary.scaled_down
    assert [e.reason for e in t.events] == ["CanaryScaledDown"]


def test_retry_annotation_restarts_the_same_version_once() -> None:
    fm = rolled_back(retry_token="old")
    retried = next_status(fm, Observed(2, 2, 0, Controls(retry="new")), None, at(200))
    assert retried.status.canary is not None
    assert (retried.status.canary.version, retried.status.canary.weight) == ("v2", 0)
    assert retried.status.rolled_back_revision is None
    assert retried.status.retry_token == "new"
    same_token = next_status(fm, Observed(2, 2, 0, Controls(retry="old")), None, at(200))
    assert same_token.status.phase == Phase.ROLLED_BACK, "a retry token is acted on once"


def test_new_version_after_rollback_starts_a_new_canary() -> None:
    fm = rolled_back()
    fm = fm.model_copy(update={"spec": fm.spec.model_copy(update={"model": model("v3")})})
    t = next_status(fm, READY, None, at(200))
    assert t.status.canary is not None
    assert t.status.canary.version == "v3"
    assert t.status.phase == Phase.PROGRESSING


def test_spec_reverted_to_stable_aborts_the_canary() -> None:
    fm = running()
    fm = fm.model_copy(update={"spec": fm.spec.model_copy(update={"model": model("v1")})})
    t = next_status(fm, READY, None, at(70))
    assert t.status.canary is None
    assert t.status.phase == Phase.READY
    assert t.status.history[0].outcome == "Aborted"


def test_promotion_hands_over_then_drops_the_canary() -> None:
    t = next_status(running(50, 1), READY, analysis(Verdict.PASS), at(61))
    assert t.status.stable.version == "v2", "stable now runs the promoted version"
    assert t.status.canary is not None
    assert t.status.canary.promoting
    assert t.status.history[0].outcome == "Promoted"
    fm = fraudmodel("v2", status=t.status, rollout=ROLLOUT)
    waiting = next_status(fm, Observed(1, 2, 1), None, at(70))
    assert waiting.status.canary is not None, "kept until the stable pods of v2 are ready"
    done = next_status(fm, Observed(2, 2, 1), None, at(80))
    assert done.status.canary is None
    assert done.status.phase == Phase.READY
    assert [e.reason for e in done.events] == ["Promoted", "Ready"]


def test_immediate_strategy_replaces_stable() -> None:
    status = FraudModelStatus(stable=track("v1"), phase=Phase.READY)
    t = next_status(fraudmodel("v2", status=status, rollout={"strategy": "Immediate"}), READY, None, at(0))
    assert t.status.stable.version == "v2"
    assert t.status.canary is None
    assert t.status.history[0].reason == "Immediate"


def test_replacing_a_running_canary_records_it() -> None:
    fm = running()
    fm = fm.model_copy(update={"spec": fm.spec.model_copy(update={"model": model("v3")})})
    t = next_status(fm, READY, None, at(70))
    assert t.status.canary is not None
    assert t.status.canary.version == "v3"
    assert t.status.history[0].outcome == "Replaced"


@pytest.mark.parametrize(
    "fm",
    [running(0), running(10), running(50, 1), rolled_back(), running(10, paused=False)],
    ids=["warming", "step-1", "last-step", "rolled-back", "mid-rollout"],
)
def test_restart_resumes_exactly_where_it_was(fm: FraudModel) -> None:
    """All state lives in status: a status that went through the API (JSON) decides the same."""
    reloaded = FraudModel.model_validate_json(fm.model_dump_json(by_alias=True))
    for now in (0, 61, 700):
        for result in (None, analysis(Verdict.PASS), analysis(Verdict.FAIL)):
            assert next_status(reloaded, READY, result, at(now)) == next_status(fm, READY, result, at(now))


@pytest.mark.parametrize(
    ("fm", "now", "due"),
    [
        (running(), 30, False),
        (running(), 60, True),
        (running(analyzed_at=at(50)), 100, False),
        (running(analyzed_at=at(50)), 110, True),
        (running(0), 600, False),
        (rolled_back(), 600, False),
    ],
    ids=["before-interval", "at-interval", "after-last-analysis", "interval-after-analysis", "warming", "rolled-back"],
)
def test_analysis_due(fm: FraudModel, now: float, due: bool) -> None:
    assert analysis_due(fm, at(now)) is due


def with_status(fm: FraudModel, status: FraudModelStatus, **meta: Any) -> FraudModel:
    return fm.model_copy(update={"status": status, "metadata": fm.metadata.model_copy(update=meta)})


def test_inconclusive_pause_is_sticky_and_does_not_flip() -> None:
    """onInconclusive: Pause flipped Paused/Progressing every interval, with a Paused Event each time,
    and ended in a ProgressDeadlineExceeded rollback."""
    fm = running(inconclusive_checks=59)
    paused = next_status(fm, READY, analysis(Verdict.INCONCLUSIVE), at(61))
    assert paused.status.phase == Phase.PAUSED
    assert [e.reason for e in paused.events] == ["Paused"]
    fm = with_status(fm, paused.status)
    for now in (90, 121, 2000):
        result = None if now == 90 else analysis(Verdict.INCONCLUSIVE)
        t = next_status(fm, READY, result, at(now))
        assert t.status.phase == Phase.PAUSED, f"still paused at {now}s"
        assert t.events == ()
        fm = with_status(fm, t.status)
    resumed = next_status(fm, Observed(2, 2, 1, Controls(resume="v2")), None, at(2100))
    assert resumed.status.phase == Phase.PROGRESSING
    assert resumed.status.consumed_controls == {"resume": "v2"}
    assert resumed.status.canary is not None
    assert resumed.status.canary.inconclusive_checks == 0
    assert resumed.status.canary.paused_seconds == pytest.approx(2100 - 61)


def test_failures_are_not_reset_by_a_pass() -> None:
    """A canary that failed 3 of 6 analyses was promoted: a Pass reset the count."""
    fm = running(weight=10, rollout={**ROLLOUT, "steps": [10, 20, 30, 40], "analysis": {"failureLimit": 3}})
    verdicts = [Verdict.FAIL, Verdict.PASS, Verdict.FAIL, Verdict.PASS, Verdict.FAIL]
    t = None
    for i, verdict in enumerate(verdicts):
        t = next_status(fm, READY, analysis(verdict), at(61 + 60 * i))
        fm = with_status(fm, t.status)
    assert t is not None
    assert t.status.phase == Phase.ROLLED_BACK


def test_leftover_promote_does_not_promote_a_later_revision_with_the_same_version() -> None:
    promote = Observed(2, 2, 1, Controls(promote="v2"))
    promoted = next_status(running(), promote, None, at(61))
    assert promoted.status.consumed_controls == {"promote": "v2"}
    # v2 hands over and is stable; a threshold change makes a new revision still labelled v2.
    ready = with_status(running(), promoted.status)
    done = next_status(ready, Observed(2, 2, 1, Controls(promote="v2")), None, at(70))
    assert done.status.canary is None
    new_model = model("v2", threshold=0.7)
    fm = ready.model_copy(update={"spec": ready.spec.model_copy(update={"model": new_model}), "status": done.status})
    started = next_status(fm, promote, None, at(80))
    assert started.status.canary is not None
    assert started.status.canary.revision == revision_of(new_model)
    fm = with_status(fm, started.status)
    t = next_status(fm, promote, None, at(90))
    assert not isinstance(t.decision, Promote), "the leftover promote=v2 was used up by the first v2"


def test_leftover_abort_does_not_re_abort_a_retry() -> None:
    abort = Controls(abort="v2", retry="1")
    aborted = next_status(running(), Observed(2, 2, 1, Controls(abort="v2")), None, at(61))
    assert aborted.status.phase == Phase.ROLLED_BACK
    fm = with_status(running(), aborted.status)
    retried = next_status(fm, Observed(2, 2, 0, abort), None, at(120))
    assert retried.status.phase == Phase.PROGRESSING
    fm = with_status(fm, retried.status)
    t = next_status(fm, Observed(2, 2, 1, abort), None, at(130))
    assert t.status.phase == Phase.PROGRESSING, "the abort annotation was consumed by the first rollback"


def test_a_retry_set_during_the_canary_does_not_relaunch_it_after_its_rollback() -> None:
    during = Observed(2, 2, 1, Controls(abort="v2", retry="early"))
    aborted = next_status(running(), during, None, at(61))
    assert aborted.status.retry_token == "early"
    fm = with_status(running(), aborted.status)
    t = next_status(fm, Observed(2, 2, 0, Controls(retry="early")), None, at(120))
    assert t.status.phase == Phase.ROLLED_BACK


def test_a_promotion_has_a_deadline() -> None:
    fm = running(50, 1)
    promoting = next_status(fm, READY, analysis(Verdict.PASS), at(61))
    fm = with_status(fm, promoting.status)
    waiting = next_status(fm, Observed(1, 2, 1), None, at(300))
    assert waiting.status.phase == Phase.PROGRESSING
    stalled = next_status(fm, Observed(1, 2, 1), None, at(61 + 601))
    assert stalled.status.phase == Phase.FAILED
    assert [e.reason for e in stalled.events] == ["PromotionDeadlineExceeded"]
    assert stalled.status.canary is not None, "the canary keeps serving"
    again = next_status(with_status(fm, stalled.status), Observed(1, 2, 1), None, at(700))
    assert again.events == (), "one Warning, not one per reconcile"
    done = next_status(with_status(fm, stalled.status), Observed(2, 2, 1), None, at(800))
    assert done.status.phase == Phase.READY


def test_step_weight_equal_max_weight_100_promotes_instead_of_deadlocking() -> None:
    """stepWeight == maxWeight == 100: the canary went to 100%, the stable to 0 pods, and the
    promotion waited for stable pods forever."""
    rollout = {"stepWeight": 100, "maxWeight": 100}
    fm = fraudmodel("v2", status=FraudModelStatus(stable=track("v1"), phase=Phase.READY), rollout=rollout)
    started = next_status(fm, READY, None, at(0))
    fm = with_status(fm, started.status)
    promoted = next_status(fm, READY, None, at(5))
    assert isinstance(promoted.decision, Promote)
    assert promoted.status.canary is not None
    assert promoted.status.canary.weight == 0, "never routed 100% to the canary"
    fm = with_status(fm, promoted.status)
    done = next_status(fm, READY, None, at(10))
    assert done.status.phase == Phase.READY


@pytest.mark.parametrize(("interval", "due"), [("0s", False), ("1s", True)], ids=["zero", "one-second"])
def test_analyses_never_hot_loop(interval: str, due: bool) -> None:
    """interval: 0s made 340 analyses and 342 status patches in 40 s. It is refused at admission and by
    parse_fraudmodel now; the floor stays as defence in depth (model_copy skips validation)."""
    fm = running(analyzed_at=at(100))
    rollout = fm.spec.rollout.model_copy(update={"interval": interval})
    fm = fm.model_copy(update={"spec": fm.spec.model_copy(update={"rollout": rollout})})
    assert analysis_due(fm, at(100.5)) is False
    assert analysis_due(fm, at(101)) is True


def test_docs_show_the_state_tables_the_code_runs() -> None:
    docs = (Path(__file__).parents[2] / "docs" / "operator.md").read_text()
    assert render_table(LIFECYCLE) in docs
    assert render_table(CANARY_RULES) in docs
    assert render_table(SHADOW_RULES) in docs


def test_a_step_is_judged_only_once_its_weight_is_routed() -> None:
    """The cluster tier caught the 50% step analysed (and passed) while the router still carried 25%."""
    held = running(50, 1, routed_weight=25)
    assert analysis_due(held, at(600)) is False
    assert analysis_due(running(50, 1, routed_weight=50), at(61)) is True
