"""Paired analysis of a shadow phase: the two models' decisions on the *same* transactions.

The shadow track's edge records, for every mirrored transaction, the stable's decision (carried in
the mirrored request) beside its own: `fraud_model_paired_decisions_total{stable_decision,
shadow_decision}`, the amounts in `fraud_model_paired_amount_total`, and the score differences in
`fraud_model_paired_score_delta`. `paired_queries()` says what to read, `judge_shadow()` judges it
(pure), `run_shadow_analysis()` is the I/O.

The gates follow the canary analysis's rules (analysis.py): evidence accumulates from the shadow's
start (capped at `window`), a gate passes only when its whole interval is inside its bounds and
fails only when wholly outside, nothing is judged below `minPairedSamples` pairs, and the k-th look
of a gate spends alpha / (k (k + 1)). A look counts once the pairs reach the floor (it depends on
the number of pairs only, never on how they split, so the spending stays valid).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from fraudmodel_operator.analysis import (
    MIN_RANGE_SECONDS,
    MetricProvider,
    ProviderError,
    Vector,
    overall,
    query_all,
    selector,
)
from fraudmodel_operator.api import AnalysisStatus, CheckResult, FraudModel, ShadowGates, Verdict, parse_duration
from fraudmodel_operator.stats import flip_interval, look_alpha, mcnemar_exact_p, paired_ratio_interval

SHADOW_TRACK = "shadow"
FLIP_RATE = "flipRate"
PAIRED_FLAG_RATE = "pairedFlagRate"
# (stable decision, shadow decision) -> cell of the agreement table
CELLS = {("flag", "flag"): "both", ("flag", "allow"): "only_stable", ("allow", "flag"): "only_shadow"}


@dataclass(frozen=True)
class PairedMeasures:
    """The agreement table over the evidence range (counts and amounts), and the mean |score delta|."""

    both: float = 0.0
    only_stable: float = 0.0
    only_shadow: float = 0.0
    neither: float = 0.0
    amount_flipped: float = 0.0
    amount_total: float = 0.0
    mean_abs_delta: float | None = None
    error: str | None = None

    @property
    def pairs(self) -> float:
        return self.both + self.only_stable + self.only_shadow + self.neither

    @property
    def flips(self) -> float:
        return self.only_stable + self.only_shadow


def shadow_range(fm: FraudModel, now: datetime) -> int:
    """Seconds of evidence: since the shadow started, at most `window`."""
    cap = max(int(parse_duration(fm.spec.rollout.analysis.window)), MIN_RANGE_SECONDS)
    shadow = fm.status.shadow
    started = shadow.started_at if shadow else None
    seconds = math.ceil((now - started).total_seconds()) if started else cap
    return min(max(seconds, MIN_RANGE_SECONDS), cap)


def paired_queries(fm: FraudModel, seconds: int) -> dict[str, str]:
    shadow = fm.status.shadow
    version = shadow.version if shadow and shadow.version else fm.spec.model.version
    s = f'{selector(fm, SHADOW_TRACK)},model_version="{version}"'
    by = "sum by (stable_decision, shadow_decision)"
    return {
        "decisions": f"{by} (increase(fraud_model_paired_decisions_total{{{s}}}[{seconds}s]))",
        "amounts": f"{by} (increase(fraud_model_paired_amount_total{{{s}}}[{seconds}s]))",
        "delta_sum": f"sum(increase(fraud_model_paired_abs_score_delta_sum{{{s}}}[{seconds}s]))",
        "delta_count": f"sum(increase(fraud_model_paired_abs_score_delta_count{{{s}}}[{seconds}s]))",
    }


def _table(vector: Vector) -> dict[str, float]:
    cells = {"both": 0.0, "only_stable": 0.0, "only_shadow": 0.0, "neither": 0.0}
    for labels, value in vector:
        key = (labels.get("stable_decision", ""), labels.get("shadow_decision", ""))
        cell = CELLS.get(key, "neither" if key == ("allow", "allow") else "")
        if cell and math.isfinite(value):
            cells[cell] += max(value, 0.0)
    return cells


def measures_from(decisions: Vector, amounts: Vector, delta_sum: Vector, delta_count: Vector) -> PairedMeasures:
    counts, money = _table(decisions), _table(amounts)
    total = delta_count[0][1] if delta_count else 0.0
    mean = delta_sum[0][1] / total if delta_sum and total > 0 else None
    return PairedMeasures(
        both=counts["both"],
        only_stable=counts["only_stable"],
        only_shadow=counts["only_shadow"],
        neither=counts["neither"],
        amount_flipped=money["only_stable"] + money["only_shadow"],
        amount_total=sum(money.values()),
        mean_abs_delta=mean,
    )


def interval_verdict(lower: float, upper: float, low: float, high: float) -> Verdict:
    """Pass when the interval lies inside [low, high], Fail when wholly outside, else Inconclusive."""
    if low <= lower and upper <= high:
        return Verdict.PASS
    if upper < low or lower > high:
        return Verdict.FAIL
    return Verdict.INCONCLUSIVE


def _inconclusive(name: str, threshold: str, why: str, samples: int, looks: int) -> CheckResult:
    return CheckResult(
        name=name, verdict=Verdict.INCONCLUSIVE, threshold=threshold, message=why, samples=samples, looks=looks
    )


def _table_text(m: PairedMeasures) -> str:
    return (
        f"both flag {int(m.both)}, only stable {int(m.only_stable)}, only shadow {int(m.only_shadow)}, "
        f"neither {int(m.neither)}"
    )


def assess_paired(
    gates: ShadowGates, m: PairedMeasures, min_pairs: int, alpha: float, looks: dict[str, int]
) -> list[CheckResult]:
    """The paired gates on one agreement table. Pure."""
    pairs = int(m.pairs)
    results: list[CheckResult] = []
    flip, ratio = gates.flip_rate, gates.flag_rate_ratio
    enabled = [(FLIP_RATE, flip.enabled, f"<= {flip.max_rate:g}")]
    enabled.append((PAIRED_FLAG_RATE, ratio.enabled, f"within [{ratio.min_ratio:g}, {ratio.max_ratio:g}]"))
    for name, on, threshold in enabled:
        if not on:
            continue
        seen = looks.get(name, 0)
        if m.error:
            results.append(_inconclusive(name, threshold, m.error, pairs, seen))
        elif pairs < min_pairs:
            results.append(_inconclusive(name, threshold, f"{pairs} paired samples of {min_pairs}", pairs, seen))
        elif name == FLIP_RATE:
            results.append(_flip_rate(m, flip.max_rate, threshold, alpha, seen + 1))
        else:
            results.append(_paired_flag_rate(m, ratio.min_ratio, ratio.max_ratio, threshold, alpha, seen + 1))
    return results


def _flip_rate(m: PairedMeasures, max_rate: float, threshold: str, alpha: float, look: int) -> CheckResult:
    lower, upper = flip_interval(m.flips, m.pairs, look_alpha(alpha, look))
    rate = m.flips / m.pairs
    verdict = interval_verdict(lower, upper, 0.0, max_rate)
    money = ""
    if m.amount_total > 0:
        share = m.amount_flipped / m.amount_total
        money = f"; {share:.2%} of the amount ({m.amount_flipped:,.0f} of {m.amount_total:,.0f})"
    delta = "" if m.mean_abs_delta is None else f"; mean |score delta| {m.mean_abs_delta:.4f}"
    return CheckResult(
        name=FLIP_RATE,
        verdict=verdict,
        value=rate,
        threshold=threshold,
        samples=int(m.pairs),
        looks=look,
        message=f"{int(m.flips)} of {int(m.pairs)} decisions flip ({rate:.3%}, interval {lower:.3%}-{upper:.3%}, "
        f"look {look}){money}{delta}; {_table_text(m)}",
    )


def _paired_flag_rate(
    m: PairedMeasures, low: float, high: float, threshold: str, alpha: float, look: int
) -> CheckResult:
    if m.both + m.only_stable + m.only_shadow <= 0:
        return _inconclusive(
            PAIRED_FLAG_RATE, threshold, "neither model flagged a paired transaction", int(m.pairs), look - 1
        )
    ratio, lower, upper = paired_ratio_interval(m.both, m.only_stable, m.only_shadow, look_alpha(alpha, look))
    verdict = interval_verdict(lower, upper, low, high)
    shown = "inf" if ratio is None else f"{ratio:.3f}"
    high_text = "inf" if math.isinf(upper) else f"{upper:.3f}"
    p = mcnemar_exact_p(m.only_stable, m.only_shadow)
    return CheckResult(
        name=PAIRED_FLAG_RATE,
        verdict=verdict,
        value=None if ratio is None else ratio,
        baseline=(m.both + m.only_stable) / m.pairs,
        threshold=threshold,
        samples=int(m.pairs),
        looks=look,
        message=f"shadow/stable flags on the same transactions {shown} (interval {lower:.3f}-{high_text}, "
        f"look {look}; McNemar p={p:.3g} on {int(m.flips)} discordant pairs); {_table_text(m)}",
    )


def previous_paired_looks(fm: FraudModel) -> dict[str, int]:
    """Looks each gate has spent on the running shadow revision."""
    last, shadow = fm.status.last_analysis, fm.status.shadow
    if last is None or shadow is None or last.revision is None or last.revision != shadow.revision:
        return {}
    return {c.name: c.looks for c in last.checks if c.looks}


def judge_shadow(fm: FraudModel, measures: PairedMeasures, now: datetime) -> AnalysisStatus:
    """The paired analysis of a running shadow phase. Pure."""
    spec, shadow = fm.spec.rollout.shadow, fm.status.shadow
    gates = spec.gates if spec is not None else ShadowGates()
    min_pairs = spec.min_paired_samples if spec is not None else 1
    results = assess_paired(gates, measures, min_pairs, fm.spec.rollout.analysis.alpha, previous_paired_looks(fm))
    return AnalysisStatus(
        time=now,
        step=0,
        weight=0,
        revision=shadow.revision if shadow else None,
        verdict=overall(results),
        checks=results,
    )


async def measure_paired(provider: MetricProvider, fm: FraudModel, seconds: int) -> PairedMeasures:
    try:
        by = await query_all(provider, paired_queries(fm, seconds))
    except ProviderError as exc:
        return PairedMeasures(error=f"metrics unavailable: {exc}")
    return measures_from(by["decisions"], by["amounts"], by["delta_sum"], by["delta_count"])


async def run_shadow_analysis(provider: MetricProvider, fm: FraudModel, now: datetime) -> AnalysisStatus:
    """Read the shadow's agreement table since it started and judge the paired gates."""
    return judge_shadow(fm, await measure_paired(provider, fm, shadow_range(fm, now)), now)
