"""Account-sticky canaries (`spec.rollout.stickyBy`), the operator's side.

The split itself happens at the stable pods' edge (the bento's `fraud_detector.sticky_edge`):
the shared Service selects the stable pods only, and their edge forwards the canary's keys to
the canary Service, at the weight the routing config carries (`edge_routing`). What the
operator reads back is what the edge counted: how many transactions it assigned to each
track and how many canary-keyed ones it had to answer itself (fallbacks). From these:

- the **effective share**: transactions the canary really answered over the step, the figure
  `status.lastAnalysis.effectiveShare` and `fraudmodel_operator_canary_effective_share` show
  (the step's weight is the canary's share of the key *buckets*, hence of accounts; a few heavy
  accounts can move the share of *transactions* away from it);
- the **stickyFallback check**: the share of canary-keyed transactions the canary did not
  answer (unreachable, timeout, shed, 5xx), judged like the error rate: an exact interval,
  alpha spent over looks, `minSamples`, against `checks.errorRate.maxDelta`. A canary the
  stable edge cannot reach would otherwise look healthy: its own metrics see nothing.

Pure, except `measure_sticky` (queries).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from fraudmodel_operator.analysis import (
    MetricProvider,
    ProviderError,
    Ranges,
    evidence_ranges,
    overall,
    previous_looks,
    query_all,
    run_analysis,
    selector,
)
from fraudmodel_operator.api import AnalysisSpec, AnalysisStatus, CheckResult, FraudModel, Verdict
from fraudmodel_operator.stats import clopper_pearson, look_alpha

__all__ = [
    "STICKY_CHECK",
    "StickyMeasures",
    "analyse",
    "assess_sticky",
    "judge_sticky",
    "measure_sticky",
    "sticky_queries",
]

STICKY_CHECK = "stickyFallback"
ROUTES = ("canary", "stable", "unkeyed")


@dataclass(frozen=True)
class StickyMeasures:
    """What the stable edge counted. `step_*`: transactions per route in the current step;
    `assigned`/`fallbacks`: canary-keyed transactions and those the stable answered, since the
    canary started."""

    step_canary: float = 0.0
    step_total: float = 0.0
    step_fallbacks: float = 0.0
    assigned: float = 0.0
    fallbacks: float = 0.0
    error: str | None = None

    @property
    def effective_share(self) -> float | None:
        """Share of the step's transactions the canary answered (None before any was counted)."""
        if self.step_total <= 0:
            return None
        return max(0.0, self.step_canary - self.step_fallbacks) / self.step_total


def sticky_queries(fm: FraudModel, ranges: Ranges) -> dict[str, str]:
    """PromQL over the stable pods' edge counters (they carry the stable track's labels)."""
    s = selector(fm, "stable")

    def total(metric: str, rng: int, by: str = "", only: str = "") -> str:
        grouping = f" by ({by})" if by else ""
        return f"sum{grouping} (increase({metric}{{{s}{only}}}[{rng}s]))"

    transactions, fallbacks = "fraud_model_sticky_transactions_total", "fraud_model_sticky_fallbacks_total"
    return {
        "step_routes": total(transactions, ranges.step, by="route"),
        "step_fallbacks": total(fallbacks, ranges.step) + " or vector(0)",
        "assigned": total(transactions, ranges.rollout, only=',route="canary"') + " or vector(0)",
        "fallbacks": total(fallbacks, ranges.rollout) + " or vector(0)",
    }


async def measure_sticky(provider: MetricProvider, fm: FraudModel, ranges: Ranges) -> StickyMeasures:
    try:
        by_name = await query_all(provider, sticky_queries(fm, ranges))
    except ProviderError as exc:
        return StickyMeasures(error=f"metrics unavailable: {exc}")
    routes = {labels.get("route", ""): value for labels, value in by_name["step_routes"]}

    def scalar(name: str) -> float:
        vector = by_name[name]
        return float(vector[0][1]) if vector else 0.0

    return StickyMeasures(
        step_canary=routes.get("canary", 0.0),
        step_total=sum(routes.get(r, 0.0) for r in ROUTES),
        step_fallbacks=scalar("step_fallbacks"),
        assigned=scalar("assigned"),
        fallbacks=scalar("fallbacks"),
    )


def assess_sticky(spec: AnalysisSpec, measures: StickyMeasures, weight: int, looks: int) -> CheckResult:
    """The stickyFallback check on the (looks + 1)-th look. Pure."""
    max_share = spec.checks.error_rate.max_delta
    threshold = f"fallbacks <= {max_share:g}"
    n = measures.assigned
    samples = int(n)
    share = measures.effective_share
    shown = f"{share:.1%}" if share is not None else "not measured yet"
    context = f"the canary answered {shown} of the step's transactions (weight {weight}% of accounts)"
    if measures.error:
        return CheckResult(
            name=STICKY_CHECK, verdict=Verdict.INCONCLUSIVE, threshold=threshold, message=measures.error, looks=looks
        )
    if n < spec.min_samples:
        return CheckResult(
            name=STICKY_CHECK,
            verdict=Verdict.INCONCLUSIVE,
            threshold=threshold,
            samples=samples,
            looks=looks,
            message=f"too few canary-keyed transactions at the stable edge: {samples} (minSamples {spec.min_samples}); "
            f"{context}",
        )
    k = looks + 1
    failed = min(max(measures.fallbacks, 0.0), n)
    lower, upper = clopper_pearson(failed, n, look_alpha(spec.alpha, k))
    if upper <= max_share:
        verdict = Verdict.PASS
    elif lower > max_share:
        verdict = Verdict.FAIL
    else:
        verdict = Verdict.INCONCLUSIVE
    return CheckResult(
        name=STICKY_CHECK,
        verdict=verdict,
        value=failed / n,
        threshold=threshold,
        samples=samples,
        looks=k,
        message=f"{int(failed)} of {samples} canary-keyed transactions answered by the stable instead "
        f"({failed / n:.2%}, interval {lower:.2%}-{upper:.2%}, look {k}); {context}",
    )


def judge_sticky(fm: FraudModel, analysis: AnalysisStatus, measures: StickyMeasures) -> AnalysisStatus:
    """The analysis with the stickyFallback check and the effective share added. Pure."""
    looks = previous_looks(fm).get(STICKY_CHECK, 0)
    check = assess_sticky(fm.spec.rollout.analysis, measures, analysis.weight, looks)
    checks = [*analysis.checks, check]
    share = measures.effective_share
    effective = None if share is None else min(share, 1.0)
    return analysis.model_copy(update={"checks": checks, "verdict": overall(checks), "effective_share": effective})


async def analyse(provider: MetricProvider, fm: FraudModel, now: datetime) -> AnalysisStatus:
    """The canary analysis (`run_analysis`), with the sticky split's check and share under stickyBy."""
    result = await run_analysis(provider, fm, now)
    if fm.spec.rollout.sticky_by is None:
        return result
    return judge_sticky(fm, result, await measure_sticky(provider, fm, evidence_ranges(fm, now)))
