"""The shadow phase: lifecycle (SHADOW_RULES), its track and routing config, and the paired gates.

Statistics are checked against first principles: the exact McNemar p-value against the binomial sum,
the paired interval against its definition, and the error rate of the gates by simulation."""

from __future__ import annotations

import math
import random
from datetime import datetime
from math import comb
from statistics import NormalDist
from typing import Any

import pytest

from fraudmodel_operator.api import (
    AnalysisStatus,
    CheckResult,
    FraudModel,
    FraudModelStatus,
    Phase,
    ShadowGates,
    ShadowStatus,
    Verdict,
    revision_of,
)
from fraudmodel_operator.conditions import desired_conditions
from fraudmodel_operator.edge_routing import EdgeRouting, ShadowTarget, edge_routing, routing_of
from fraudmodel_operator.paired import (
    FLIP_RATE,
    PAIRED_FLAG_RATE,
    PairedMeasures,
    assess_paired,
    judge_shadow,
    measures_from,
    paired_queries,
)
from fraudmodel_operator.planner import plan_children
from fraudmodel_operator.rollout import Controls, Observed, next_status, shadow_analysis_due
from fraudmodel_operator.stats import look_alpha, mcnemar_exact_p, paired_ratio_interval
from tests.unit.factories import T0, at, fraudmodel, model, track

SHADOW_SPEC = {"duration": "10m", "minPairedSamples": 1000, "sample": 0.5, "then": "Canary"}
ROLLOUT: dict[str, Any] = {
    "steps": [10, 50],
    "interval": "1m",
    "progressDeadline": "30m",
    "analysis": {"failureLimit": 1},
    "shadow": SHADOW_SPEC,
}
READY = Observed(stable_ready=2, stable_desired=2, shadow_ready=1)


def shadow(version: str = "v2", **extra: Any) -> ShadowStatus:
    m = model(version)
    fields: dict[str, Any] = {"started_at": T0, "progressed_at": T0, "sample": 0.5} | extra
    return ShadowStatus(version=version, image=m.image, revision=revision_of(m), model=m, **fields)


def in_shadow(
    rollout: dict[str, Any] | None = None, annotations: dict[str, str] | None = None, **extra: Any
) -> FraudModel:
    status = FraudModelStatus(stable=track("v1"), shadow=shadow(**extra), phase=Phase.SHADOW)
    return fraudmodel("v2", status=status, rollout=rollout or ROLLOUT, annotations=annotations)


def paired(verdict: Verdict, samples: int = 5000) -> AnalysisStatus:
    check = CheckResult(name=FLIP_RATE, verdict=verdict, value=0.05, threshold="<= 0.005", samples=samples)
    return AnalysisStatus(time=at(60), verdict=verdict, checks=[check], revision=revision_of(model("v2")))


# ---------------------------------------------------------------- lifecycle


def test_a_new_version_starts_in_shadow_and_the_stable_keeps_all_traffic() -> None:
    fm = fraudmodel("v2", status=FraudModelStatus(stable=track("v1"), phase=Phase.READY), rollout=ROLLOUT)
    out = next_status(fm, READY, None, T0)
    status = out.status
    assert status.phase == Phase.SHADOW
    assert status.canary is None
    assert status.stable.weight == 100
    assert status.shadow is not None
    assert (status.shadow.version, status.shadow.sample, status.shadow.weight) == ("v2", 0.5, 0)
    assert [e.reason for e in out.events] == ["RolloutStarted"]
    assert "shadow v2 started" in out.events[0].message
    conditions = {kind: state for kind, state, _, _ in desired_conditions(status)}
    assert conditions["Progressing"] == "True"
    assert conditions["Reconciling"] == "True"


def test_a_pass_before_duration_holds_and_after_it_starts_the_canary_steps() -> None:
    early = next_status(in_shadow(), READY, paired(Verdict.PASS), at(120))
    assert early.status.phase == Phase.SHADOW
    assert early.status.shadow is not None
    assert early.status.shadow.passed_at == at(120)
    assert "runs 10m in all" in early.status.message
    # No analysis due at 10m: the last one passed, so the phase ends.
    fm = in_shadow(passed_at=at(540), analyzed_at=at(540), paired_samples=5000)
    done = next_status(fm, READY, None, at(600))
    assert done.status.shadow is None
    assert done.status.canary is not None
    assert (done.status.canary.version, done.status.canary.weight) == ("v2", 0)
    assert done.status.phase == Phase.PROGRESSING
    assert [e.reason for e in done.events] == ["ShadowPassed"]


def test_then_promote_replaces_the_stable_without_canary_steps() -> None:
    rollout = {**ROLLOUT, "shadow": {**SHADOW_SPEC, "then": "Promote"}}
    out = next_status(in_shadow(rollout), READY, paired(Verdict.PASS), at(600))
    status = out.status
    assert status.shadow is None
    assert status.canary is None
    assert (status.stable.version, status.stable.weight) == ("v2", 100)
    assert status.history[0].outcome == "Promoted"
    assert status.history[0].reason == "ShadowPassed"
    assert [e.reason for e in out.events] == ["ShadowPassed", "Promoting"]


def test_a_failed_paired_gate_rolls_back_at_once_and_is_not_retried_by_itself() -> None:
    out = next_status(in_shadow(), READY, paired(Verdict.FAIL), at(60))
    status = out.status
    assert status.phase == Phase.ROLLED_BACK
    assert status.shadow is None
    assert status.canary is None
    assert status.rolled_back_revision == revision_of(model("v2"))
    assert status.history[0].reason == "FlipRateFailed"
    assert status.last_analysis is not None
    assert status.last_analysis.verdict == Verdict.FAIL
    assert [e.reason for e in out.events] == ["RolledBack"]
    again = next_status(fraudmodel("v2", status=status, rollout=ROLLOUT), READY, None, at(120))
    assert again.status.shadow is None
    assert again.status.phase == Phase.ROLLED_BACK
    retried = next_status(
        fraudmodel("v2", status=status, rollout=ROLLOUT, annotations={"serving.riskml.io/retry": "1"}),
        Observed(stable_ready=2, stable_desired=2, controls=Controls(retry="1")),
        None,
        at(180),
    )
    assert retried.status.phase == Phase.SHADOW
    assert retried.status.shadow is not None


def test_inconclusive_holds_and_the_deadline_rolls_back() -> None:
    out = next_status(in_shadow(), READY, paired(Verdict.INCONCLUSIVE), at(600))
    assert out.status.phase == Phase.SHADOW
    assert out.status.shadow is not None
    assert out.status.shadow.inconclusive_checks == 1
    late = next_status(in_shadow(), READY, paired(Verdict.INCONCLUSIVE), at(31 * 60))
    assert late.status.phase == Phase.ROLLED_BACK
    assert late.status.history[0].reason == "ProgressDeadlineExceeded"


def test_a_shadow_without_ready_pods_waits_then_rolls_back() -> None:
    waiting = Observed(stable_ready=2, stable_desired=2, shadow_ready=0)
    assert next_status(in_shadow(), waiting, None, at(60)).status.message == "waiting for shadow pods of v2"
    assert next_status(in_shadow(), waiting, None, at(31 * 60)).status.phase == Phase.ROLLED_BACK


def test_pause_holds_a_passed_shadow_and_abort_and_promote_act_on_it() -> None:
    paused = next_status(in_shadow({**ROLLOUT, "paused": True}), READY, paired(Verdict.PASS), at(600))
    assert paused.status.phase == Phase.PAUSED
    assert paused.status.shadow is not None
    aborted = next_status(
        in_shadow(annotations={"serving.riskml.io/abort": "v2"}),
        Observed(stable_ready=2, stable_desired=2, shadow_ready=1, controls=Controls(abort="v2")),
        None,
        at(60),
    )
    assert aborted.status.phase == Phase.ROLLED_BACK
    assert aborted.status.history[0].reason == "Aborted"
    assert aborted.status.consumed_controls == {"abort": "v2"}
    promoted = next_status(
        in_shadow(),
        Observed(stable_ready=2, stable_desired=2, shadow_ready=1, controls=Controls(promote="v2")),
        None,
        at(60),
    )
    assert promoted.status.stable.version == "v2"
    assert promoted.status.shadow is None


def test_a_newer_version_replaces_the_shadow_and_a_revert_aborts_it() -> None:
    fm = in_shadow()
    newer = fm.model_copy(update={"spec": fm.spec.model_copy(update={"model": model("v3")})})
    out = next_status(newer, READY, None, at(60))
    assert out.status.shadow is not None
    assert out.status.shadow.version == "v3"
    assert out.status.history[0].outcome == "Replaced"
    reverted = fm.model_copy(update={"spec": fm.spec.model_copy(update={"model": model("v1")})})
    back = next_status(reverted, READY, None, at(60))
    assert back.status.shadow is None
    assert back.status.history[0].outcome == "Aborted"


@pytest.mark.parametrize(("now", "due"), [(30, False), (60, True)])
def test_shadow_analysis_is_due_every_interval(now: float, due: bool) -> None:
    assert shadow_analysis_due(in_shadow(), at(now)) is due


# ---------------------------------------------------------------- track and routing


def test_the_shadow_track_is_its_own_deployment_and_service_on_no_route() -> None:
    fm = in_shadow(ready_replicas=1)
    children = {(c["kind"], c["metadata"]["name"]): c for c in plan_children(fm)}
    deployment = children[("Deployment", "bot-shadow")]
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["FRAUDMODEL_TRACK"] == "shadow"
    assert env["FRAUDMODEL_VERSION"] == "v2"
    assert children[("Service", "bot-shadow")]["spec"]["selector"]["serving.riskml.io/track"] == "shadow"
    assert children[("Service", "bot")]["spec"]["selector"]["serving.riskml.io/track"] == "stable"
    assert deployment["spec"]["replicas"] == 1  # half of two replicas' traffic
    routing = routing_of(children[("ConfigMap", "bot-routing")])
    assert routing == EdgeRouting(shadow=ShadowTarget(url="http://bot-shadow.risk.svc:80", sample=0.5, version="v2"))


def test_nothing_is_mirrored_before_the_shadow_has_a_ready_pod() -> None:
    assert edge_routing(in_shadow(ready_replicas=0)) == EdgeRouting()
    assert edge_routing(fraudmodel()) == EdgeRouting()


# ---------------------------------------------------------------- paired statistics


def test_exact_mcnemar_p_is_the_binomial_tail() -> None:
    for b, c in [(10, 12), (0, 10), (3, 3), (1, 30), (40, 25)]:
        d, k = b + c, min(b, c)
        exact = min(1.0, 2 * sum(comb(d, i) for i in range(k + 1)) / 2**d)
        assert mcnemar_exact_p(b, c) == pytest.approx(exact, rel=1e-6)
    assert mcnemar_exact_p(0, 0) == 1.0


def test_paired_interval_contains_the_ratio_and_solves_the_score_equation() -> None:
    ratio, lower, upper = paired_ratio_interval(100, 10, 30, 0.01)
    assert ratio == pytest.approx(130 / 110)
    assert lower < ratio < upper
    z = NormalDist().inv_cdf(0.99)
    for r in (lower, upper):  # the bounds are where |sum W| = z sqrt(sum W^2)
        w_sum = 130 - r * 110
        w_sq = 100 * (1 - r) ** 2 + 30 + 10 * r * r
        assert abs(w_sum) == pytest.approx(z * math.sqrt(w_sq), rel=1e-9)
    assert paired_ratio_interval(50, 0, 0, 0.01) == (1.0, 1.0, 1.0), "no discordant pair: both flag the same"
    assert paired_ratio_interval(0, 0, 20, 0.01) == (None, 0.0, math.inf), "the stable flagged nothing: unbounded"


@pytest.mark.parametrize("ratio", [0.5, 2.0])
def test_paired_interval_errs_at_most_about_alpha_at_a_bound(ratio: float) -> None:
    """Correlated models (a retrain) exactly at a bound: the interval excludes the true ratio on the
    passing side at most ~alpha of the time (the conditional McNemar mapping did two times in three)."""
    rng = random.Random(5)
    alpha, n, wrong = 0.05, 4000, 0
    for _ in range(400):
        m = _pairs(n, 0.02, ratio, 0.0, rng)
        _, lower, upper = paired_ratio_interval(m.both, m.only_stable, m.only_shadow, alpha)
        truth = ratio  # by construction the shadow flags `ratio` times the stable's rate
        wrong += upper < truth if ratio > 1 else lower > truth
    assert wrong / 400 <= alpha + 0.03


def _pairs(n: int, stable_rate: float, ratio: float, flip_noise: float, rng: random.Random) -> PairedMeasures:
    """n transactions: the stable flags with `stable_rate`; the shadow flags the same ones, then
    un-flags or adds flags so its rate is `ratio` times the stable's, plus `flip_noise` swaps."""
    both = only_stable = only_shadow = neither = 0
    for _ in range(n):
        s = rng.random() < stable_rate
        if s:
            keep = min(1.0, ratio) * (1 - flip_noise)
            h = rng.random() < keep
        else:
            extra = max(0.0, ratio - 1) * stable_rate / (1 - stable_rate) + flip_noise * stable_rate
            h = rng.random() < extra
        both += s and h
        only_stable += s and not h
        only_shadow += h and not s
        neither += not s and not h
    return PairedMeasures(both=both, only_stable=only_stable, only_shadow=only_shadow, neither=neither)


def test_paired_gates_pass_a_healthy_retrain_and_fail_a_doubled_flag_rate() -> None:
    rng = random.Random(7)
    gates = ShadowGates.model_validate({"flipRate": {"maxRate": 0.01}})
    healthy = assess_paired(gates, _pairs(40_000, 0.01, 1.0, 0.1, rng), 1000, 0.01, {})
    assert [(r.name, r.verdict) for r in healthy] == [(FLIP_RATE, Verdict.PASS), (PAIRED_FLAG_RATE, Verdict.PASS)]
    doubled = assess_paired(gates, _pairs(40_000, 0.01, 2.0, 0.0, rng), 1000, 0.01, {})
    assert {r.name: r.verdict for r in doubled}[PAIRED_FLAG_RATE] == Verdict.FAIL
    assert "McNemar p=" in doubled[1].message


def test_below_the_pair_floor_every_gate_is_inconclusive_and_spends_no_look() -> None:
    results = assess_paired(ShadowGates(), PairedMeasures(both=5, neither=500), 1000, 0.01, {FLIP_RATE: 2})
    assert {r.verdict for r in results} == {Verdict.INCONCLUSIVE}
    assert [r.looks for r in results] == [2, 0]
    assert "505 paired samples of 1000" in results[0].message


def test_flip_rate_gate_errs_at_most_alpha_at_its_bound() -> None:
    """A shadow exactly at maxRate must fail a passing look (or pass a failing one) at most alpha of the time
    over repeated looks; here with a binomial flip count per look (5 looks)."""
    rng = random.Random(11)
    gates = ShadowGates.model_validate({"flipRate": {"maxRate": 0.02}, "flagRateRatio": {"enabled": False}})
    alpha, wrong = 0.05, 0
    for _ in range(300):
        flips = 0
        pairs = 0
        looks: dict[str, int] = {}
        for _look in range(5):
            pairs += 2000
            flips += sum(rng.random() < 0.02 for _ in range(2000))
            (result,) = assess_paired(gates, PairedMeasures(only_shadow=flips, neither=pairs - flips), 1, alpha, looks)
            looks = {FLIP_RATE: result.looks}
            if result.verdict == Verdict.PASS:
                wrong += 1
                break
    assert wrong / 300 <= alpha + 0.03
    assert look_alpha(alpha, 1) == alpha / 2


def test_queries_read_the_shadow_versions_agreement_table_since_it_started() -> None:
    fm = in_shadow()
    q = paired_queries(fm, 600)
    assert 'track="shadow"' in q["decisions"]
    assert 'model_version="v2"' in q["decisions"]
    assert "[600s]" in q["decisions"]
    assert "by (stable_decision, shadow_decision)" in q["decisions"]
    m = measures_from(
        [
            ({"stable_decision": "flag", "shadow_decision": "flag"}, 10.0),
            ({"stable_decision": "flag", "shadow_decision": "allow"}, 2.0),
            ({"stable_decision": "allow", "shadow_decision": "flag"}, 5.0),
            ({"stable_decision": "allow", "shadow_decision": "allow"}, 983.0),
        ],
        [
            ({"stable_decision": "flag", "shadow_decision": "allow"}, 900.0),
            ({"stable_decision": "allow", "shadow_decision": "allow"}, 100.0),
        ],
        [({}, 3.0)],
        [({}, 1000.0)],
    )
    assert (m.both, m.only_stable, m.only_shadow, m.neither, m.pairs, m.flips) == (10, 2, 5, 983, 1000, 7)
    assert (m.amount_flipped, m.amount_total, m.mean_abs_delta) == (900.0, 1000.0, 0.003)


def test_judged_looks_carry_over_within_the_shadow_revision_only() -> None:
    first = judge_shadow(in_shadow(), PairedMeasures(both=20, only_stable=1, only_shadow=1, neither=4978), at(60))
    assert first.revision == revision_of(model("v2"))
    assert {c.name: c.looks for c in first.checks} == {FLIP_RATE: 1, PAIRED_FLAG_RATE: 1}
    fm = in_shadow()
    fm = fm.model_copy(update={"status": fm.status.model_copy(update={"last_analysis": first})})
    second = judge_shadow(fm, PairedMeasures(both=40, only_stable=2, only_shadow=2, neither=9956), at(120))
    assert {c.name: c.looks for c in second.checks} == {FLIP_RATE: 2, PAIRED_FLAG_RATE: 2}
    assert isinstance(second.time, datetime)
