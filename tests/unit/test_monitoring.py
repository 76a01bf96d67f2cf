"""Watching the promoted model against its training reference: the pure rules of monitoring.py."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest

from fraudmodel_operator.analysis import Histogram
from fraudmodel_operator.api import Condition, FraudModelStatus, MonitoringSpec, Phase, Verdict
from fraudmodel_operator.monitoring import (
    DriftMeasures,
    DriftReport,
    Signal,
    assess,
    drift_event,
    drifting,
    monitoring_due,
    queries,
)
from tests.unit.factories import T0, at, canary, fraudmodel, track

N = NormalDist()
LOG_EDGES = sorted({float(f"{10 ** (-5 + i / 5):.3g}") for i in range(26)} | {0.9, 0.99, 0.28})
FEATURE_EDGES = [0.0, *(m * 10**e for e in range(5) for m in (1, 2, 5))]
SPEC = MonitoringSpec()


def scores(n: float, flag_rate: float = 0.011, sigma: float = 2.0) -> Histogram:
    """Cumulative histogram of n logit-normal scores, `flag_rate` of them >= 0.28 (the threshold)."""
    mu = math.log(0.28 / 0.72) - sigma * N.inv_cdf(1 - flag_rate)
    out = [(e, n * N.cdf((math.log(e / (1 - e)) - mu) / sigma)) for e in LOG_EDGES if e < 1]
    return (*out, (1.0, n), (math.inf, n))


def amounts(n: float, median: float = 60.0) -> Histogram:
    out = [(e, n * N.cdf(math.log(e / median) / 1.0) if e > 0 else 0.0) for e in FEATURE_EDGES]
    return (*out, (math.inf, n))


def shares(histogram: Histogram) -> Histogram:
    total = histogram[-1][1]
    return tuple((le, count / total) for le, count in histogram)


REFERENCE = 10_000


def world(
    n: float = 50_000,
    flag_rate: float = 0.011,
    live_flag_rate: float | None = None,
    median: float = 60.0,
    **extra: object,
) -> DriftMeasures:
    """The stable track's window and its model's reference: identical populations unless told."""
    live_rate = flag_rate if live_flag_rate is None else live_flag_rate
    fields: dict[str, object] = {
        "scores": scores(n, live_rate),
        "reference_scores": shares(scores(REFERENCE, flag_rate)),
        "reference_samples": REFERENCE,
        "features": {"amount": amounts(n, median)},
        "reference_features": {"amount": shares(amounts(REFERENCE))},
        "predictions": n,
        "flagged": n * live_rate,
        "reference_flag_rate": flag_rate,
    } | extra
    return DriftMeasures(**fields)  # type: ignore[arg-type]


def by_name(report: DriftReport) -> dict[str, Verdict]:
    return {s.name: s.verdict for s in report.signals}


@pytest.mark.parametrize(
    ("measures", "expected"),
    [
        (world(), {"score": Verdict.PASS, "feature.amount": Verdict.PASS, "flagRate": Verdict.PASS}),
        # legitimate traffic drifted: ten times the false alarms moves the scores and the flag rate
        (world(live_flag_rate=0.11), {"score": Verdict.FAIL, "flagRate": Verdict.FAIL}),
        # baskets five times bigger: the feature drifts before (or without) the scores
        (world(median=300.0), {"feature.amount": Verdict.FAIL, "score": Verdict.PASS}),
        # a model that stopped flagging
        (world(flagged=0.0), {"flagRate": Verdict.FAIL}),
        # the pods of an older bento publish no reference sample size: taken as exact
        (world(reference_samples=None), {"score": Verdict.PASS, "flagRate": Verdict.PASS}),
    ],
    ids=["same-population", "drifted-traffic", "feature-only", "flags-nothing", "reference-size-unknown"],
)
def test_signals_judge_live_traffic_against_the_reference(
    measures: DriftMeasures, expected: dict[str, Verdict]
) -> None:
    found = by_name(assess(SPEC, "v1", measures))
    assert {k: found[k] for k in expected} == expected, found


@pytest.mark.parametrize(
    ("measures", "verdict", "signals"),
    [
        (world(n=999, flagged=10), Verdict.INCONCLUSIVE, 0),  # under minSamples (1000)
        (DriftMeasures(error="metrics unavailable: timeout"), Verdict.INCONCLUSIVE, 0),
        (world(reference_scores=(), reference_features={}, reference_flag_rate=None), Verdict.INCONCLUSIVE, 2),
        # counts where shares belong (a misconfigured exporter): never read as a distribution
        (world(reference_scores=scores(REFERENCE), reference_flag_rate=110.0), Verdict.INCONCLUSIVE, 3),
        (world(live_flag_rate=0.11), Verdict.FAIL, 3),
    ],
    ids=["too-few", "prometheus-down", "no-reference-published", "reference-not-shares", "drift"],
)
def test_nothing_is_judged_without_evidence(measures: DriftMeasures, verdict: Verdict, signals: int) -> None:
    report = assess(SPEC, "v1", measures)
    assert report.verdict == verdict
    assert len(report.signals) == signals


def test_a_shift_just_past_the_bound_is_drift_only_with_traffic_enough_to_tell() -> None:
    """The same shift (PSI ~0.23 against a bound of 0.2): undecided on 300 transactions, whose sampling
    noise alone could reach it, and drift on 50,000."""
    spec = MonitoringSpec(min_samples=100)
    small = next(s for s in assess(spec, "v1", world(n=300, live_flag_rate=0.04)).signals if s.kind == "score")
    large = next(s for s in assess(spec, "v1", world(n=50_000, live_flag_rate=0.04)).signals if s.kind == "score")
    assert small.verdict == Verdict.INCONCLUSIVE, small.message
    assert large.verdict == Verdict.FAIL, large.message


def test_the_flag_rate_ratio_is_reported_with_its_interval() -> None:
    signal = next(s for s in assess(SPEC, "v1", world(live_flag_rate=0.05)).signals if s.kind == "flagRate")
    assert signal.verdict == Verdict.FAIL
    assert signal.value == pytest.approx(0.05 / 0.011, rel=1e-6)
    assert "allowed [0.5, 2]" in signal.message


def test_queries_read_the_stable_model_over_the_window() -> None:
    fm = fraudmodel(status=FraudModelStatus(phase=Phase.READY, stable=track("v7")))
    promql = queries(fm)
    assert 'track="stable"' in promql["scores"]
    assert 'model_version="v7"' in promql["scores"]
    assert "[3600s]" in promql["scores"]
    assert "[3600s]" not in promql["reference_scores"]
    assert set(promql) >= {"reference_flag_rate", "reference_samples", "features", "reference_features"}


READY = FraudModelStatus(phase=Phase.READY, stable=track("v1"))


@pytest.mark.parametrize(
    ("status", "monitoring", "last", "now", "due"),
    [
        (READY, {}, None, T0, True),
        (READY, {}, ("v1", T0), at(299), False),
        (READY, {}, ("v1", T0), at(300), True),
        (READY, {}, ("v0", T0), at(1), True),  # promoted since: the new model at once
        (READY, {"enabled": False}, None, T0, False),
        (READY.model_copy(update={"phase": Phase.PROGRESSING, "canary": canary()}), {}, None, T0, True),
        (READY.model_copy(update={"phase": Phase.PAUSED, "canary": canary()}), {}, None, T0, True),
        (READY.model_copy(update={"phase": Phase.SHADOW}), {}, None, T0, True),
        (READY.model_copy(update={"phase": Phase.ROLLED_BACK, "canary": canary()}), {}, None, T0, True),
        (READY.model_copy(update={"phase": Phase.FAILED}), {}, None, T0, False),
        (FraudModelStatus(phase=Phase.PENDING), {}, None, T0, False),
    ],
    ids=[
        "first",
        "before-interval",
        "at-interval",
        "new-version",
        "disabled",
        "mid-rollout",
        "paused",
        "shadow",
        "rolled-back",
        "failed",
        "nothing-served",
    ],
)
def test_monitoring_is_due_for_a_serving_stable_model_each_interval(
    status: FraudModelStatus, monitoring: dict[str, object], last: tuple[str, object] | None, now: object, due: bool
) -> None:
    fm = fraudmodel(status=status)
    fm = fm.model_copy(update={"spec": fm.spec.model_copy(update={"monitoring": MonitoringSpec(**monitoring)})})
    assert monitoring_due(fm, last, now) is due  # type: ignore[arg-type]


def report(verdict: Verdict, error: str | None = None) -> DriftReport:
    signal = Signal("score", verdict, 0.4 if verdict == Verdict.FAIL else 0.01, 0.2, "score PSI 0.400 > 0.2")
    flags = Signal("flagRate", Verdict.FAIL, 9.5, 2.0, "flag rate 10.45% ... ratio 9.50")
    signals = (signal, flags) if verdict == Verdict.FAIL else (signal,)
    return DriftReport("v1", 5000, () if error else signals, error)


def condition(status: str, reason: str, message: str = "m") -> Condition:
    return Condition(type="Drifting", status=status, reason=reason, message=message, last_transition_time=T0)


TRUE = condition("True", "ScoreDrift", "was drifting")
FALSE = condition("False", "WithinReference", "fine")


@pytest.mark.parametrize(
    ("measured", "previous", "status", "reason"),
    [
        (None, None, "Unknown", "NotMeasured"),
        (None, TRUE, "True", "ScoreDrift"),
        (report(Verdict.PASS), TRUE, "False", "WithinReference"),
        (report(Verdict.FAIL), FALSE, "True", "ScoreDrift"),
        (report(Verdict.INCONCLUSIVE), TRUE, "True", "ScoreDrift"),  # undecided never clears a drift
        (report(Verdict.INCONCLUSIVE), FALSE, "False", "WithinReference"),
        (report(Verdict.INCONCLUSIVE), None, "Unknown", "Undecided"),
        (DriftReport("v1", 50), None, "Unknown", "InsufficientData"),
        (assess(SPEC, "v1", world(reference_scores=())), None, "Unknown", "NoReference"),
        (report(Verdict.INCONCLUSIVE, "metrics unavailable: timeout"), None, "Unknown", "MetricsUnavailable"),
        (report(Verdict.INCONCLUSIVE, "metrics unavailable: timeout"), FALSE, "False", "WithinReference"),
    ],
    ids=[
        "not-yet",
        "between-measurements",
        "cleared",
        "starts",
        "undecided-keeps-drift",
        "undecided-keeps-fine",
        "first-undecided",
        "first-too-few",
        "no-reference",
        "first-prometheus-down",
        "prometheus-down-keeps",
    ],
)
def test_the_drifting_condition(
    measured: DriftReport | None, previous: Condition | None, status: str, reason: str
) -> None:
    result = drifting(SPEC, "v1", measured, previous)
    assert result is not None
    assert result[:3] == ("Drifting", status, reason)


def test_drift_messages_carry_values_only_while_drifting() -> None:
    """Within bounds the message depends on the spec alone: a healthy model is never written again."""
    fine = [drifting(SPEC, "v1", report(Verdict.PASS), None) for _ in range(2)]
    assert fine[0] == fine[1]
    assert fine[0] is not None
    assert "0.01" not in fine[0][3]
    assert "score PSI <= 0.2" in fine[0][3]
    drift = drifting(SPEC, "v1", report(Verdict.FAIL), None)
    assert drift is not None
    assert "score PSI 0.400 > 0.2" in drift[3]
    assert "ratio 9.50" in drift[3]
    assert drifting(MonitoringSpec(enabled=False), "v1", report(Verdict.FAIL), None) is None


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        (FALSE, ("Drifting", "True", "ScoreDrift", "drifts"), ("Warning", "ScoreDrift")),
        (None, ("Drifting", "True", "FlagRateShift", "drifts"), ("Warning", "FlagRateShift")),
        (TRUE, ("Drifting", "True", "ScoreDrift", "drifts more"), None),  # still the same drift: no repeat
        (TRUE, ("Drifting", "True", "FeatureDrift", "now a feature"), ("Warning", "FeatureDrift")),
        (TRUE, ("Drifting", "False", "WithinReference", "fine"), ("Normal", "DriftResolved")),
        (FALSE, ("Drifting", "False", "WithinReference", "fine"), None),
        (None, ("Drifting", "Unknown", "InsufficientData", "few"), None),
    ],
    ids=["starts", "starts-first", "continues", "changes-kind", "resolves", "stays-fine", "unknown"],
)
def test_events_mark_drift_starting_and_ending(
    before: Condition | None, after: tuple[str, str, str, str], expected: tuple[str, str] | None
) -> None:
    event = drift_event(before, after)  # type: ignore[arg-type]
    assert (None if event is None else (event.type, event.reason)) == expected


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ({"flagRate": {"minRatio": 3.0, "maxRatio": 2.5}}, "minRatio must be <= maxRatio"),
        ({"interval": "5s"}, "interval"),
        ({"minSamples": 10}, "minSamples"),
    ],
    ids=["ratios-reversed", "interval-too-short", "too-few-samples"],
)
def test_bad_monitoring_specs_are_refused(spec: dict[str, object], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        MonitoringSpec.model_validate(spec)
