"""Shadow vs canary: how soon each reaches a correct verdict on a changed flag rate.

    nice -n 10 .venv/bin/python benchmarks/shadow_gates.py [--seeds 200] [--rps 50 500] [--ratios 0.5 0.8 1.25 2]

Both sides run the operator's real decision code on a simulated clock, one analysis per
`interval` (1m), alpha 0.01 spent over looks, the same flag-rate bounds [2/3, 1.5] on both
sides (so only the design differs, and 0.5 and 2 are clearly out, 0.8 and 1.25 clearly in):

- **canary**: a 10% canary (the simulator of benchmarks/gates.py: Poisson traffic split by
  weight, the real `run_analysis()` against a fake Prometheus); the verdict is its `flagRate`
  check, comparing the flag rates of two *disjoint* samples.
- **shadow**: the same new model in a shadow phase scoring a mirrored `sample` of the stable's
  traffic (10%: the canary's volume; 25%: the default); the verdict is the paired gate
  `pairedFlagRate` (`paired.assess_paired`), on the *same* transactions, after the default
  floor of 2,000 pairs. Scores are logit-normal with the stable's and the new model's logits
  correlated 0.95 (a retrain), the new model shifted so that it flags `ratio` times as often.

A verdict is correct when a ratio inside the bounds (0.8, 1.25) passes and one outside them
(0.5, 2) fails. Printed per ratio and rate: the
share of runs with a correct verdict within `--hours`, with a wrong one, and the median
minutes to the correct one.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from statistics import NormalDist
from typing import Any

sys.path.insert(0, str(Path(__file__).parents[1] / "operator"))
sys.path.insert(0, str(Path(__file__).parent))

from gates import BASE_FLAG_RATE, SCORE_SIGMA, T0, TrackModel, World, fraudmodel, poisson

from fraudmodel_operator.analysis import run_analysis
from fraudmodel_operator.api import ShadowGates, Verdict
from fraudmodel_operator.paired import PAIRED_FLAG_RATE, PairedMeasures, assess_paired
from fraudmodel_operator.rollout import Observed, next_status

LOW, HIGH = 2 / 3, 1.5
CORRELATION = 0.95
INTERVAL = 60.0
ALPHA = 0.01
MIN_PAIRS = 2000  # ShadowSpec's default
_N = NormalDist()


def cells(ratio: float, rho: float = CORRELATION, draws: int = 400_000, seed: int = 1) -> dict[str, float]:
    """P(both flag), P(only stable), P(only shadow) for correlated logit-normal scores."""
    rng = random.Random(seed)
    mu_s = SCORE_SIGMA * _N.inv_cdf(BASE_FLAG_RATE)
    mu_h = SCORE_SIGMA * _N.inv_cdf(min(BASE_FLAG_RATE * ratio, 0.5))
    both = only_s = only_h = 0
    side = math.sqrt(1 - rho * rho)
    for _ in range(draws):
        zx = rng.gauss(0, 1)
        s = mu_s + SCORE_SIGMA * zx >= 0
        h = mu_h + SCORE_SIGMA * (rho * zx + side * rng.gauss(0, 1)) >= 0
        both += s and h
        only_s += s and not h
        only_h += h and not s
    return {"both": both / draws, "only_stable": only_s / draws, "only_shadow": only_h / draws}


@dataclass(frozen=True)
class Outcome:
    correct: bool | None  # None: no conclusive verdict within the time
    minutes: float


def correct_verdict(ratio: float) -> Verdict:
    return Verdict.PASS if LOW < ratio < HIGH else Verdict.FAIL


def shadow_run(ratio: float, p: dict[str, float], rps: float, sample: float, seed: int, hours: float) -> Outcome:
    rng = random.Random(seed)
    gates = ShadowGates.model_validate(
        {"flipRate": {"enabled": False}, "flagRateRatio": {"minRatio": LOW, "maxRatio": HIGH}}
    )
    counts = dict.fromkeys(("both", "only_stable", "only_shadow", "neither"), 0.0)
    looks: dict[str, int] = {}
    t = 0.0
    while t < hours * 3600:
        t += INTERVAL
        lam = rps * sample * INTERVAL
        drawn = {k: poisson(rng, lam * v) for k, v in p.items()}
        counts["neither"] += poisson(rng, lam * (1 - sum(p.values())))
        for k, v in drawn.items():
            counts[k] += v
        (result,) = assess_paired(gates, PairedMeasures(**counts), MIN_PAIRS, ALPHA, looks)
        looks = {PAIRED_FLAG_RATE: result.looks}
        if result.verdict != Verdict.INCONCLUSIVE:
            return Outcome(result.verdict == correct_verdict(ratio), t / 60)
    return Outcome(None, hours * 60)


async def canary_run(ratio: float, rps: float, seed: int, hours: float) -> Outcome:
    spec: dict[str, Any] = {"steps": [10, 20], "interval": "1m", "progressDeadline": "48h"}
    spec["analysis"] = {"alpha": ALPHA, "inconclusiveLimit": 1000, "failureLimit": 100}
    spec["analysis"]["checks"] = {"flagRate": {"minRatio": LOW, "maxRatio": HIGH}}
    models = {
        "stable": TrackModel.of(BASE_FLAG_RATE, 0.0, 0.0, 0.0, False),
        "canary": TrackModel.of(BASE_FLAG_RATE * ratio, 0.0, 0.0, 0.0, False),
    }
    world = World(random.Random(seed), rps, models)
    observed = Observed(stable_ready=2, stable_desired=2, canary_ready=1)
    fm = fraudmodel("v1", spec)
    status = next_status(fm, observed, None, T0).status
    fm = fraudmodel("v2", spec, status.model_dump(mode="json", by_alias=True, exclude_none=True))
    fm = fm.model_copy(update={"status": next_status(fm, observed, None, T0).status})  # canary at 0%
    fm = fm.model_copy(update={"status": next_status(fm, observed, None, T0 + timedelta(seconds=1)).status})
    t = 1.0
    while t < hours * 3600:
        t += INTERVAL
        world.advance(t, 10)
        analysis = await run_analysis(world, fm, T0 + timedelta(seconds=t))
        check = next((c for c in analysis.checks if c.name == "flagRate"), None)
        if check is not None and check.verdict != Verdict.INCONCLUSIVE:
            return Outcome(check.verdict == correct_verdict(ratio), t / 60)
        last = analysis.model_copy(update={"revision": fm.status.canary.revision if fm.status.canary else None})
        fm = fm.model_copy(update={"status": fm.status.model_copy(update={"last_analysis": last})})
    return Outcome(None, hours * 60)


def summary(outcomes: list[Outcome]) -> tuple[float, float, float | None]:
    right = [o.minutes for o in outcomes if o.correct]
    wrong = sum(o.correct is False for o in outcomes)
    return len(right) / len(outcomes), wrong / len(outcomes), statistics.median(right) if right else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--rps", type=float, nargs="+", default=[50.0, 500.0])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.8, 1.25, 2.0])
    parser.add_argument("--hours", type=float, default=4.0)
    args = parser.parse_args(argv)
    started = time.monotonic()
    header = f"{'ratio':>5} {'rps':>5} {'design':<20} {'correct':>8} {'wrong':>6} {'median min':>11}"
    print(header)
    for ratio in args.ratios:
        p = cells(ratio)
        for rps in args.rps:
            rows: list[tuple[str, list[Outcome]]] = [
                ("10% canary", [asyncio.run(canary_run(ratio, rps, s, args.hours)) for s in range(args.seeds)]),
            ]
            for sample in (0.1, 0.25):
                runs = [shadow_run(ratio, p, rps, sample, s, args.hours) for s in range(args.seeds)]
                rows.append((f"shadow, sample {sample:g}", runs))
            for name, outcomes in rows:
                right, wrong, median = summary(outcomes)
                shown = "-" if median is None else f"{median:.0f}"
                print(f"{ratio:>5g} {rps:>5g} {name:<20} {right:>8.1%} {wrong:>6.1%} {shown:>11}", flush=True)
    print(f"{args.seeds} runs per row, {args.hours:g} h each, {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
