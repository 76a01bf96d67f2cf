"""Gate simulator: whole canary rollouts through the operator's real decision code.

    nice -n 10 .venv/bin/python benchmarks/gates.py [--seeds 1000] [--rps 5 50 250] [--json]

Each rollout starts a canary of a FraudModel with the default rollout and analysis spec and
runs it to a decision on a simulated clock: the real `run_analysis()` (its PromQL answered
by a fake Prometheus that keeps per-track counters), the real `analysis_due()` and the real
`next_status()`, reconciled every `interval`. Traffic is Poisson at `rps`, split at the
canary weight in status; the stable flags 1% of transactions (logit-normal scores, decision
threshold 0.5), answers 2xx with lognormal latency (median 6 ms, on the bento's duration
buckets), rejects 0.2% of inputs.

Canaries: flag-rate ratios 0 (never flags, scores unchanged: a decision bug), 0.3 ... 3
(scores shifted so that exactly that share crosses the threshold), +1 and +5 percentage
points of 5xx, +5 ms on every answer (p95 stays inside the stable's + 10 ms: should pass) and
+20 ms (beyond it), 30% of requests shed (503, answered in 0.5 ms).

Printed per canary and rate, each with its 95% Wilson interval where it is an error rate:
P(promoted), P(rolled back), P(paused: a human was called; the
rollout ends there unless --through-pauses), P(neither promoted nor rolled back), and the
median minutes from the canary's start to promotion or rollback.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import math
import random
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import NormalDist
from typing import Any

sys.path.insert(0, str(Path(__file__).parents[1] / "operator"))

from fraudmodel_operator.analysis import Vector, run_analysis
from fraudmodel_operator.api import FraudModel, Phase, parse_duration
from fraudmodel_operator.rollout import Observed, analysis_due, next_status
from fraudmodel_operator.stats import wilson

T0 = datetime(2026, 12, 1, tzinfo=UTC)
BASE_FLAG_RATE = 0.01
THRESHOLD = 0.5
SCORE_SIGMA = 2.0  # logit-normal scores: median ~0.01 at a 1% flag rate
REJECT_RATE = 0.002
LATENCY_MEDIAN, LATENCY_SIGMA = 0.006, 0.5
SHED_LATENCY = 0.0005


def latency_buckets(start: float = 0.001, factor: float = 1.25, end: float = 10.0) -> tuple[float, ...]:
    """The bento's request-duration buckets (bentos/fraud_detector/fraud_detector/service.py:
    BentoML's exponential layout from 1 ms, 25% apart, up to 10 s), +Inf last."""
    out, bound = [], start
    while bound < end:
        out.append(bound)
        bound *= factor
    return (*out, end, math.inf)


LATENCY_BUCKETS = latency_buckets()
RATIOS = (0.0, 0.3, 0.5, 0.8, 1.0, 1.25, 2.0, 3.0)
RPS = (5.0, 50.0, 250.0)
_N = NormalDist()
Z95 = _N.inv_cdf(0.975)


def score_buckets(threshold: float) -> tuple[float, ...]:
    """The bento's bucket layout (bentos/fraud_detector/fraud_detector/metrics.py), +Inf last."""
    edges = {float(f"{10 ** (-5 + i / 5):.3g}") for i in range(26)} | {0.9, 0.99, threshold}
    return (*sorted(edges), math.inf)


SCORE_BUCKETS = score_buckets(THRESHOLD)


@dataclass(frozen=True)
class Canary:
    """How the canary differs from the stable."""

    name: str
    flag_ratio: float = 1.0
    never_flags: bool = False
    extra_errors: float = 0.0
    extra_latency: float = 0.0
    shed: float = 0.0
    bad: bool = False  # a target: promoted in <= 1% of rollouts at >= 50 rps
    healthy: bool = False  # a target: promoted >= 99%, rolled back <= 1%


def canaries() -> list[Canary]:
    out = [Canary("flags nothing", never_flags=True, bad=True)]
    for r in RATIOS[1:]:
        out.append(Canary(f"flag ratio {r:g}", flag_ratio=r, bad=r <= 0.5 or r >= 2, healthy=r == 1.0))
    out += [
        Canary("+1pp errors", extra_errors=0.01),
        Canary("+5pp errors", extra_errors=0.05, bad=True),
        Canary("+5ms latency", extra_latency=0.005),  # p95 stays inside stable p95 + 10 ms: should pass
        Canary("+20ms latency", extra_latency=0.020),
        Canary("30% shed", shed=0.30, bad=True),
    ]
    return out


# ---------------------------------------------------------------- traffic


def poisson(rng: random.Random, lam: float) -> float:
    if lam <= 0:
        return 0.0
    if lam > 50:
        return float(max(0, round(rng.gauss(lam, math.sqrt(lam)))))
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return float(k)


@dataclass(frozen=True)
class TrackModel:
    """Per-request probabilities of one track."""

    shed: float
    errors: float
    never_flags: bool
    score_cdf: tuple[float, ...]  # P(score <= edge) per score bucket
    latency_cdf: tuple[float, ...]  # P(duration <= edge) per latency bucket, answered requests

    @classmethod
    def of(cls, flag_rate: float, errors: float, latency: float, shed: float, never_flags: bool) -> TrackModel:
        mu = SCORE_SIGMA * _N.inv_cdf(min(max(flag_rate, 1e-9), 0.5))  # P(logit >= 0) = flag_rate

        def score_cdf(edge: float) -> float:
            if math.isinf(edge) or edge >= 1:
                return 1.0
            return _N.cdf((math.log(edge / (1 - edge)) - mu) / SCORE_SIGMA)

        def latency_cdf(edge: float) -> float:
            if math.isinf(edge):
                return 1.0
            if edge <= latency:
                return 0.0
            return _N.cdf((math.log((edge - latency) / LATENCY_MEDIAN)) / LATENCY_SIGMA)

        return cls(
            shed=shed,
            errors=errors,
            never_flags=never_flags,
            score_cdf=tuple(score_cdf(e) for e in SCORE_BUCKETS),
            latency_cdf=tuple(latency_cdf(e) for e in LATENCY_BUCKETS),
        )


def _split(rng: random.Random, lam: float, cdf: tuple[float, ...]) -> list[float]:
    """Cumulative bucket counts of Poisson(lam) events (independent Poisson per bucket: exact thinning)."""
    out, running, previous = [], 0.0, 0.0
    for p in cdf:
        running += poisson(rng, lam * max(p - previous, 0.0))
        previous = p
        out.append(running)
    return out


COUNTERS = ("requests", "errors", "shed", "predictions", "flagged", "rejected")


@dataclass
class Counters:
    """Cumulative counters of one track, as Prometheus would hold them."""

    values: dict[str, float] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0.0))
    scores: list[float] = field(default_factory=lambda: [0.0] * len(SCORE_BUCKETS))
    latency_ok: list[float] = field(default_factory=lambda: [0.0] * len(LATENCY_BUCKETS))
    latency_all: list[float] = field(default_factory=lambda: [0.0] * len(LATENCY_BUCKETS))

    def add(self, rng: random.Random, model: TrackModel, lam: float) -> None:
        shed = poisson(rng, lam * model.shed)
        served = lam * (1 - model.shed)
        errors = poisson(rng, served * model.errors)
        rejected = poisson(rng, served * (1 - model.errors) * REJECT_RATE)
        ok_lam = served * (1 - model.errors) * (1 - REJECT_RATE)
        scores = _split(rng, ok_lam, model.score_cdf)
        predictions = scores[-1]
        flagged = 0.0 if model.never_flags else predictions - scores[SCORE_BUCKETS.index(THRESHOLD)]
        latency = _split(rng, ok_lam, model.latency_cdf)
        v = self.values
        v["requests"] += shed + errors + rejected + predictions
        v["errors"] += errors
        v["shed"] += shed
        v["predictions"] += predictions
        v["flagged"] += flagged
        v["rejected"] += rejected
        for i, count in enumerate(scores):
            self.scores[i] += count
        fast = shed + errors + rejected  # answered at once (errors: the injected kind fails fast)
        for i, count in enumerate(latency):
            self.latency_ok[i] += count
            self.latency_all[i] += count + (fast if LATENCY_BUCKETS[i] >= SHED_LATENCY else 0.0)

    def snapshot(self) -> Counters:
        return Counters(dict(self.values), list(self.scores), list(self.latency_ok), list(self.latency_all))


# ---------------------------------------------------------------- a fake Prometheus

_RANGE = re.compile(r"\[(\d+)(ms|s|m|h)\]")
_TRACK = re.compile(r'track="(\w+)"')
_METRIC = re.compile(r"(bentoml_service_request_total|bentoml_service_request_duration_seconds_bucket|"
                     r"fraud_model_\w+_total|fraud_model_score_bucket)")  # fmt: skip


@dataclass
class World:
    """Both tracks' counters over simulated time; answers the analysis' PromQL like Prometheus."""

    rng: random.Random
    rps: float
    models: dict[str, TrackModel]
    now: float = 0.0
    history: list[tuple[float, dict[str, Counters]]] = field(default_factory=list)
    live: dict[str, Counters] = field(default_factory=lambda: {"stable": Counters(), "canary": Counters()})

    def __post_init__(self) -> None:
        self.history.append((0.0, {t: c.snapshot() for t, c in self.live.items()}))

    def advance(self, until: float, weight: int) -> None:
        dt = until - self.now
        if dt <= 0:
            return
        for track, share in (("canary", weight / 100), ("stable", 1 - weight / 100)):
            if share > 0:
                self.live[track].add(self.rng, self.models[track], self.rps * share * dt)
        self.now = until
        self.history.append((until, {t: c.snapshot() for t, c in self.live.items()}))

    def at(self, t: float, track: str) -> Counters:
        times = [h[0] for h in self.history]
        i = bisect.bisect_right(times, t) - 1
        return self.history[max(i, 0)][1][track]

    async def query(self, promql: str) -> Vector:
        track = (_TRACK.search(promql) or [None, "stable"])[1]
        assert track is not None
        m = _RANGE.search(promql)
        seconds = int(m[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m[2]] if m else 60
        end, start = self.live[track], self.at(self.now - seconds, track)
        metric = (_METRIC.search(promql) or [""])[0]
        if metric == "bentoml_service_request_duration_seconds_bucket":
            ok = '"2.."' in promql
            e, s = (end.latency_ok, start.latency_ok) if ok else (end.latency_all, start.latency_all)
            buckets = [(le, a - b) for le, a, b in zip(LATENCY_BUCKETS, e, s, strict=True)]
            if promql.startswith("histogram_quantile"):
                q = float(promql.split("(")[1].split(",")[0])
                value = analysis_module_quantile(buckets, q)
                return [] if value is None else [({}, value)]
            return [({"le": _le(le)}, count) for le, count in buckets]
        if metric == "fraud_model_score_bucket":
            return [({"le": _le(le)}, a - b) for le, a, b in zip(SCORE_BUCKETS, end.scores, start.scores, strict=True)]
        name = {
            "bentoml_service_request_total": "errors" if '"5.."' in promql else "requests",
            "fraud_model_shed_requests_total": "shed",
            "fraud_model_predictions_total": "predictions",
            "fraud_model_decisions_total": "flagged",
            "fraud_model_rejected_inputs_total": "rejected",
        }.get(metric)
        if name is None:
            return []
        return [({}, end.values[name] - start.values[name])]

    async def is_online(self) -> bool:
        return True


def _le(le: float) -> str:
    return "+Inf" if math.isinf(le) else repr(le)


def analysis_module_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Prometheus' histogram_quantile over cumulative bucket counts (for the old latency query)."""
    cumulative = buckets
    total = cumulative[-1][1] if cumulative else 0.0
    if total <= 0:
        return None
    rank, prev_le, prev = q * total, 0.0, 0.0
    for le, count in cumulative:
        if count >= rank:
            if math.isinf(le):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev) / max(count - prev, 1e-12)
        prev_le, prev = le, count
    return prev_le


# ---------------------------------------------------------------- one rollout


def fraudmodel(version: str, rollout: dict[str, Any], status: dict[str, Any] | None = None) -> FraudModel:
    return FraudModel.model_validate(
        {
            "metadata": {"name": "bot", "namespace": "risk", "uid": "u1", "generation": 1},
            "spec": {"model": {"name": "bot", "version": version, "image": f"bot:{version}"}, "rollout": rollout},
            "status": status or {},
        }
    )


@dataclass(frozen=True)
class Result:
    outcome: str  # Promoted | RolledBack | Undecided
    minutes: float
    reason: str
    paused: bool = False  # the phase was Paused at some point (a human was called)


async def rollout(
    canary: Canary,
    rps: float,
    seed: int,
    hours: float,
    spec: dict[str, Any] | None = None,
    through_pauses: bool = False,
) -> Result:
    stable_model = TrackModel.of(BASE_FLAG_RATE, 0.0, 0.0, 0.0, False)
    canary_model = TrackModel.of(
        BASE_FLAG_RATE * canary.flag_ratio, canary.extra_errors, canary.extra_latency, canary.shed, canary.never_flags
    )
    world = World(random.Random(seed), rps, {"stable": stable_model, "canary": canary_model})
    fm = fraudmodel("v1", spec or {})
    observed = Observed(stable_ready=2, stable_desired=2, canary_ready=1)
    status = next_status(fm, observed, None, T0).status  # the stable is deployed
    fm = fraudmodel("v2", spec or {}, status.model_dump(mode="json", by_alias=True, exclude_none=True))
    interval = parse_duration(fm.spec.rollout.interval)
    t, end, paused = 0.0, hours * 3600, False
    times = [0.0, 1.0]  # the canary starts, then its first weight is set a second later
    while t <= end:
        t = times.pop(0) if times else t + interval
        weight = fm.status.canary.weight if fm.status.canary else 0
        world.advance(t, weight)
        now = T0 + timedelta(seconds=t)
        analysis = None
        if analysis_due(fm, now):
            analysis = await run_analysis(world, fm, now)
        transition = next_status(fm, observed, analysis, now)
        status = transition.status
        fm = fm.model_copy(update={"status": status})
        if status.canary is not None and status.canary.promoting:
            return Result("Promoted", t / 60, "", paused)
        if status.phase == Phase.ROLLED_BACK:
            return Result("RolledBack", t / 60, status.history[0].reason if status.history else "", paused)
        paused = paused or status.phase == Phase.PAUSED
        if paused and not through_pauses:  # held for a human: nothing more happens on its own
            return Result("Undecided", t / 60, status.message, paused)
    return Result("Undecided", end / 60, fm.status.message, paused)


# ---------------------------------------------------------------- the table


@dataclass
class Row:
    canary: Canary
    rps: float
    results: list[Result]

    @property
    def paused(self) -> float:
        return sum(r.paused for r in self.results) / len(self.results)

    def share(self, outcome: str) -> float:
        return sum(r.outcome == outcome for r in self.results) / len(self.results)

    def interval(self, outcome: str) -> tuple[float, float]:
        """The 95% Wilson interval of the share of rollouts that ended in `outcome`."""
        return wilson(sum(r.outcome == outcome for r in self.results), len(self.results), Z95)

    @property
    def median_minutes(self) -> float | None:
        decided = [r.minutes for r in self.results if r.outcome in ("Promoted", "RolledBack")]
        return statistics.median(decided) if decided else None

    def target(self) -> str:
        """'' when the row has no target, else 'ok' or 'MISSED'."""
        promoted, rolled_back = self.share("Promoted"), self.share("RolledBack")
        if self.canary.bad:
            return "ok" if (promoted <= 0.01 if self.rps >= 50 else promoted == 0) else "MISSED"
        if self.canary.healthy and self.rps >= 50:
            return "ok" if promoted >= 0.99 and rolled_back <= 0.01 else "MISSED"
        return ""

    def as_dict(self) -> dict[str, Any]:
        reasons: dict[str, int] = {}
        for r in self.results:
            if r.outcome == "RolledBack":
                reasons[r.reason] = reasons.get(r.reason, 0) + 1
        return {
            "canary": self.canary.name,
            "rps": self.rps,
            "runs": len(self.results),
            "promoted": self.share("Promoted"),
            "promotedInterval95": self.interval("Promoted"),
            "rolledBack": self.share("RolledBack"),
            "rolledBackInterval95": self.interval("RolledBack"),
            "everPaused": sum(r.paused for r in self.results) / len(self.results),
            "undecided": self.share("Undecided"),
            "medianMinutes": self.median_minutes,
            "rollbackReasons": reasons,
            "target": self.target(),
        }


async def simulate(
    selected: list[Canary],
    rates: list[float],
    seeds: int,
    hours: float,
    spec: dict[str, Any] | None = None,
    through_pauses: bool = False,
    progress: bool = False,
) -> list[Row]:
    rows = []
    for canary in selected:
        for rps in rates:
            results = [await rollout(canary, rps, seed, hours, spec, through_pauses) for seed in range(seeds)]
            rows.append(Row(canary, rps, results))
            if progress:
                print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    return rows


def _share(row: Row, outcome: str) -> str:
    low, high = row.interval(outcome)
    return f"{row.share(outcome):.1%} ({low:.1%}-{high:.1%})"


def table(rows: list[Row]) -> str:
    """One line per canary and rate; shares with their 95% Wilson intervals."""
    lines = [
        f"{'canary':<16} {'rps':>6} {'promoted (95% CI)':>22} {'rolled back (95% CI)':>22} {'paused':>7} "
        f"{'neither':>8} {'median min':>11}  target",
    ]
    for row in rows:
        median = "-" if row.median_minutes is None else f"{row.median_minutes:.1f}"
        lines.append(
            f"{row.canary.name:<16} {row.rps:>6g} {_share(row, 'Promoted'):>22} {_share(row, 'RolledBack'):>22} "
            f"{row.paused:>7.1%} {row.share('Undecided'):>8.1%} {median:>11}  {row.target()}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=200, help="rollouts per canary and rate (1000 resolves 1%%)")
    parser.add_argument("--rps", type=float, nargs="+", default=list(RPS))
    parser.add_argument("--canary", nargs="+", help="only these canaries (names as printed)")
    parser.add_argument("--hours", type=float, default=3.0, help="simulated time before a rollout counts as neither")
    parser.add_argument("--rollout", type=json.loads, default={}, help="spec.rollout overrides, JSON")
    parser.add_argument(
        "--through-pauses",
        action="store_true",
        help="keep analysing a Paused rollout (the operator before Pause became sticky did); "
        "by default a Pause ends the rollout as neither: it waits for a human",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    selected = [c for c in canaries() if not args.canary or c.name in args.canary]
    started = time.monotonic()
    rows = asyncio.run(
        simulate(selected, args.rps, args.seeds, args.hours, args.rollout, args.through_pauses, progress=True)
    )
    if args.json:
        print(json.dumps([r.as_dict() for r in rows], indent=2))
    else:
        print(table(rows))
        print(f"{args.seeds} rollouts per row, {time.monotonic() - started:.0f}s")
    return 0 if all(r.target() != "MISSED" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
