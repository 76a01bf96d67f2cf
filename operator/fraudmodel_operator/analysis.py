"""Canary analysis: PromQL for each check, and the pure assessment of what came back.

`queries()` says what to measure, `assess()` judges the measurements (pure), `judge()`
turns them into the analysis written to status (pure: it carries the looks already spent
from the previous analysis of the same revision), and `run_analysis()` glues them to a
`MetricProvider` (I/O). Missing data is never a pass: an empty result or an unreachable
Prometheus makes a check Inconclusive.

The decision rules (docs/api.md, "Analysis"):

- Evidence accumulates. Every query reads the range since the canary revision started
  (since the step started for latency, which depends on load), capped at `window`, both
  tracks over the same range, each selected by track *and* model version, so a replaced
  canary's series never count for the next one.
- A check passes only when its whole interval lies inside its bounds and fails only when
  the interval lies wholly outside; in between it is Inconclusive (held, not advanced).
- Repeated looks are paid for: the k-th look of a check uses an interval with error
  alpha / (k (k + 1)) on each side, which sums to `alpha` over any number of looks, so a
  canary exactly at a bound passes (or a healthy one fails) with probability <= alpha
  per check over the whole rollout. A look counts only once the check could decide.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from fraudmodel_operator.api import (
    AnalysisSpec,
    AnalysisStatus,
    CheckResult,
    FraudModel,
    LatencyCheck,
    Verdict,
    parse_duration,
)
from fraudmodel_operator.stats import chi2_quantile, clopper_pearson, look_alpha, newcombe, rate_ratio_interval, z_of

Vector = list[tuple[dict[str, str], float]]
Histogram = tuple[tuple[float, float], ...]  # cumulative (le, count), ascending le, +Inf last
PREDICT_ENDPOINTS = "/predict.*"
PSI_EPSILON = 1e-4
PSI_MIN_EXPECTED = 5.0
MIN_RANGE_SECONDS = 10  # shortest query range: a few scrapes


class ProviderError(Exception):
    """The metrics source could not answer (unreachable, timeout, bad query)."""


class MetricProvider(Protocol):
    """A source of metrics (Prometheus first): an instant vector per query, and a health check."""

    async def query(self, promql: str) -> Vector: ...
    async def is_online(self) -> bool: ...


# ---------------------------------------------------------------- queries


@dataclass(frozen=True)
class Ranges:
    """Seconds of evidence each query reads: since the canary revision started, and since its step started."""

    rollout: int
    step: int


def evidence_ranges(fm: FraudModel, now: datetime) -> Ranges:
    """The ranges of this analysis: from the canary's start (its step's start), at most `window`."""
    cap = max(int(parse_duration(fm.spec.rollout.analysis.window)), MIN_RANGE_SECONDS)
    canary = fm.status.canary
    started = canary.started_at if canary else None
    step_started = (canary.step_started_at or started) if canary else None

    def since(then: datetime | None) -> int:
        seconds = math.ceil((now - then).total_seconds()) if then else cap
        return min(max(seconds, MIN_RANGE_SECONDS), cap)

    return Ranges(rollout=since(started), step=since(step_started))


def track_version(fm: FraudModel, track: str) -> str | None:
    status = fm.status
    if track == "canary":
        return status.canary.version if status.canary else fm.spec.model.version
    return status.stable.version


def selector(fm: FraudModel, track: str) -> str:
    labels = fm.spec.rollout.analysis.metric_labels
    return f'{labels.model}="{fm.metadata.name}",{labels.namespace}="{fm.metadata.namespace}",{labels.track}="{track}"'


def queries(fm: FraudModel, track: str, ranges: Ranges | None = None) -> dict[str, str]:
    """PromQL of every built-in measure of one track over the evidence ranges.

    The bento labels its own series with `model_version`; BentoML's request series carry no
    version, so they are kept only for instances that exported this version's predictions
    during the range (`and on(instance)`): the pods of a replaced canary do not count.
    """
    r = ranges or Ranges(rollout=60, step=60)
    s = selector(fm, track)
    version = track_version(fm, track)
    v = f'{s},model_version="{version}"' if version else s
    api = f'{s},endpoint=~"{PREDICT_ENDPOINTS}"'  # not the probes' /readyz, /livez, nor /metrics

    def bento(selector_: str, rng: int, by_le: bool = False) -> str:
        inner = f"increase({selector_}[{rng}s])"
        if version:
            inner = f"({inner} and on(instance) max_over_time(fraud_model_predictions_total{{{v}}}[{rng}s]))"
        return f"sum by (le) ({inner})" if by_le else f"sum({inner})"

    rollout, step = r.rollout, r.step
    latency = bento(f'bentoml_service_request_duration_seconds_bucket{{{api},http_response_code=~"2.."}}', step, True)
    if fm.spec.rollout.sticky_by is not None and track == "stable":
        # stickyBy: the stable's requests include those its edge forwarded to the canary (the hop and the
        # canary's time); its edge times the requests it answered alone, on BentoML's buckets.
        latency = f"sum by (le) (increase(fraud_model_sticky_local_duration_seconds_bucket{{{v}}}[{step}s]))"
    return {
        "requests": bento(f"bentoml_service_request_total{{{api}}}", rollout),
        # 503 is load shedding (the service tells clients to retry), judged by shedRate, not a model error.
        "errors": bento(
            f'bentoml_service_request_total{{{api},http_response_code=~"5..",http_response_code!="503"}}', rollout
        )
        + " or vector(0)",
        "shed": f"sum(increase(fraud_model_shed_requests_total{{{v}}}[{rollout}s])) or vector(0)",
        # Answers only: shed requests are answered at once and would pull the quantile down.
        "latency": latency,
        "predictions": f"sum(increase(fraud_model_predictions_total{{{v}}}[{rollout}s]))",
        "flagged": f'sum(increase(fraud_model_decisions_total{{{v},decision="flag"}}[{rollout}s])) or vector(0)',
        "rejected": f"sum(increase(fraud_model_rejected_inputs_total{{{v}}}[{rollout}s])) or vector(0)",
        "scores": f"sum by (le) (increase(fraud_model_score_bucket{{{v}}}[{rollout}s]))",
    }


def custom_query(fm: FraudModel, template: str, ranges: Ranges | None = None) -> str:
    values = {
        "track": "canary",
        "name": fm.metadata.name,
        "namespace": fm.metadata.namespace,
        "version": track_version(fm, "canary") or "",
        "window": f"{(ranges or Ranges(60, 60)).rollout}s",
    }
    for name, value in values.items():
        template = template.replace("{{" + name + "}}", value)
    return template


# ---------------------------------------------------------------- measurements


@dataclass(frozen=True)
class TrackMeasures:
    """What one track did over the evidence range; None where the query returned nothing."""

    requests: float | None = None
    errors: float | None = None
    shed: float | None = None
    latency: Histogram = ()  # answered requests' durations, cumulative (le, count)
    predictions: float | None = None
    flagged: float | None = None
    rejected: float | None = None
    scores: Histogram = ()
    error: str | None = None  # why the track could not be measured


@dataclass(frozen=True)
class Context:
    """What the rules need beyond the measures: the canary's decision threshold (None when the
    FraudModel leaves it to the model's metadata, which the operator cannot see: no near-miss
    test then) and the looks each check has spent so far on this revision (alpha spending)."""

    threshold: float | None = 0.5
    looks: Mapping[str, int] = field(default_factory=dict)


def _bins(cumulative: Histogram) -> dict[float, float]:
    out: dict[float, float] = {}
    previous = 0.0
    for le, count in sorted(cumulative):
        out[le] = max(count - previous, 0.0)
        previous = max(count, previous)
    return out


def shared_bins(canary: Histogram, stable: Histogram) -> list[tuple[float, float, float]]:
    """`(le, canary, stable)` counts per bin over the bucket bounds both tracks export: a bound only
    one side has is merged into the next shared one, so two layouts of one distribution compare equal."""
    c_cum, s_cum = dict(canary), dict(stable)
    shared = sorted(set(c_cum) & set(s_cum))
    out: list[tuple[float, float, float]] = []
    c_prev = s_prev = 0.0
    for le in shared:
        c_now, s_now = max(c_cum[le], c_prev), max(s_cum[le], s_prev)
        out.append((le, c_now - c_prev, s_now - s_prev))
        c_prev, s_prev = c_now, s_now
    return out


def psi(canary: Histogram, stable: Histogram) -> tuple[float, float, int] | None:
    """PSI of two cumulative histograms over their shared bucket bounds: (bias-corrected, raw, bins
    used), or None when too few requests fall outside the busiest bins to compare distributions.
    (`psi_noise()` is how far above zero sampling noise alone can push the corrected value.)

    Adjacent bins are merged until each holds at least PSI_MIN_EXPECTED requests of the
    smaller track (expected from both tracks pooled): a bin holding one canary request
    against none of the stable's would alone add a PSI of ~0.02. On what is left, sampling
    noise still gives a PSI near (bins - 1) x (1/n_canary + 1/n_stable); that expected noise
    is subtracted, so a low-traffic step is not failed by chance.
    """
    bins = shared_bins(canary, stable)
    n_c, n_s = sum(c for _, c, _ in bins), sum(s for _, _, s in bins)
    if n_c <= 0 or n_s <= 0:
        return None
    merged: list[tuple[float, float]] = []  # (canary count, stable count) per merged bin
    c_acc = s_acc = 0.0
    for _, c_count, s_count in bins:
        c_acc += c_count
        s_acc += s_count
        if (c_acc + s_acc) / (n_c + n_s) * min(n_c, n_s) >= PSI_MIN_EXPECTED:
            merged.append((c_acc, s_acc))
            c_acc = s_acc = 0.0
    if len(merged) < 2:
        return None
    if c_acc or s_acc:  # the thin end joins the last full bin
        last = merged.pop()
        merged.append((last[0] + c_acc, last[1] + s_acc))
    raw = 0.0
    for c_count, s_count in merged:
        p = max(c_count / n_c, PSI_EPSILON)
        q = max(s_count / n_s, PSI_EPSILON)
        raw += (p - q) * math.log(p / q)
    noise = max(len(merged) - 1, 0) * (1 / n_c + 1 / n_s)
    return max(raw - noise, 0.0), raw, len(merged)


def psi_noise(canary: Histogram, stable: Histogram, bins: int, alpha: float) -> float:
    """The excess over its mean that sampling noise gives the corrected PSI with probability alpha:
    for two samples of one distribution, PSI x n_c n_s / (n_c + n_s) is about chi-squared with
    bins - 1 degrees of freedom, so a PSI above maxPsi by less than this is not evidence."""
    n_c, n_s = canary[-1][1], stable[-1][1]
    if n_c <= 0 or n_s <= 0:
        return math.inf
    df = max(bins - 1, 1)
    return max(chi2_quantile(1 - alpha, df) - df, 0.0) * (1 / n_c + 1 / n_s)


def exceedance(histogram: Histogram, edge: float) -> tuple[float, float]:
    """`(above, total)`: requests whose score exceeds `edge` (a bucket bound), and all requests."""
    cum = dict(histogram)
    total = max((c for le, c in histogram if math.isinf(le)), default=max(cum.values(), default=0.0))
    return max(total - cum.get(edge, 0.0), 0.0), total


def quantile(histogram: Histogram, q: float) -> tuple[float, float] | None:
    """`(value, count)` of quantile `q` from cumulative buckets, interpolated as Prometheus does;
    value is the largest finite bound (a lower bound) when the quantile lies in the +Inf bucket."""
    if not histogram:
        return None
    total = histogram[-1][1]
    if total <= 0:
        return None
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in histogram:
        if count >= rank:
            if math.isinf(le):
                return prev_le, total
            if count == prev_count:
                return le, total
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count), total
        prev_le, prev_count = le, count
    return prev_le, total


# ---------------------------------------------------------------- the rules


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _inconclusive(name: str, threshold: str, why: str, samples: int | None = None, looks: int = 0) -> CheckResult:
    return CheckResult(
        name=name, verdict=Verdict.INCONCLUSIVE, threshold=threshold, message=why, samples=samples, looks=looks
    )


def _ratio_could_decide(x: float, n_c: float, n_s: float, low: float, high: float, alpha: float) -> bool:
    """Whether an interval on the rate ratio could be conclusive with `x` events in all, at these
    exposures: Pass if the events split as the middle of the bounds expects, or Fail if the canary
    had none of them (a canary that stopped flagging). It depends on the totals only, never on how
    the events split, so counting looks by it keeps alpha spending valid."""
    if x <= 0:
        return False
    scale = n_s / n_c
    middle = math.sqrt(low * high) if low > 0 else high / 2
    expected = round(x * middle * n_c / (middle * n_c + n_s))
    lo, hi = clopper_pearson(expected, round(x), alpha)
    if low <= lo / (1 - lo) * scale and hi < 1 and hi / (1 - hi) * scale <= high:
        return True
    upper_if_none = 1 - alpha ** (1 / round(x)) if round(x) >= 1 else 1.0  # Clopper-Pearson with 0 events
    return upper_if_none / (1 - upper_if_none) * scale < low


@dataclass(frozen=True)
class RatioOutcome:
    verdict: Verdict
    ratio: float | None
    lower: float
    upper: float
    looks: int


def ratio_test(
    k_c: float, n_c: float, k_s: float, n_s: float, low: float, high: float, alpha: float, looks: int
) -> RatioOutcome | None:
    """The canary/stable rate ratio against [low, high], on the (looks + 1)-th look if it could decide
    now (else None: not a look). Pass when the interval is inside, Fail when wholly outside."""
    k = looks + 1
    a = look_alpha(alpha, k)
    if not _ratio_could_decide(k_c + k_s, n_c, n_s, low, high, a):
        return None
    ratio, lower, upper = rate_ratio_interval(k_c, n_c, k_s, n_s, a)
    if low <= lower and upper <= high:
        verdict = Verdict.PASS
    elif upper < low or lower > high:
        verdict = Verdict.FAIL
    else:
        verdict = Verdict.INCONCLUSIVE
    return RatioOutcome(verdict, ratio, lower, upper, k)


def _interval_text(lower: float, upper: float, digits: str = ".2f") -> str:
    high = "inf" if math.isinf(upper) else format(upper, digits)
    return f"{format(lower, digits)}-{high}"


def assess(
    spec: AnalysisSpec,
    canary: TrackMeasures,
    stable: TrackMeasures,
    custom: Mapping[str, float | str | None] | None = None,
    context: Context | None = None,
) -> list[CheckResult]:
    """Judge every enabled check. Pure. Too few samples or missing data is Inconclusive, never Pass."""
    ctx = context or Context()
    checks = spec.checks
    alpha = spec.alpha
    results: list[CheckResult] = []
    samples = int(canary.requests) if canary.requests is not None else None
    problem = canary.error or stable.error
    few = min(canary.requests or 0, stable.requests or 0) < spec.min_samples
    why_few = (
        f"too few requests: canary {int(canary.requests or 0)}, stable {int(stable.requests or 0)} "
        f"(minSamples {spec.min_samples})"
    )

    def looks_of(name: str) -> int:
        return int(ctx.looks.get(name, 0))

    def guard(name: str, threshold: str) -> CheckResult | None:
        if problem:
            return _inconclusive(name, threshold, problem, samples, looks_of(name))
        if few:
            return _inconclusive(name, threshold, why_few, samples, looks_of(name))
        return None

    def share_check(name: str, c_part: float | None, s_part: float | None, max_delta: float, what: str) -> CheckResult:
        """A share of requests (errors, rejections, shed) that may exceed the stable's by `max_delta`:
        Pass when the interval's upper end of (canary share - stable share) is <= max_delta, Fail when
        its lower end is above it."""
        threshold = f"<= stable + {max_delta:g}"
        if (result := guard(name, threshold)) is not None:
            return result
        n_c, n_s = canary.requests or 0.0, stable.requests or 0.0
        if c_part is None or s_part is None or n_c <= 0 or n_s <= 0:
            return _inconclusive(name, threshold, "no request counts", samples, looks_of(name))
        k = looks_of(name) + 1
        z = z_of(look_alpha(alpha, k))
        c_part, s_part = min(max(c_part, 0.0), n_c), min(max(s_part, 0.0), n_s)
        delta, lower, upper = newcombe(c_part, n_c, s_part, n_s, z)
        c, s = c_part / n_c, s_part / n_s
        if upper <= max_delta:
            verdict = Verdict.PASS
        elif lower > max_delta:
            verdict = Verdict.FAIL
        else:
            verdict = Verdict.INCONCLUSIVE
        message = (
            f"canary {what} {c:.2%}, stable {s:.2%}: difference {delta:+.2%} "
            f"(interval {lower:+.2%} to {upper:+.2%}, look {k})"
        )
        return CheckResult(
            name=name,
            verdict=verdict,
            value=c,
            baseline=s,
            threshold=threshold,
            samples=samples,
            looks=k,
            message=message,
        )

    if checks.error_rate.enabled:
        results.append(share_check("errorRate", canary.errors, stable.errors, checks.error_rate.max_delta, "5xx rate"))
    if checks.shed_rate.enabled:
        results.append(share_check("shedRate", canary.shed, stable.shed, checks.shed_rate.max_delta, "shed rate"))

    if checks.latency.enabled:
        result = guard("latency", f"p{round(checks.latency.quantile * 100, 2):g} within limits")
        results.append(result or _latency(checks.latency, canary, stable, samples, alpha, looks_of("latency")))

    if checks.score_drift.enabled:
        results.append(_drift(spec, canary, stable, ctx, samples, guard))

    if checks.flag_rate.enabled:
        fr = checks.flag_rate
        threshold = f"in [{fr.min_ratio}, {fr.max_ratio}]"
        result = guard("flagRate", threshold)
        if result is None:
            result = _flag_rate(
                canary, stable, fr.min_ratio, fr.max_ratio, threshold, samples, alpha, looks_of("flagRate")
            )
        results.append(result)

    if checks.input_rejection.enabled:
        delta = checks.input_rejection.max_delta
        results.append(share_check("inputRejection", canary.rejected, stable.rejected, delta, "rejects inputs at"))

    for check in spec.custom:
        bounds = " and ".join(
            b
            for b in (
                f">= {check.min:g}" if check.min is not None else "",
                f"<= {check.max:g}" if check.max is not None else "",
            )
            if b
        )
        measured = (custom or {}).get(check.name)
        if (result := guard(check.name, bounds)) is not None:
            results.append(result)
        elif isinstance(measured, str):
            results.append(_inconclusive(check.name, bounds, measured, samples))
        elif measured is None or math.isnan(measured):
            results.append(_inconclusive(check.name, bounds, "query returned no data", samples))
        else:
            ok = (check.min is None or measured >= check.min) and (check.max is None or measured <= check.max)
            if not ok:
                verdict = Verdict.FAIL
            elif math.isfinite(measured):
                verdict = Verdict.PASS
            else:  # +Inf inside a one-sided bound: never a pass (e.g. a quantile beyond the last bucket)
                verdict = Verdict.INCONCLUSIVE
            results.append(
                CheckResult(
                    name=check.name,
                    verdict=verdict,
                    value=_finite(measured),
                    threshold=bounds,
                    samples=samples,
                    message="" if math.isfinite(measured) else f"query returned {measured}",
                )
            )
    return results


def slow_edge(bounds: list[float], limit: float) -> float:
    """The bucket bound latency exceedances are counted at: the smallest finite bound at or above
    `limit` (a request is called slow only when it is surely beyond the limit), else the largest."""
    finite = sorted(b for b in bounds if math.isfinite(b))
    return next((b for b in finite if b >= limit - 1e-12), finite[-1])


def _latency(
    lat: LatencyCheck, canary: TrackMeasures, stable: TrackMeasures, samples: int | None, alpha: float, looks: int
) -> CheckResult:
    """Latency as a test on counts, not a comparison of two noisy quantiles.

    The limit is the stable's q-quantile over the step, times maxRatio or plus toleranceSeconds
    (whichever is larger), counted at the first bucket bound at or above it. The canary's
    q-quantile is beyond that bound exactly when more than 1 - q of its answers are; the stable
    has at most 1 - q beyond it by construction. So the check compares the share of answers
    beyond the bound, canary minus stable (Newcombe's interval, alpha spent over looks like the
    other share checks): Fail when the excess is surely above 1 - q, Pass when it is surely
    below, Inconclusive in between. Load that slows both tracks moves both shares, not the
    difference. maxSeconds adds a one-sample test: the canary's share beyond that bound against
    1 - q (exact interval), each test then spending half the look's alpha.
    """
    q = lat.quantile
    tail = 1 - q
    q_name = f"p{round(q * 100, 2):g}"
    stable_q = quantile(stable.latency, q)
    if not canary.latency or not stable.latency or stable_q is None or canary.latency[-1][1] <= 0:
        why = "no answered requests in the latency histogram"
        return _inconclusive("latency", f"{q_name} within limits", why, samples, looks)
    s = stable_q[0]
    limit = max(s * lat.max_ratio, s + lat.tolerance_seconds)
    threshold = f"{q_name} <= {limit:.4g}s" + (f" and <= {lat.max_seconds:g}s" if lat.max_seconds else "")
    k = looks + 1
    a = look_alpha(alpha, k) / (2 if lat.max_seconds is not None else 1)
    bounds = [le for le, _, _ in shared_bins(canary.latency, stable.latency)]
    if not any(math.isfinite(b) for b in bounds):
        why = "the tracks' latency histograms share no bucket bound"
        return _inconclusive("latency", threshold, why, samples, looks)
    edge = slow_edge(bounds, limit)
    slow_c, n_c = exceedance(canary.latency, edge)
    slow_s, n_s = exceedance(stable.latency, edge)
    excess, lower, upper = newcombe(slow_c, n_c, slow_s, n_s, z_of(a))
    below = " (the last finite bucket bound, below the limit)" if edge < limit - 1e-12 else ""
    verdicts = [Verdict.FAIL if lower > tail else Verdict.PASS if upper <= tail else Verdict.INCONCLUSIVE]
    message = (
        f"answers slower than {edge * 1000:.4g}ms{below} (limit: stable {q_name} {s * 1000:.1f}ms -> "
        f"{limit * 1000:.1f}ms): "
        f"canary {slow_c / n_c:.2%} of {int(n_c)}, stable {slow_s / n_s:.2%} of {int(n_s)}, excess {excess:+.2%} "
        f"(interval {lower:+.2%} to {upper:+.2%}, look {k}; allowed {tail:.2%})"
    )
    if lat.max_seconds is not None:
        ceiling = slow_edge([le for le, _ in canary.latency], lat.max_seconds)
        over, _ = exceedance(canary.latency, ceiling)
        low_share, high_share = clopper_pearson(over, n_c, a)
        verdicts.append(
            Verdict.FAIL if low_share > tail else Verdict.PASS if high_share <= tail else Verdict.INCONCLUSIVE
        )
        message += (
            f"; canary answers slower than {ceiling * 1000:.4g}ms (maxSeconds): {over / n_c:.2%} "
            f"(interval {low_share:.2%}-{high_share:.2%}; allowed {tail:.2%})"
        )
    canary_q = quantile(canary.latency, q)
    return CheckResult(
        name="latency",
        verdict=overall_of(verdicts),
        value=_finite(canary_q[0]) if canary_q else None,
        baseline=_finite(s),
        threshold=threshold,
        samples=samples,
        looks=k,
        message=message,
    )


def _drift(
    spec: AnalysisSpec,
    canary: TrackMeasures,
    stable: TrackMeasures,
    ctx: Context,
    samples: int | None,
    guard: Callable[[str, str], CheckResult | None],
) -> CheckResult:
    """PSI over shared bucket bounds, plus the share of scores above the bound nearest half the
    decision threshold (the near-misses) compared as a rate ratio with the flag-rate bounds:
    a shift that has not yet moved flags is still seen where it will."""
    max_psi = spec.checks.score_drift.max_psi
    fr = spec.checks.flag_rate
    threshold = f"<= {max_psi:g}"
    if (result := guard("scoreDrift", threshold)) is not None:
        return result
    looks = int(ctx.looks.get("scoreDrift", 0))
    if not canary.scores or not stable.scores or canary.scores[-1][1] <= 0 or stable.scores[-1][1] <= 0:
        return _inconclusive("scoreDrift", threshold, "no score histogram", samples, looks)
    shared = [le for le, _, _ in shared_bins(canary.scores, stable.scores) if not math.isinf(le)]
    measured = psi(canary.scores, stable.scores)
    near = [] if ctx.threshold is None else [le for le in shared if le <= ctx.threshold / 2]
    tail: RatioOutcome | None = None
    tail_text = ""
    if near:
        edge = near[-1]
        above_c, n_c = exceedance(canary.scores, edge)
        above_s, n_s = exceedance(stable.scores, edge)
        if n_c > 0 and n_s > 0:
            tail = ratio_test(above_c, n_c, above_s, n_s, fr.min_ratio, fr.max_ratio, spec.alpha, looks)
            if tail is not None:
                ratio = "n/a" if tail.ratio is None else f"{tail.ratio:.2f}"
                tail_text = (
                    f"; scores > {edge:g}: canary {above_c / n_c:.2%}, stable {above_s / n_s:.2%}, "
                    f"ratio {ratio} ({_interval_text(tail.lower, tail.upper)})"
                )
    if measured is None:
        if tail is not None and tail.verdict == Verdict.FAIL:
            return CheckResult(
                name="scoreDrift",
                verdict=Verdict.FAIL,
                threshold=threshold,
                samples=samples,
                looks=tail.looks,
                message=f"too few scores outside the busiest bins for PSI{tail_text}",
            )
        why = f"fewer than {PSI_MIN_EXPECTED:g} requests per track outside the busiest score bins"
        return _inconclusive("scoreDrift", threshold, why, samples, looks)
    value, raw, bins = measured
    look = max(looks + 1, tail.looks if tail is not None else 0)
    margin = psi_noise(canary.scores, stable.scores, bins, look_alpha(spec.alpha, look))
    if value > max_psi + margin or (tail is not None and tail.verdict == Verdict.FAIL):
        verdict = Verdict.FAIL
    elif value <= max_psi and (tail.verdict == Verdict.PASS if tail is not None else not near):
        verdict = Verdict.PASS
    else:
        verdict = Verdict.INCONCLUSIVE
    if tail is None and near:
        tail_text = "; too few scores near the threshold to compare yet"
    return CheckResult(
        name="scoreDrift",
        verdict=verdict,
        value=value,
        threshold=threshold,
        samples=samples,
        looks=look,
        message=f"PSI {value:.3f} over {bins} bins (raw {raw:.3f} before removing sampling noise; "
        f"noise alone reaches +{margin:.3f}){tail_text}",
    )


def _flag_rate(
    canary: TrackMeasures,
    stable: TrackMeasures,
    low: float,
    high: float,
    threshold: str,
    samples: int | None,
    alpha: float,
    looks: int,
) -> CheckResult:
    """Ratio of flag rates with an exact interval (alpha spent over looks): Pass only inside the bounds."""
    n_c, n_s = canary.predictions, stable.predictions
    if not n_c or not n_s or canary.flagged is None or stable.flagged is None:
        return _inconclusive("flagRate", threshold, "no decision counts", samples, looks)
    k_c, k_s = max(canary.flagged, 0.0), max(stable.flagged, 0.0)
    rates = f"canary flags {k_c / n_c:.2%} of {int(n_c)}, stable {k_s / n_s:.2%} of {int(n_s)}"
    outcome = ratio_test(k_c, n_c, k_s, n_s, low, high, alpha, looks)
    if outcome is None:
        return _inconclusive(
            "flagRate", threshold, f"{rates}: too few flags ({int(k_c + k_s)}) to decide yet", samples, looks
        )
    ratio = "n/a" if outcome.ratio is None else f"{outcome.ratio:.2f}"
    detail = f"{rates}: ratio {ratio} (interval {_interval_text(outcome.lower, outcome.upper)}, look {outcome.looks})"
    if outcome.verdict == Verdict.INCONCLUSIVE:
        detail += ": interval not yet inside or outside the bounds"
    return CheckResult(
        name="flagRate",
        verdict=outcome.verdict,
        value=_finite(outcome.ratio),
        baseline=k_s / n_s,
        threshold=threshold,
        samples=samples,
        looks=outcome.looks,
        message=detail,
    )


def overall(results: list[CheckResult]) -> Verdict:
    """Any Fail fails; else any Inconclusive is inconclusive; else Pass (no checks is inconclusive)."""
    return overall_of([r.verdict for r in results])


def overall_of(found: list[Verdict]) -> Verdict:
    """`overall()` of bare verdicts."""
    verdicts = set(found)
    if Verdict.FAIL in verdicts:
        return Verdict.FAIL
    if Verdict.INCONCLUSIVE in verdicts or not verdicts:
        return Verdict.INCONCLUSIVE
    return Verdict.PASS


def previous_looks(fm: FraudModel) -> dict[str, int]:
    """Looks each check has spent on the running canary revision (from the last analysis of it)."""
    last, canary = fm.status.last_analysis, fm.status.canary
    if last is None or canary is None or last.revision is None or last.revision != canary.revision:
        return {}
    return {c.name: c.looks for c in last.checks if c.looks}


def judge(
    fm: FraudModel,
    canary: TrackMeasures,
    stable: TrackMeasures,
    custom: Mapping[str, float | str | None],
    now: datetime,
) -> AnalysisStatus:
    """The analysis of a running canary from its measures. Pure."""
    spec = fm.spec.rollout.analysis
    current = fm.status.canary
    model = current.model if current and current.model else fm.spec.model
    context = Context(threshold=model.threshold, looks=previous_looks(fm))
    results = assess(spec, canary, stable, custom, context)
    return AnalysisStatus(
        time=now,
        step=current.step if current else 0,
        weight=current.weight if current else 0,
        revision=current.revision if current else None,
        verdict=overall(results),
        checks=results,
    )


# ---------------------------------------------------------------- I/O


def scalar(vector: Vector) -> float | None:
    """The value of a one-sample vector, None when it is empty."""
    return vector[0][1] if vector else None


def histogram(vector: Vector) -> Histogram:
    """Cumulative bucket counts `(le, count)` in bound order, from a `by (le)` vector."""
    return tuple(sorted((float(labels["le"]), value) for labels, value in vector if "le" in labels))


async def query_all(provider: MetricProvider, named: Mapping[str, str]) -> dict[str, Vector]:
    """Run named queries concurrently; the answers by name. Raises ProviderError if any fails."""
    results = await asyncio.gather(*(provider.query(q) for q in named.values()))
    return dict(zip(named, results, strict=True))


async def measure(provider: MetricProvider, fm: FraudModel, track: str, ranges: Ranges) -> TrackMeasures:
    try:
        by_name = await query_all(provider, queries(fm, track, ranges))
    except ProviderError as exc:
        return TrackMeasures(error=f"metrics unavailable: {exc}")
    return TrackMeasures(
        requests=scalar(by_name["requests"]),
        errors=scalar(by_name["errors"]),
        shed=scalar(by_name["shed"]),
        latency=histogram(by_name["latency"]),
        predictions=scalar(by_name["predictions"]),
        flagged=scalar(by_name["flagged"]),
        rejected=scalar(by_name["rejected"]),
        scores=histogram(by_name["scores"]),
    )


async def run_analysis(provider: MetricProvider, fm: FraudModel, now: datetime) -> AnalysisStatus:
    """Measure both tracks over the same ranges and judge the canary."""
    spec = fm.spec.rollout.analysis
    ranges = evidence_ranges(fm, now)
    canary, stable = await asyncio.gather(
        measure(provider, fm, "canary", ranges), measure(provider, fm, "stable", ranges)
    )
    custom: dict[str, float | str | None] = {}
    for check in spec.custom:
        try:
            custom[check.name] = scalar(await provider.query(custom_query(fm, check.query, ranges)))
        except ProviderError as exc:
            custom[check.name] = f"metrics unavailable: {exc}"
    return judge(fm, canary, stable, custom, now)
