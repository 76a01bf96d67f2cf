"""Assessment of canary measurements: thresholds, minimum samples, missing data, PSI, flag-rate intervals."""

from __future__ import annotations

import math
import random

import pytest

from fraudmodel_operator.analysis import TrackMeasures, assess, overall, psi, queries
from fraudmodel_operator.api import AnalysisSpec, Verdict
from tests.unit.factories import fraudmodel

BUCKETS = [i / 20 for i in range(1, 21)]


def histogram(weights: list[float], n: float) -> tuple[tuple[float, float], ...]:
    """Cumulative (le, count) buckets from per-bin weights."""
    total = sum(weights)
    out, running = [], 0.0
    for le, w in zip(BUCKETS, weights, strict=True):
        running += n * w / total
        out.append((le, running))
    return (*out, (math.inf, running))


FLAT = [1.0] * 20
LOW = [8, 6, 5, 4, 3, 2, 2, 1, 1, 1, 0.5, 0.5, 0.5, 0.3, 0.3, 0.2, 0.2, 0.2, 0.2, 0.1]
HIGH = list(reversed(LOW))


def measures(
    requests: float = 1000,
    errors: float = 1,
    latency: float = 0.010,
    flagged: float = 30,
    rejected: float = 2,
    scores: tuple[tuple[float, float], ...] | None = None,
) -> TrackMeasures:
    return TrackMeasures(
        requests=requests,
        errors=errors,
        latency=latency,
        predictions=requests,
        flagged=flagged,
        rejected=rejected,
        scores=scores if scores is not None else histogram(LOW, requests),
    )


SPEC = AnalysisSpec(min_samples=100)


def verdicts(
    canary: TrackMeasures, stable: TrackMeasures | None = None, spec: AnalysisSpec = SPEC
) -> dict[str, Verdict]:
    return {r.name: r.verdict for r in assess(spec, canary, stable or measures())}


def test_identical_tracks_pass_every_check() -> None:
    assert set(verdicts(measures()).values()) == {Verdict.PASS}


@pytest.mark.parametrize(
    ("canary", "check"),
    [
        (measures(errors=40), "errorRate"),
        (measures(latency=0.030), "latency"),  # 3x the stable's p99 and 20ms slower
        (measures(scores=histogram(HIGH, 1000)), "scoreDrift"),
        (measures(flagged=150), "flagRate"),
        (measures(flagged=2), "flagRate"),
        (measures(rejected=80), "inputRejection"),
    ],
    ids=["errors", "latency", "score-drift", "flags-5x", "flags-15x-fewer", "rejections"],
)
def test_each_regression_fails_its_check_only(canary: TrackMeasures, check: str) -> None:
    result = verdicts(canary)
    assert result[check] == Verdict.FAIL
    assert {name for name, v in result.items() if v == Verdict.FAIL} == {check}


def test_too_few_samples_is_inconclusive_never_pass_or_fail() -> None:
    bad_and_sparse = measures(requests=20, errors=10, flagged=15)
    assert set(verdicts(bad_and_sparse).values()) == {Verdict.INCONCLUSIVE}
    assert set(verdicts(measures(), measures(requests=50)).values()) == {Verdict.INCONCLUSIVE}


def test_missing_data_is_inconclusive() -> None:
    empty = TrackMeasures()
    assert set(verdicts(empty).values()) == {Verdict.INCONCLUSIVE}
    unreachable = TrackMeasures(error="metrics unavailable: connection refused")
    results = assess(SPEC, unreachable, measures())
    assert {r.verdict for r in results} == {Verdict.INCONCLUSIVE}
    assert "connection refused" in results[0].message


@pytest.mark.parametrize(
    ("canary_p99", "verdict"),
    [(0.016, Verdict.PASS), (0.0199, Verdict.PASS), (0.021, Verdict.FAIL)],
    ids=["1.6x-but-6ms", "just-under-tolerance", "over-ratio-and-tolerance"],
)
def test_latency_tolerance_ignores_tiny_absolute_slowdowns(canary_p99: float, verdict: Verdict) -> None:
    assert verdicts(measures(latency=canary_p99))["latency"] == verdict


def test_latency_absolute_ceiling() -> None:
    spec = AnalysisSpec.model_validate({"minSamples": 100, "checks": {"latency": {"maxSeconds": 0.012}}})
    assert verdicts(measures(latency=0.013), spec=spec)["latency"] == Verdict.FAIL


def test_flag_rate_outside_bounds_but_not_significant_is_inconclusive() -> None:
    # 100 requests each: 9 flags vs 3 is a 2.5x ratio (smoothed), far from significant.
    spec = AnalysisSpec(min_samples=100)
    result = {r.name: r for r in assess(spec, measures(requests=100, flagged=9), measures(requests=100, flagged=3))}
    assert result["flagRate"].verdict == Verdict.INCONCLUSIVE
    assert "not yet significant" in result["flagRate"].message


def test_psi_of_identical_histograms_is_zero_and_of_shifted_is_large() -> None:
    same = psi(histogram(LOW, 5000), histogram(LOW, 5000))
    assert same is not None
    assert same[0] == 0.0
    assert same[1] == pytest.approx(0.0, abs=1e-9)
    shifted = psi(histogram(HIGH, 5000), histogram(LOW, 5000))
    assert shifted is not None
    assert shifted[0] > 1.0


def sampled(weights: list[float], n: int, rng: random.Random) -> tuple[tuple[float, float], ...]:
    """A cumulative histogram of n scores drawn from the per-bin weights."""
    counts = [0] * len(weights)
    for i in rng.choices(range(len(weights)), weights=weights, k=n):
        counts[i] += 1
    return histogram([float(c) for c in counts], float(n)) if n else ()


# A fraud score: nearly everything near 0, a thin tail (the bento's v1 on normal traffic).
FRAUD = [977.0, 5.8, 2.0, 1.3, 0.9, 0.5, 0.5, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.5, 0.5, 0.6, 0.7, 0.9, 1.4, 5.0]
# A miscalibrated model: the same ranking, scores inflated (the bento's v2-miscalibrated flags ~8x more).
INFLATED = [800.0, 40, 25, 18, 14, 11, 9, 8, 7, 7, 6, 6, 6, 6, 6, 7, 7, 8, 9, 11]


@pytest.mark.parametrize("n_canary", [60, 180, 300, 1000], ids=lambda n: f"canary-{n}")
def test_psi_has_no_false_alarms_from_sampling_noise(n_canary: int) -> None:
    """Same distribution on both tracks, 300 draws: never over the default 0.2 (None: too few to tell)."""
    rng = random.Random(7)
    found = [psi(sampled(FRAUD, n_canary, rng), sampled(FRAUD, 4 * n_canary, rng)) for _ in range(300)]
    assert all(f is None or f[0] < 0.2 for f in found)
    if n_canary >= 300:
        assert sum(f is None for f in found) <= 15, "enough traffic is measured, not left inconclusive"


@pytest.mark.parametrize("n_canary", [300, 1000], ids=lambda n: f"canary-{n}")
def test_psi_always_sees_a_miscalibrated_model(n_canary: int) -> None:
    rng = random.Random(7)
    found = [psi(sampled(INFLATED, n_canary, rng), sampled(FRAUD, 4 * n_canary, rng)) for _ in range(100)]
    assert all(f is not None and f[0] > 0.2 for f in found)


def test_psi_of_a_near_empty_tail_is_not_measured() -> None:
    assert psi(sampled(FRAUD, 40, random.Random(1)), sampled(FRAUD, 160, random.Random(2))) is None
    canary, stable = measures(requests=120, scores=histogram(FRAUD, 120)), measures(scores=histogram(FRAUD, 1000))
    result = {r.name: r for r in assess(SPEC, canary, stable)}
    assert result["scoreDrift"].verdict == Verdict.INCONCLUSIVE
    assert "outside the busiest score bins" in result["scoreDrift"].message


def test_custom_checks_bounds_and_missing_data() -> None:
    spec = AnalysisSpec.model_validate(
        {
            "minSamples": 100,
            "custom": [{"name": "block-rate", "query": "q", "max": 0.08}, {"name": "floor", "query": "q", "min": 1}],
        }
    )
    by = {r.name: r.verdict for r in assess(spec, measures(), measures(), {"block-rate": 0.1, "floor": None})}
    assert by["block-rate"] == Verdict.FAIL
    assert by["floor"] == Verdict.INCONCLUSIVE


@pytest.mark.parametrize(
    ("found", "expected"),
    [
        ([Verdict.PASS, Verdict.PASS], Verdict.PASS),
        ([Verdict.PASS, Verdict.INCONCLUSIVE], Verdict.INCONCLUSIVE),
        ([Verdict.INCONCLUSIVE, Verdict.FAIL], Verdict.FAIL),
        ([], Verdict.INCONCLUSIVE),
    ],
    ids=["all-pass", "one-inconclusive", "any-fail", "no-checks"],
)
def test_overall(found: list[Verdict], expected: Verdict) -> None:
    from fraudmodel_operator.api import CheckResult

    assert overall([CheckResult(name=f"c{i}", verdict=v) for i, v in enumerate(found)]) == expected


def test_queries_select_one_track_of_one_fraudmodel_and_exclude_shed_load() -> None:
    q = queries(fraudmodel(), "canary")
    assert 'fraudmodel="bot",namespace="risk",track="canary"' in q["requests"]
    assert 'http_response_code!="503"' in q["errors"]
    assert "[1m]" in q["scores"]
    assert q["latency"].startswith("histogram_quantile(0.95,")


def test_a_tail_quantile_of_too_few_requests_is_inconclusive() -> None:
    spec = AnalysisSpec.model_validate({"minSamples": 100, "checks": {"latency": {"quantile": 0.99}}})
    result = {r.name: r for r in assess(spec, measures(requests=300, latency=0.5), measures(requests=300))}
    assert result["latency"].verdict == Verdict.INCONCLUSIVE
    assert "p99 needs 500 requests" in result["latency"].message
    assert verdicts(measures(requests=600, latency=0.5), measures(requests=600), spec)["latency"] == Verdict.FAIL
