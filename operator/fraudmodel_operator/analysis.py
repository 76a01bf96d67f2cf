"""Canary analysis: PromQL for each check, and the pure assessment of what came back.

`queries()` says what to measure, `assess()` judges the measurements (pure), and
`run_analysis()` glues them to a `MetricProvider` (I/O). Missing data is never a
pass: an empty result or an unreachable Prometheus makes a check Inconclusive.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from fraudmodel_operator.api import AnalysisSpec, AnalysisStatus, CheckResult, FraudModel, LatencyCheck, Verdict

Vector = list[tuple[dict[str, str], float]]
Z95 = 1.96
PREDICT_ENDPOINTS = "/predict.*"
MIN_TAIL_SAMPLES = 5  # requests beyond a latency quantile, per track, for it to mean anything
PSI_EPSILON = 1e-4
PSI_MIN_EXPECTED = 5.0


class ProviderError(Exception):
    """The metrics source could not answer (unreachable, timeout, bad query)."""


class MetricProvider(Protocol):
    """A source of metrics (Prometheus first): an instant vector per query, and a health check."""

    async def query(self, promql: str) -> Vector: ...
    async def is_online(self) -> bool: ...


# ---------------------------------------------------------------- queries


def selector(fm: FraudModel, track: str) -> str:
    labels = fm.spec.rollout.analysis.metric_labels
    return f'{labels.model}="{fm.metadata.name}",{labels.namespace}="{fm.metadata.namespace}",{labels.track}="{track}"'


def queries(fm: FraudModel, track: str) -> dict[str, str]:
    """PromQL of every built-in measure of one track over the analysis window."""
    s = selector(fm, track)
    api = f'{s},endpoint=~"{PREDICT_ENDPOINTS}"'  # not the probes' /readyz, /livez, nor /metrics
    w = fm.spec.rollout.analysis.window
    q = fm.spec.rollout.analysis.checks.latency.quantile
    requests = f"sum(increase(bentoml_service_request_total{{{api}}}[{w}]))"
    return {
        "requests": requests,
        # 503 is load shedding (the service tells clients to retry), not a model error.
        "errors": f'sum(increase(bentoml_service_request_total{{{api},http_response_code=~"5..",'
        f'http_response_code!="503"}}[{w}])) or vector(0)',
        "latency": f"histogram_quantile({q}, sum by (le) "
        f"(rate(bentoml_service_request_duration_seconds_bucket{{{api}}}[{w}])))",
        "predictions": f"sum(increase(fraud_model_predictions_total{{{s}}}[{w}]))",
        "flagged": f'sum(increase(fraud_model_decisions_total{{{s},decision="flag"}}[{w}])) or vector(0)',
        "rejected": f"sum(increase(fraud_model_rejected_inputs_total{{{s}}}[{w}])) or vector(0)",
        "scores": f"sum by (le) (increase(fraud_model_score_bucket{{{s}}}[{w}]))",
    }


def custom_query(fm: FraudModel, template: str) -> str:
    values = {
        "track": "canary",
        "name": fm.metadata.name,
        "namespace": fm.metadata.namespace,
        "window": fm.spec.rollout.analysis.window,
    }
    for name, value in values.items():
        template = template.replace("{{" + name + "}}", value)
    return template


# ---------------------------------------------------------------- measurements


@dataclass(frozen=True)
class TrackMeasures:
    """What one track did in the window; None where the query returned nothing."""

    requests: float | None = None
    errors: float | None = None
    latency: float | None = None
    predictions: float | None = None
    flagged: float | None = None
    rejected: float | None = None
    scores: tuple[tuple[float, float], ...] = ()  # cumulative (le, count), ascending le
    error: str | None = None  # why the track could not be measured


def psi(
    canary: tuple[tuple[float, float], ...], stable: tuple[tuple[float, float], ...]
) -> tuple[float, float, int] | None:
    """PSI of two cumulative histograms over the same buckets: (bias-corrected, raw, bins used),
    or None when too few requests fall outside the busiest bucket to compare distributions.

    Adjacent buckets are merged until each holds at least PSI_MIN_EXPECTED requests of the
    smaller track (expected from both tracks pooled): a fraud score piles up near 0, and a
    bucket holding one canary request against none of the stable's would alone add a PSI
    of ~0.02. On what is left, sampling noise still gives a PSI near
    (bins - 1) x (1/n_canary + 1/n_stable); that expected noise is subtracted, so a
    low-traffic step is not failed by chance. More traffic means more bins, finer drift.
    """
    c_bins, s_bins = _bins(canary), _bins(stable)
    n_c, n_s = sum(c_bins.values()), sum(s_bins.values())
    merged: list[tuple[float, float]] = []  # (canary count, stable count) per merged bin
    c_acc = s_acc = 0.0
    for le in sorted(set(c_bins) | set(s_bins)):
        c_acc += c_bins.get(le, 0.0)
        s_acc += s_bins.get(le, 0.0)
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


def _bins(cumulative: tuple[tuple[float, float], ...]) -> dict[float, float]:
    out: dict[float, float] = {}
    previous = 0.0
    for le, count in sorted(cumulative):
        out[le] = max(count - previous, 0.0)
        previous = max(count, previous)
    return out


def _rate(part: float | None, whole: float | None) -> float | None:
    if part is None or whole is None or whole <= 0:
        return None
    return part / whole


def _inconclusive(name: str, threshold: str, why: str, samples: int | None = None) -> CheckResult:
    return CheckResult(name=name, verdict=Verdict.INCONCLUSIVE, threshold=threshold, message=why, samples=samples)


def assess(
    spec: AnalysisSpec,
    canary: TrackMeasures,
    stable: TrackMeasures,
    custom: Mapping[str, float | str | None] | None = None,
) -> list[CheckResult]:
    """Judge every enabled check. Pure. Too few samples or missing data is Inconclusive, never Pass."""
    checks = spec.checks
    results: list[CheckResult] = []
    samples = int(canary.requests) if canary.requests is not None else None
    problem = canary.error or stable.error
    few = min(canary.requests or 0, stable.requests or 0) < spec.min_samples
    why_few = (
        f"too few requests: canary {int(canary.requests or 0)}, stable {int(stable.requests or 0)} "
        f"(minSamples {spec.min_samples})"
    )

    def guard(name: str, threshold: str) -> CheckResult | None:
        if problem:
            return _inconclusive(name, threshold, problem, samples)
        if few:
            return _inconclusive(name, threshold, why_few, samples)
        return None

    def share_check(name: str, c_part: float | None, s_part: float | None, max_delta: float, what: str) -> CheckResult:
        """A share of requests (errors, rejections) that may exceed the stable's by `max_delta`."""
        c, s = _rate(c_part, canary.requests), _rate(s_part, stable.requests)
        limit = None if s is None else s + max_delta
        threshold = f"<= stable + {max_delta}" if limit is None else f"<= {limit:.4g}"
        if (result := guard(name, threshold)) is not None:
            return result
        if c is None or s is None or limit is None:
            return _inconclusive(name, threshold, "no request counts", samples)
        ok = c <= limit
        return CheckResult(
            name=name,
            verdict=Verdict.PASS if ok else Verdict.FAIL,
            value=c,
            baseline=s,
            threshold=threshold,
            samples=samples,
            message="" if ok else f"canary {what} {c:.2%} vs stable {s:.2%}",
        )

    if checks.error_rate.enabled:
        results.append(share_check("errorRate", canary.errors, stable.errors, checks.error_rate.max_delta, "5xx rate"))

    def latency_check(lat: LatencyCheck) -> CheckResult:
        q_name = f"p{round(lat.quantile * 100, 2):g}"
        c, s = canary.latency, stable.latency
        limit = None if s is None else max(s * lat.max_ratio, s + lat.tolerance_seconds)
        if lat.max_seconds is not None:
            limit = lat.max_seconds if limit is None else min(limit, lat.max_seconds)
        threshold = f"<= {limit:.4g}s" if limit is not None else f"<= stable x {lat.max_ratio}"
        if (result := guard("latency", threshold)) is not None:
            return result
        if min(canary.requests or 0, stable.requests or 0) * (1 - lat.quantile) < MIN_TAIL_SAMPLES:
            needed = math.ceil(MIN_TAIL_SAMPLES / (1 - lat.quantile))
            why = f"{q_name} needs {needed} requests per track in the window for {MIN_TAIL_SAMPLES} beyond it"
            return _inconclusive("latency", threshold, why, samples)
        if c is None or limit is None or math.isnan(c) or (s is not None and math.isnan(s)):
            return _inconclusive("latency", threshold, "no latency histogram", samples)
        ok = c <= limit
        return CheckResult(
            name="latency",
            verdict=Verdict.PASS if ok else Verdict.FAIL,
            value=c,
            baseline=s,
            threshold=threshold,
            samples=samples,
            message="" if ok else f"canary {q_name} {c * 1000:.1f}ms vs stable {(s or 0) * 1000:.1f}ms",
        )

    if checks.latency.enabled:
        results.append(latency_check(checks.latency))

    def drift_check(max_psi: float) -> CheckResult:
        threshold = f"<= {max_psi}"
        if (result := guard("scoreDrift", threshold)) is not None:
            return result
        if not canary.scores or not stable.scores or canary.scores[-1][1] <= 0 or stable.scores[-1][1] <= 0:
            return _inconclusive("scoreDrift", threshold, "no score histogram", samples)
        measured = psi(canary.scores, stable.scores)
        if measured is None:
            why = f"fewer than {PSI_MIN_EXPECTED:g} requests per track outside the busiest score bins"
            return _inconclusive("scoreDrift", threshold, why, samples)
        value, raw, bins = measured
        return CheckResult(
            name="scoreDrift",
            verdict=Verdict.PASS if value <= max_psi else Verdict.FAIL,
            value=value,
            threshold=threshold,
            samples=samples,
            message=f"PSI {value:.3f} over {bins} bins (raw {raw:.3f} before removing sampling noise)",
        )

    if checks.score_drift.enabled:
        results.append(drift_check(checks.score_drift.max_psi))

    if checks.flag_rate.enabled:
        fr = checks.flag_rate
        threshold = f"in [{fr.min_ratio}, {fr.max_ratio}]"
        result = guard("flagRate", threshold)
        if result is None:
            result = _flag_rate(canary, stable, fr.min_ratio, fr.max_ratio, threshold, samples)
        results.append(result)

    if checks.input_rejection.enabled:
        delta = checks.input_rejection.max_delta
        results.append(share_check("inputRejection", canary.rejected, stable.rejected, delta, "rejects inputs at"))

    for check in spec.custom:
        bounds = " and ".join(
            b
            for b in (
                f">= {check.min}" if check.min is not None else "",
                f"<= {check.max}" if check.max is not None else "",
            )
            if b
        )
        measured = (custom or {}).get(check.name)
        if isinstance(measured, str):
            results.append(_inconclusive(check.name, bounds, measured, samples))
        elif measured is None or math.isnan(measured):
            results.append(_inconclusive(check.name, bounds, "query returned no data", samples))
        else:
            ok = (check.min is None or measured >= check.min) and (check.max is None or measured <= check.max)
            results.append(
                CheckResult(
                    name=check.name,
                    verdict=Verdict.PASS if ok else Verdict.FAIL,
                    value=measured,
                    threshold=bounds,
                    samples=samples,
                )
            )
    return results


def _flag_rate(
    canary: TrackMeasures, stable: TrackMeasures, low: float, high: float, threshold: str, samples: int | None
) -> CheckResult:
    """Ratio of flag rates with a 95% interval on its log: Fail only when the whole interval is out of bounds."""
    n_c, n_s = canary.predictions, stable.predictions
    if not n_c or not n_s or canary.flagged is None or stable.flagged is None:
        return _inconclusive("flagRate", threshold, "no decision counts", samples)
    # Laplace smoothing keeps the ratio finite when a track flagged nothing.
    p_c = (canary.flagged + 1) / (n_c + 2)
    p_s = (stable.flagged + 1) / (n_s + 2)
    ratio = p_c / p_s
    se = math.sqrt(max((1 - p_c) / ((n_c + 2) * p_c) + (1 - p_s) / ((n_s + 2) * p_s), 0.0))
    lower, upper = ratio * math.exp(-Z95 * se), ratio * math.exp(Z95 * se)
    detail = f"canary flags {p_c:.2%}, stable {p_s:.2%}: ratio {ratio:.2f} (95% {lower:.2f}-{upper:.2f})"
    if low <= ratio <= high:
        verdict = Verdict.PASS
    elif lower > high or upper < low:
        verdict = Verdict.FAIL
    else:
        verdict = Verdict.INCONCLUSIVE
        detail += ": outside bounds but not yet significant"
    return CheckResult(
        name="flagRate",
        verdict=verdict,
        value=ratio,
        baseline=p_s,
        threshold=threshold,
        samples=samples,
        message=detail,
    )


def overall(results: list[CheckResult]) -> Verdict:
    """Any Fail fails; else any Inconclusive is inconclusive; else Pass (no checks is inconclusive)."""
    verdicts = {r.verdict for r in results}
    if Verdict.FAIL in verdicts:
        return Verdict.FAIL
    if Verdict.INCONCLUSIVE in verdicts or not results:
        return Verdict.INCONCLUSIVE
    return Verdict.PASS


# ---------------------------------------------------------------- I/O


def _scalar(vector: Vector) -> float | None:
    return vector[0][1] if vector else None


async def measure(provider: MetricProvider, fm: FraudModel, track: str) -> TrackMeasures:
    named = queries(fm, track)
    try:
        results = await asyncio.gather(*(provider.query(q) for q in named.values()))
    except ProviderError as exc:
        return TrackMeasures(error=f"metrics unavailable: {exc}")
    by_name = dict(zip(named, results, strict=True))
    scores = tuple(sorted((float(labels["le"]), value) for labels, value in by_name["scores"] if "le" in labels))
    return TrackMeasures(
        requests=_scalar(by_name["requests"]),
        errors=_scalar(by_name["errors"]),
        latency=_scalar(by_name["latency"]),
        predictions=_scalar(by_name["predictions"]),
        flagged=_scalar(by_name["flagged"]),
        rejected=_scalar(by_name["rejected"]),
        scores=scores,
    )


async def run_analysis(provider: MetricProvider, fm: FraudModel, now: datetime) -> AnalysisStatus:
    """Measure both tracks over the same window and judge the canary."""
    spec = fm.spec.rollout.analysis
    canary, stable = await asyncio.gather(measure(provider, fm, "canary"), measure(provider, fm, "stable"))
    custom: dict[str, float | str | None] = {}
    for check in spec.custom:
        try:
            custom[check.name] = _scalar(await provider.query(custom_query(fm, check.query)))
        except ProviderError as exc:
            custom[check.name] = f"metrics unavailable: {exc}"
    results = assess(spec, canary, stable, custom)
    current = fm.status.canary
    return AnalysisStatus(
        time=now,
        step=current.step if current else 0,
        weight=current.weight if current else 0,
        verdict=overall(results),
        checks=results,
    )
