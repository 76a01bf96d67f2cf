"""The gate simulator (benchmarks/gates.py) on a small seeded sample, so it cannot rot: whole
rollouts through the real run_analysis() and next_status() meet the targets of docs/benchmarks.md."""

from __future__ import annotations

import asyncio

import pytest
from benchmarks import gates


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("flags nothing", "RolledBack"),
        ("flag ratio 1", "Promoted"),
        ("flag ratio 3", "RolledBack"),
        ("+5pp errors", "RolledBack"),
        ("30% shed", "RolledBack"),
        ("+5ms latency", "Promoted"),
        ("+20ms latency", "RolledBack"),
    ],
)
def test_simulated_rollouts_meet_the_targets(name: str, expected: str) -> None:
    canary = next(c for c in gates.canaries() if c.name == name)
    (row,) = asyncio.run(gates.simulate([canary], [500.0], seeds=2, hours=1.0))
    assert [r.outcome for r in row.results] == [expected] * 2, row.as_dict()
    assert row.target() in ("ok", "")


def test_the_fake_prometheus_answers_the_analysis_queries_from_its_counters() -> None:
    world = gates.World(gates.random.Random(1), 100.0, {"stable": _model(), "canary": _model()})
    world.advance(60.0, 50)
    requests = asyncio.run(world.query('sum(increase(bentoml_service_request_total{track="canary"}[60s]))'))
    flags = asyncio.run(world.query('sum(increase(fraud_model_decisions_total{track="canary",decision="flag"}[60s]))'))
    assert 2500 < requests[0][1] < 3500
    assert 0 < flags[0][1] < 100


def _model() -> gates.TrackModel:
    return gates.TrackModel.of(gates.BASE_FLAG_RATE, 0.0, 0.0, 0.0, False)
