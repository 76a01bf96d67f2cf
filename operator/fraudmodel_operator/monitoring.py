"""Watching the promoted model: the stable track's live traffic against its model's training reference.

Population drift (new merchants, a holiday, a changed upstream feature) moves the canary and
the stable alike, so the canary analysis cannot see it. Every serving pod publishes its model's
reference sample (the test split it was evaluated on) as distributions on the same buckets as
its live metrics; this module compares the two for the stable track of a FraudModel whose
stable model serves (WATCHED_PHASES).

`queries()` says what to read, `assess()` judges it (pure), `drifting()` turns the judgement and
the previous condition into the `Drifting` condition (pure, with hysteresis), and `measure()`
reads a `MetricProvider` (I/O). The rules (docs/operator.md, "Monitoring after promotion"):

- Score PSI and each monitored feature's PSI, with the analysis' own PSI (`analysis.psi`: bins
  merged until each holds enough traffic, expected sampling noise subtracted) and its noise
  margin: drift only when the PSI exceeds its bound by more than noise can explain at `alpha`,
  within bounds only when it is at or under the bound; in between, undecided.
- The live flag rate against the share of reference scores at or above the served threshold,
  as a rate ratio with its exact interval (`analysis.ratio_test`), inside [minRatio, maxRatio].
- Fewer than `minSamples` scored transactions in the window: nothing is judged.
- Undecided keeps the previous state: a drift is cleared only by a measurement within bounds.

It never changes traffic: drift hits every version alike, so rolling back to the previous
model would not help (and that model is no longer running); the fix is a model trained on the
new population, which needs labels the operator does not have. It tells the people who can.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from fraudmodel_operator.analysis import (
    Histogram,
    MetricProvider,
    ProviderError,
    Vector,
    histogram,
    psi,
    psi_noise,
    query_all,
    ratio_test,
    scalar,
    selector,
)
from fraudmodel_operator.api import Condition, FraudModel, MonitoringSpec, Phase, Verdict, parse_duration
from fraudmodel_operator.conditions import Status
from fraudmodel_operator.rollout import Event

CONDITION = "Drifting"
# A reference whose size the pods do not publish is taken as exact (its sampling noise as nil).
EXACT_REFERENCE = 1e9
# Condition reasons, per signal kind, in the order a message lists them.
REASONS = {"score": "ScoreDrift", "feature": "FeatureDrift", "flagRate": "FlagRateShift"}
WITHIN = "WithinReference"
NOT_MEASURED = "NotMeasured"
INSUFFICIENT = "InsufficientData"
UNAVAILABLE = "MetricsUnavailable"
NO_REFERENCE = "NoReference"
UNDECIDED = "Undecided"
NOT_A_SHARE = "the reference is not a distribution of shares"


@dataclass(frozen=True)
class DriftMeasures:
    """What the stable track served over the window, and its model's reference; empty where absent."""

    scores: Histogram = ()  # live, cumulative (le, count)
    reference_scores: Histogram = ()  # reference, cumulative (le, share)
    reference_samples: float | None = None
    features: Mapping[str, Histogram] = field(default_factory=dict)
    reference_features: Mapping[str, Histogram] = field(default_factory=dict)
    predictions: float | None = None
    flagged: float | None = None
    reference_flag_rate: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class Signal:
    """One judged signal: `score`, `flagRate`, or `feature` (with `feature` naming it)."""

    kind: str
    verdict: Verdict
    value: float | None
    bound: float  # the upper bound (maxPsi, maxRatio) the dashboard plots
    message: str
    feature: str = ""

    @property
    def name(self) -> str:
        return f"feature.{self.feature}" if self.feature else self.kind


@dataclass(frozen=True)
class DriftReport:
    """One measurement of one stable model."""

    version: str
    samples: int
    signals: tuple[Signal, ...] = ()
    error: str | None = None

    @property
    def verdict(self) -> Verdict:
        verdicts = {s.verdict for s in self.signals}
        if Verdict.FAIL in verdicts:
            return Verdict.FAIL
        if self.error or not self.signals or Verdict.INCONCLUSIVE in verdicts:
            return Verdict.INCONCLUSIVE
        return Verdict.PASS


# ---------------------------------------------------------------- queries


def queries(fm: FraudModel) -> dict[str, str]:
    """PromQL of every measure of the stable track's model over the monitoring window."""
    window = f"{int(parse_duration(fm.spec.monitoring.window))}s"
    v = f'{selector(fm, "stable")},model_version="{fm.status.stable.version}"'
    return {
        "scores": f"sum by (le) (increase(fraud_model_score_bucket{{{v}}}[{window}]))",
        "reference_scores": f"max by (le) (fraud_model_reference_score_bucket{{{v}}})",
        "reference_samples": f"max(fraud_model_reference_samples{{{v}}})",
        "features": f"sum by (feature, le) (increase(fraud_model_feature_bucket{{{v}}}[{window}]))",
        "reference_features": f"max by (feature, le) (fraud_model_reference_feature_bucket{{{v}}})",
        "predictions": f"sum(increase(fraud_model_predictions_total{{{v}}}[{window}]))",
        "flagged": f'sum(increase(fraud_model_decisions_total{{{v},decision="flag"}}[{window}])) or vector(0)',
        "reference_flag_rate": f"max(fraud_model_reference_flag_rate{{{v}}})",
    }


def _by_feature(vector: Vector) -> dict[str, Histogram]:
    grouped: dict[str, list[tuple[float, float]]] = {}
    for labels, value in vector:
        if "le" in labels and labels.get("feature"):
            grouped.setdefault(labels["feature"], []).append((float(labels["le"]), value))
    return {name: tuple(sorted(points)) for name, points in grouped.items()}


async def measure(provider: MetricProvider, fm: FraudModel) -> DriftMeasures:
    try:
        r = await query_all(provider, queries(fm))
    except ProviderError as exc:
        return DriftMeasures(error=f"metrics unavailable: {exc}")
    return DriftMeasures(
        scores=histogram(r["scores"]),
        reference_scores=histogram(r["reference_scores"]),
        reference_samples=scalar(r["reference_samples"]),
        features=_by_feature(r["features"]),
        reference_features=_by_feature(r["reference_features"]),
        predictions=scalar(r["predictions"]),
        flagged=scalar(r["flagged"]),
        reference_flag_rate=scalar(r["reference_flag_rate"]),
    )


# ---------------------------------------------------------------- the rules


def _as_counts(shares: Histogram, samples: float) -> Histogram:
    return tuple((le, share * samples) for le, share in shares)


def _psi_signal(
    kind: str, live: Histogram, reference: Histogram, samples: float, bound: float, alpha: float, feature: str = ""
) -> Signal:
    what = f"{feature} PSI" if feature else "score PSI"
    if not reference:
        return Signal(kind, Verdict.INCONCLUSIVE, None, bound, f"{what}: no reference published", feature)
    if any(not 0.0 <= share <= 1.0 + 1e-9 for _, share in reference):
        return Signal(kind, Verdict.INCONCLUSIVE, None, bound, f"{what}: {NOT_A_SHARE}", feature)
    if not live or live[-1][1] <= 0:
        return Signal(kind, Verdict.INCONCLUSIVE, None, bound, f"{what}: no live histogram", feature)
    counts = _as_counts(reference, samples)
    measured = psi(live, counts)
    if measured is None:
        why = f"{what}: too few values outside the busiest bins to compare"
        return Signal(kind, Verdict.INCONCLUSIVE, None, bound, why, feature)
    value, raw, bins = measured
    margin = psi_noise(live, counts, bins, alpha)
    if value > bound + margin:
        verdict = Verdict.FAIL
    elif value <= bound:
        verdict = Verdict.PASS
    else:
        verdict = Verdict.INCONCLUSIVE
    relation = ">" if value > bound else "<="
    message = f"{what} {value:.3f} {relation} {bound:g} over {bins} bins (raw {raw:.3f}; noise reaches +{margin:.3f})"
    return Signal(kind, verdict, value, bound, message, feature)


def _flag_signal(spec: MonitoringSpec, m: DriftMeasures, samples: float) -> Signal:
    fr = spec.flag_rate
    n, k, rate = m.predictions or 0.0, m.flagged, m.reference_flag_rate
    if k is None or rate is None or n <= 0:
        return Signal("flagRate", Verdict.INCONCLUSIVE, None, fr.max_ratio, "flag rate: no reference flag rate")
    if not 0.0 <= rate <= 1.0:
        return Signal("flagRate", Verdict.INCONCLUSIVE, None, fr.max_ratio, f"flag rate: {NOT_A_SHARE}")
    k_ref = rate * samples
    outcome = ratio_test(k, n, k_ref, samples, fr.min_ratio, fr.max_ratio, spec.alpha, 0)
    rates = f"flag rate {k / n:.2%} of {int(n)}, reference {rate:.2%}"
    if outcome is None:
        return Signal("flagRate", Verdict.INCONCLUSIVE, None, fr.max_ratio, f"{rates}: too few flags to decide")
    ratio = outcome.ratio if outcome.ratio is not None and math.isfinite(outcome.ratio) else None
    high = "inf" if math.isinf(outcome.upper) else f"{outcome.upper:.2f}"
    message = f"{rates}: ratio {'n/a' if ratio is None else f'{ratio:.2f}'} ({outcome.lower:.2f}-{high}), "
    message += f"allowed [{fr.min_ratio:g}, {fr.max_ratio:g}]"
    return Signal("flagRate", outcome.verdict, ratio, fr.max_ratio, message)


def assess(spec: MonitoringSpec, version: str, m: DriftMeasures) -> DriftReport:
    """Judge one measurement of the stable model `version`. Pure."""
    samples = int(m.predictions or 0)
    if m.error:
        return DriftReport(version, samples, error=m.error)
    if samples < spec.min_samples:
        return DriftReport(version, samples)
    reference = m.reference_samples if m.reference_samples and m.reference_samples > 0 else EXACT_REFERENCE
    signals = [_psi_signal("score", m.scores, m.reference_scores, reference, spec.max_psi, spec.alpha)]
    for name in sorted(set(m.features) & set(m.reference_features)):
        signals.append(
            _psi_signal(
                "feature",
                m.features[name],
                m.reference_features[name],
                reference,
                spec.max_feature_psi,
                spec.alpha,
                name,
            )
        )
    if spec.flag_rate.enabled:
        signals.append(_flag_signal(spec, m, reference))
    return DriftReport(version, samples, tuple(signals))


# ---------------------------------------------------------------- the condition


# The phases in which a stable model serves live traffic, and so is watched: after promotion,
# but also during a rollout (the stable still answers most requests, and its own track's
# metrics are measured), during a shadow phase (the stable answers every client) and after a
# rollback (the stable answers all of them again).
WATCHED_PHASES = frozenset({Phase.READY, Phase.PROGRESSING, Phase.SHADOW, Phase.PAUSED, Phase.ROLLED_BACK})


def monitoring_due(fm: FraudModel, last: tuple[str, datetime] | None, now: datetime) -> bool:
    """Whether the stable model is due a measurement: serving, watched, and `interval` since its last one."""
    spec = fm.spec.monitoring
    version = fm.status.stable.version
    if not spec.enabled or fm.status.phase not in WATCHED_PHASES or not version:
        return False
    if last is None or last[0] != version:
        return True
    return now - last[1] >= timedelta(seconds=parse_duration(spec.interval))


def _within(spec: MonitoringSpec, version: str) -> str:
    bounds = [f"score PSI <= {spec.max_psi:g}", f"feature PSI <= {spec.max_feature_psi:g}"]
    if spec.flag_rate.enabled:
        bounds.append(f"flag-rate ratio in [{spec.flag_rate.min_ratio:g}, {spec.flag_rate.max_ratio:g}]")
    return f"stable {version} matches its training reference over {spec.window} ({', '.join(bounds)})"


def drifting(
    spec: MonitoringSpec, version: str | None, report: DriftReport | None, previous: Condition | None
) -> tuple[str, Status, str, str] | None:
    """The `Drifting` condition as `(type, status, reason, message)`, or None when not watched. Pure.

    `report` is this reconcile's measurement (None: none was due); `previous` the condition as
    status holds it for this same stable version (None after a promotion). Messages carry
    measured values only while drifting, so a model within bounds is never written again."""
    if not spec.enabled or not version:
        return None
    kept = (CONDITION, previous.status, previous.reason, previous.message) if previous is not None else None
    if report is None:
        return kept or (CONDITION, "Unknown", NOT_MEASURED, f"stable {version} not measured yet")
    verdict = report.verdict
    if verdict == Verdict.FAIL:
        failing = [s for s in report.signals if s.verdict == Verdict.FAIL]
        reason = next(REASONS[kind] for kind in REASONS if any(s.kind == kind for s in failing))
        detail = "; ".join(s.message for s in failing)
        return CONDITION, "True", reason, f"stable {version} drifts from its training reference: {detail}"
    if verdict == Verdict.PASS:
        return CONDITION, "False", WITHIN, _within(spec, version)
    if kept is not None and previous is not None and previous.status in ("True", "False"):
        return kept  # undecided: a drift clears only when measured within bounds
    if report.error:
        return CONDITION, "Unknown", UNAVAILABLE, f"stable {version}: {report.error}"
    if not report.signals:
        return (
            CONDITION,
            "Unknown",
            INSUFFICIENT,
            f"stable {version}: not enough traffic yet to compare with its reference "
            f"(at least {spec.min_samples} scored transactions in {spec.window})",
        )
    score = next(s for s in report.signals if s.kind == "score")
    if score.value is None and ("no reference" in score.message or NOT_A_SHARE in score.message):
        return (
            CONDITION,
            "Unknown",
            NO_REFERENCE,
            f"stable {version}: its pods publish no reference score distribution "
            "(fraud_model_reference_score_bucket): a model saved without reference.npz, or an older bento",
        )
    return (
        CONDITION,
        "Unknown",
        UNDECIDED,
        f"stable {version}: not decided yet (a PSI between its bound and the noise margin, or too few flags; "
        "the measured values are in fraudmodel_operator_drift_value)",
    )


def drift_event(before: Condition | None, after: tuple[str, Status, str, str] | None) -> Event | None:
    """A Warning when drift starts (or changes kind), a Normal event when it clears. Pure."""
    if after is None:
        return None
    _, status, reason, message = after
    was_drifting = before is not None and before.status == "True"
    if status == "True" and (not was_drifting or before is None or before.reason != reason):
        return Event("Warning", reason, message)
    if status == "False" and was_drifting:
        return Event("Normal", "DriftResolved", message)
    return None
