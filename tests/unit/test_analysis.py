"""Assessment of canary measurements: intervals inside/outside bounds, alpha spending over looks,
sample floors on events, shared-bound drift, shedding, non-finite values, the evidence queries."""

from __future__ import annotations

import math
import random
from datetime import timedelta
from statistics import NormalDist

import pytest

from fraudmodel_operator.analysis import (
    Context,
    Histogram,
    TrackMeasures,
    assess,
    custom_query,
    evidence_ranges,
    judge,
    overall,
    psi,
    queries,
    ratio_test,
)
from fraudmodel_operator.api import AnalysisSpec, AnalysisStatus, CheckResult, FraudModelStatus, Verdict
from tests.unit.factories import T0, at, canary, fraudmodel, track

N = NormalDist()
BUCKETS = [i / 20 for i in range(1, 21)]  # the bento's old linear layout
LOG_EDGES = sorted({float(f"{10 ** (-5 + i / 5):.3g}") for i in range(26)} | {0.9, 0.99, 0.5})  # its new one
LATENCY_EDGES = tuple(0.001 * 1.25**i for i in range(42))  # the bento's: 1 ms, 25% apart (service.py)


def scores(flag_rate: float, n: float, edges: list[float] | None = None, sigma: float = 2.0) -> Histogram:
    """Expected cumulative score histogram of n logit-normal scores of which `flag_rate` are >= 0.5."""
    mu = sigma * N.inv_cdf(max(flag_rate, 1e-12))
    out = [(e, n * N.cdf((math.log(e / (1 - e)) - mu) / sigma)) for e in (edges or LOG_EDGES) if e < 1]
    return (*out, (1.0, n), (math.inf, n))


def latency(n: float, median: float = 0.006, shift: float = 0.0) -> Histogram:
    out = [(e, n * N.cdf(math.log((e - shift) / median) / 0.5) if e > shift else 0.0) for e in LATENCY_EDGES]
    return (*out, (math.inf, n))


def measures(
    requests: float = 20_000,
    errors: float = 0,
    shed: float = 0,
    flag_rate: float = 0.01,
    flagged: float | None = None,
    rejected: float = 40,
    score_hist: Histogram | None = None,
    latency_shift: float = 0.0,
) -> TrackMeasures:
    served = requests - shed - errors
    return TrackMeasures(
        requests=requests,
        errors=errors,
        shed=shed,
        latency=latency(served, shift=latency_shift),
        predictions=served,
        flagged=served * flag_rate if flagged is None else flagged,
        rejected=rejected,
        scores=score_hist if score_hist is not None else scores(flag_rate, served),
    )


SPEC = AnalysisSpec(min_samples=100)


def results(
    canary: TrackMeasures,
    stable: TrackMeasures | None = None,
    spec: AnalysisSpec = SPEC,
    looks: dict[str, int] | None = None,
) -> dict[str, CheckResult]:
    found = assess(spec, canary, stable or measures(), context=Context(looks=looks or {}))
    return {r.name: r for r in found}


def verdicts(canary: TrackMeasures, stable: TrackMeasures | None = None, **kw: object) -> dict[str, Verdict]:
    return {name: r.verdict for name, r in results(canary, stable, **kw).items()}  # type: ignore[arg-type]


def test_identical_tracks_pass_every_check() -> None:
    assert set(verdicts(measures()).values()) == {Verdict.PASS}
    assert set(verdicts(measures()).keys()) == {
        "errorRate",
        "shedRate",
        "latency",
        "scoreDrift",
        "flagRate",
        "inputRejection",
    }


@pytest.mark.parametrize(
    ("canary", "check"),
    [
        (measures(errors=1000), "errorRate"),
        (measures(shed=6000), "shedRate"),
        (measures(latency_shift=0.030), "latency"),
        (measures(flag_rate=0.05), "flagRate"),
        (measures(flag_rate=0.001), "flagRate"),
        (measures(rejected=1000), "inputRejection"),
    ],
    ids=["errors-5pp", "shed-30pct", "latency+30ms", "flags-5x", "flags-10x-fewer", "rejections"],
)
def test_each_regression_fails_its_check(canary: TrackMeasures, check: str) -> None:
    assert verdicts(canary)[check] == Verdict.FAIL


# ---------------------------------------------------------------- flag rate


def test_a_point_estimate_inside_the_bounds_does_not_pass_when_the_interval_is_not() -> None:
    """Old rule: Pass on the smoothed point estimate (0.6 here); a 0.4x canary passed ~98% of rollouts."""
    found = results(measures(requests=1000, flagged=6), measures(requests=1000, flagged=10))["flagRate"]
    assert found.verdict == Verdict.INCONCLUSIVE


def test_a_canary_that_flags_nothing_never_passes_and_fails_once_implausible() -> None:
    """Old rule: 0 flags of 185 against 1 of 185 passed (Laplace ratio 0.5)."""
    few = results(measures(requests=185, flagged=0), measures(requests=185, flagged=1))["flagRate"]
    assert few.verdict == Verdict.INCONCLUSIVE
    assert "too few flags" in few.message
    assert few.looks == 0, "a look that cannot decide spends no alpha"
    many = results(measures(requests=20_000, flagged=0), measures(requests=20_000, flagged=200))["flagRate"]
    assert many.verdict == Verdict.FAIL
    assert many.looks == 1


def test_the_floor_is_on_flags_not_requests() -> None:
    """Old floor: minSamples requests, ~0.5 expected flags at 50 requests. Now 500 requests (5 flags) are not enough."""
    found = results(measures(requests=500), measures(requests=500))["flagRate"]
    assert found.verdict == Verdict.INCONCLUSIVE
    assert "too few flags" in found.message


def test_later_looks_need_narrower_evidence() -> None:
    """The k-th look errs with alpha / (k (k+1)): evidence that passes at the first look does not at the 30th."""
    canary, stable = measures(requests=6000, flag_rate=0.0105), measures(requests=6000)
    assert results(canary, stable)["flagRate"].verdict == Verdict.PASS
    late = results(canary, stable, looks={"flagRate": 29})["flagRate"]
    assert late.verdict == Verdict.INCONCLUSIVE
    assert late.looks == 30


@pytest.mark.parametrize("ratio", [0.5, 2.0], ids=["at-min", "at-max"])
def test_a_canary_at_a_bound_passes_rarely_over_many_looks(ratio: float) -> None:
    """Repeated looks at growing evidence of a canary exactly at a bound: promoted in <= alpha (1%)."""
    rng = random.Random(5)
    passed = 0
    for _ in range(300):
        looks = 0
        k_c = k_s = 0.0
        for minute in range(1, 31):
            k_c += poisson(rng, 30 * ratio)
            k_s += poisson(rng, 30)
            n = 3000.0 * minute
            outcome = ratio_test(k_c, n, k_s, n, 0.5, 2.0, 0.01, looks)
            looks = outcome.looks if outcome else looks
            if outcome is not None and outcome.verdict == Verdict.PASS:
                passed += 1
                break
    assert passed <= 3


def poisson(rng: random.Random, lam: float) -> float:
    return float(max(0, round(rng.gauss(lam, math.sqrt(lam)))))


# ---------------------------------------------------------------- shares


def test_one_error_in_fifty_requests_is_not_a_failure() -> None:
    """Old rule: any absolute delta over maxDelta failed, one 5xx in 50 requests included."""
    spec = AnalysisSpec(min_samples=50)
    found = results(measures(requests=50, errors=1), measures(requests=50), spec=spec)["errorRate"]
    assert found.verdict == Verdict.INCONCLUSIVE


def test_an_error_share_surely_over_max_delta_fails_and_one_surely_under_passes() -> None:
    assert verdicts(measures(requests=300_000, errors=9000))["errorRate"] == Verdict.FAIL  # +3pp
    found = results(measures(requests=300_000, errors=600), measures(requests=300_000))["errorRate"]
    assert found.verdict == Verdict.PASS  # +0.2pp, interval well under 1pp
    assert "interval" in found.message


def test_shedding_is_judged_and_hidden_from_latency() -> None:
    """Old code read no shed counter: a canary shedding 30% passed every check."""
    found = results(measures(shed=6000))
    assert found["shedRate"].verdict == Verdict.FAIL
    assert found["shedRate"].value == pytest.approx(0.3)
    q = queries(fraudmodel(status=running()), "canary")
    assert "fraud_model_shed_requests_total" in q["shed"]
    assert 'http_response_code=~"2.."' in q["latency"], "latency reads answered requests only"


# ---------------------------------------------------------------- drift


def test_identical_distributions_in_different_bucket_layouts_do_not_drift() -> None:
    """Old PSI over the union of bounds: ~9.5 for the same scores in two layouts (a bento upgrade)."""
    canary = measures(score_hist=scores(0.01, 20_000 - 0, edges=LOG_EDGES))
    stable = measures(score_hist=scores(0.01, 20_000, edges=[*BUCKETS[:-1], *LOG_EDGES[:10]]))
    found = results(canary, stable)["scoreDrift"]
    assert found.verdict == Verdict.PASS
    assert found.value is not None
    assert found.value < 0.01


def test_scores_crowding_under_the_threshold_fail_drift_before_flags_move() -> None:
    """Near-misses (0.158 < score < 0.5) 2.5x, flags unchanged: seen by the log-spaced bins and the
    near-miss share (with 0.05-wide buckets both sat in the first bucket or two)."""
    n = 200_000.0
    stable = scores(0.01, n)
    moved = 0.1 * n  # 10% of all scores leave the bulk (<= 0.01) for (0.158, 0.251]
    canary = tuple((le, c - moved if 0.01 <= le < 0.251 else c) for le, c in stable)
    found = results(measures(requests=n, score_hist=canary), measures(requests=n))
    assert found["flagRate"].verdict == Verdict.PASS
    drift = found["scoreDrift"]
    assert drift.verdict == Verdict.FAIL
    assert "scores > 0.158: canary 16.81%, stable 6.81%, ratio 2.47" in drift.message


def test_drift_without_a_declared_threshold_judges_psi_alone() -> None:
    """spec.model.threshold is optional (the model's metadata holds it): no near-miss edge then, no crash."""
    n = 200_000.0
    canary = measures(requests=n, score_hist=scores(0.01, n))
    found = assess(SPEC, canary, measures(requests=n), context=Context(threshold=None))
    drift = next(r for r in found if r.name == "scoreDrift")
    assert drift.verdict == Verdict.PASS, drift.message
    assert "scores >" not in drift.message


@pytest.mark.parametrize("n_canary", [300, 1000, 3000], ids=lambda n: f"canary-{n}")
def test_psi_has_no_false_alarms_from_sampling_noise(n_canary: int) -> None:
    rng = random.Random(7)
    found = [psi(sampled(n_canary, rng), sampled(4 * n_canary, rng)) for _ in range(60)]
    assert all(f is None or f[0] < 0.2 for f in found)


def sampled(n: int, rng: random.Random, flag_rate: float = 0.01) -> Histogram:
    mu = 2.0 * N.inv_cdf(flag_rate)
    values = sorted(1 / (1 + math.exp(-rng.gauss(mu, 2.0))) for _ in range(n))
    out, i = [], 0
    for e in LOG_EDGES:
        while i < n and values[i] <= e:
            i += 1
        out.append((e, float(i)))
    return (*out, (math.inf, float(n)))


# ---------------------------------------------------------------- custom checks, non-finite values


def test_custom_checks_obey_the_sample_floor_and_never_pass_a_non_finite_value() -> None:
    spec = AnalysisSpec.model_validate(
        {
            "minSamples": 100,
            "custom": [
                {"name": "block-rate", "query": "q", "max": 0.08},
                {"name": "p99", "query": "q", "max": 0.5},
                {"name": "floor", "query": "q", "min": 1},
                {"name": "missing", "query": "q", "min": 1},
            ],
        }
    )
    values = {"block-rate": 0.0, "p99": math.inf, "floor": math.inf, "missing": None}
    by = {r.name: r for r in assess(spec, measures(requests=20), measures(), values)}
    assert by["block-rate"].verdict == Verdict.INCONCLUSIVE, "no traffic: `or vector(0)` must not pass"
    by = {r.name: r for r in assess(spec, measures(), measures(), values)}
    assert by["block-rate"].verdict == Verdict.PASS
    assert by["p99"].verdict == Verdict.FAIL
    assert by["floor"].verdict == Verdict.INCONCLUSIVE
    assert by["missing"].verdict == Verdict.INCONCLUSIVE
    for result in by.values():
        assert result.value is None or math.isfinite(result.value)


def test_non_finite_values_are_never_written_so_status_is_stable() -> None:
    result = CheckResult(name="c", verdict=Verdict.FAIL, value=math.inf, baseline=math.nan)
    dumped = result.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert "value" not in dumped
    assert "baseline" not in dumped
    assert CheckResult.model_validate(dumped) == result


# ---------------------------------------------------------------- looks and evidence ranges


def running(version: str = "v2", weight: int = 10, started: float = 0, step_started: float = 0) -> FraudModelStatus:
    return FraudModelStatus(
        stable=track("v1", 100 - weight),
        canary=canary(version, weight=weight, started_at=at(started), step_started_at=at(step_started)),
    )


def test_looks_carry_over_within_a_revision_and_restart_for_a_new_one() -> None:
    status = running()
    assert status.canary is not None
    last = AnalysisStatus(
        verdict=Verdict.INCONCLUSIVE,
        revision=status.canary.revision,
        checks=[CheckResult(name="flagRate", verdict=Verdict.INCONCLUSIVE, looks=4)],
    )
    fm = fraudmodel("v2", status=status.model_copy(update={"last_analysis": last}))
    analysis = judge(fm, measures(), measures(), {}, at(300))
    flag = next(c for c in analysis.checks if c.name == "flagRate")
    assert flag.looks == 5
    assert analysis.revision == status.canary.revision
    other = last.model_copy(update={"revision": "another"})
    fm = fraudmodel("v2", status=status.model_copy(update={"last_analysis": other}))
    flag = next(c for c in judge(fm, measures(), measures(), {}, at(300)).checks if c.name == "flagRate")
    assert flag.looks == 1


def test_evidence_accumulates_since_the_canary_started_and_the_step_for_latency() -> None:
    fm = fraudmodel("v2", status=running(started=0, step_started=400))
    ranges = evidence_ranges(fm, T0 + timedelta(seconds=700))
    assert (ranges.rollout, ranges.step) == (700, 300)
    q = queries(fm, "canary", ranges)
    assert "[700s]" in q["flagged"]
    assert "[700s]" in q["scores"]
    assert "[300s]" in q["latency"]
    capped = evidence_ranges(fraudmodel("v2", status=running(), rollout={"analysis": {"window": "10m"}}), at(7200))
    assert capped.rollout == 600


def test_queries_select_the_canarys_version_so_a_replaced_canary_never_leaks_in() -> None:
    """Old queries selected by track only: 36% of a new canary's first window came from the one it replaced."""
    fm = fraudmodel("v3", status=running("v3"))
    q = queries(fm, "canary", evidence_ranges(fm, at(120)))
    for name in ("predictions", "flagged", "rejected", "scores", "shed"):
        assert 'model_version="v3"' in q[name], name
    for name in ("requests", "errors", "latency"):  # BentoML's series: kept for instances serving v3 only
        assert "and on(instance) max_over_time(fraud_model_predictions_total{" in q[name], name
        assert 'model_version="v3"' in q[name], name
    assert 'model_version="v1"' in queries(fm, "stable")["flagged"]
    assert 'fraudmodel="bot",namespace="risk",track="canary"' in q["requests"]
    assert 'http_response_code!="503"' in q["errors"]
    assert custom_query(fm, "x{v='{{version}}'}[{{window}}]", evidence_ranges(fm, at(120))) == "x{v='v3'}[120s]"


# ---------------------------------------------------------------- the rest


def test_too_few_requests_is_inconclusive_never_pass_or_fail() -> None:
    bad_and_sparse = measures(requests=20, errors=10, flagged=15)
    assert set(verdicts(bad_and_sparse).values()) == {Verdict.INCONCLUSIVE}


def test_missing_data_is_inconclusive() -> None:
    assert set(verdicts(TrackMeasures()).values()) == {Verdict.INCONCLUSIVE}
    unreachable = TrackMeasures(error="metrics unavailable: connection refused")
    found = assess(SPEC, unreachable, measures())
    assert {r.verdict for r in found} == {Verdict.INCONCLUSIVE}
    assert "connection refused" in found[0].message


@pytest.mark.parametrize(
    ("shift", "verdict"),
    [(0.004, Verdict.PASS), (0.030, Verdict.FAIL)],
    ids=["4ms-slower", "30ms-slower"],
)
def test_latency_tolerance(shift: float, verdict: Verdict) -> None:
    assert verdicts(measures(latency_shift=shift))["latency"] == verdict


def sampled_latency(rng: random.Random, n: int, slow_share: float = 0.0, slow_by: float = 0.1) -> Histogram:
    """A histogram of n lognormal answers (median 6 ms) of which `slow_share` take `slow_by` longer."""
    draws = sorted(
        rng.lognormvariate(math.log(0.006), 0.5) + (slow_by if rng.random() < slow_share else 0.0) for _ in range(n)
    )
    out, i = [], 0
    for edge in LATENCY_EDGES:
        while i < n and draws[i] <= edge:
            i += 1
        out.append((edge, float(i)))
    return (*out, (math.inf, float(n)))


def latency_verdict(canary: Histogram, stable: Histogram, spec: AnalysisSpec = SPEC) -> CheckResult:
    n = canary[-1][1]
    return results(
        TrackMeasures(requests=n, latency=canary), TrackMeasures(requests=stable[-1][1], latency=stable), spec=spec
    )["latency"]


def test_latency_of_two_identical_tracks_fails_at_most_alpha_even_with_no_tolerance() -> None:
    """Old rule: canary p95 > stable p95 x maxRatio on point estimates: with maxRatio 1 and no tolerance,
    an identical canary failed about half the time; the count test fails it with at most alpha."""
    strict = AnalysisSpec.model_validate(
        {"minSamples": 100, "checks": {"latency": {"maxRatio": 1.0, "toleranceSeconds": 0}}}
    )
    rng = random.Random(7)
    found = [
        latency_verdict(sampled_latency(rng, 1000), sampled_latency(rng, 1000), strict).verdict for _ in range(300)
    ]
    assert found.count(Verdict.FAIL) / len(found) <= strict.alpha
    assert found.count(Verdict.PASS) > 0.9 * len(found)


@pytest.mark.parametrize(
    ("slow_share", "n", "verdict"),
    [(0.02, 20_000, Verdict.PASS), (0.15, 20_000, Verdict.FAIL), (0.08, 150, Verdict.INCONCLUSIVE)],
    ids=["2pct-stalls-leave-p95-alone", "15pct-stalls-move-p95", "8pct-of-150-not-yet-sure"],
)
def test_latency_counts_answers_beyond_the_limit(slow_share: float, n: int, verdict: Verdict) -> None:
    """A canary whose answers stall 100 ms now and then: p95 moves only when more than 5% of them do."""
    rng = random.Random(3)
    found = latency_verdict(sampled_latency(rng, n, slow_share), sampled_latency(rng, n))
    assert found.verdict == verdict, found.message
    assert "allowed 5.00%" in found.message


def test_latency_of_a_track_slowed_with_the_stable_passes() -> None:
    """Load that slows both tracks moves the limit with them: the test compares shares, not fixed times."""
    found = results(measures(latency_shift=0.05), measures(latency_shift=0.05))["latency"]
    assert found.verdict == Verdict.PASS


def test_latency_max_seconds_is_a_ceiling_on_the_canary() -> None:
    spec = AnalysisSpec.model_validate({"minSamples": 100, "checks": {"latency": {"maxSeconds": 0.02}}})
    slow_together = results(measures(latency_shift=0.03), measures(latency_shift=0.03), spec=spec)["latency"]
    assert slow_together.verdict == Verdict.FAIL
    assert "maxSeconds" in slow_together.message
    assert results(measures(), spec=spec)["latency"].verdict == Verdict.PASS


def test_latency_spends_alpha_over_looks() -> None:
    first = latency_verdict(latency(20_000), latency(20_000))
    later = results(measures(), looks={"latency": 9})["latency"]
    assert (first.looks, later.looks) == (1, 10)
    # A look without answers to count keeps the looks spent: alpha spending does not start over.
    empty = TrackMeasures(requests=20_000, latency=((0.001, 0.0), (math.inf, 0.0)))
    held = results(empty, looks={"latency": 9})["latency"]
    assert (held.verdict, held.looks) == (Verdict.INCONCLUSIVE, 9)


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
    assert overall([CheckResult(name=f"c{i}", verdict=v) for i, v in enumerate(found)]) == expected
