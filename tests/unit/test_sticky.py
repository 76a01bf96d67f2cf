"""stickyBy on the operator's side: the plan (stable keeps every request), the edge's counters read
back (effective share) and the stickyFallback check."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from fraudmodel_operator.analysis import Ranges, queries
from fraudmodel_operator.api import AnalysisSpec, AnalysisStatus, CheckResult, FraudModelStatus, Verdict
from fraudmodel_operator.edge_routing import StickyTarget, routing_of, routing_rank
from fraudmodel_operator.planner import plan_children
from fraudmodel_operator.routers.replica_ratio import sticky_weights
from fraudmodel_operator.sticky import (
    STICKY_CHECK,
    StickyMeasures,
    assess_sticky,
    judge_sticky,
    measure_sticky,
    sticky_queries,
)
from tests.unit.factories import T0, canary, fraudmodel, track

STICKY = {"stickyBy": {"field": "account_id"}}
SPEC = AnalysisSpec()  # minSamples 100, alpha 0.01, errorRate maxDelta 0.01


def _by_name(children: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(c["kind"], c["metadata"]["name"]): c for c in children}


@pytest.mark.parametrize("routed", [0, 10, 30], ids=["warming", "routed-10", "routed-30"])
def test_with_sticky_the_shared_service_selects_stable_and_the_stable_keeps_its_size(routed: int) -> None:
    status = FraudModelStatus(stable=track("v1", 70), canary=canary("v2", 30, step=2))
    children = _by_name(
        plan_children(fraudmodel("v2", status=status, serving={"replicas": 10}, rollout=STICKY), routed)
    )
    assert children[("Service", "bot")]["spec"]["selector"]["serving.riskml.io/track"] == "stable"
    assert children[("Deployment", "bot-stable")]["spec"]["replicas"] == 10  # it takes every request first
    assert children[("Deployment", "bot-canary")]["spec"]["replicas"] == 3  # sized for its step


@pytest.mark.parametrize(
    ("measures", "verdict", "value"),
    [
        (StickyMeasures(assigned=50, fallbacks=0, step_canary=50, step_total=200), Verdict.INCONCLUSIVE, None),
        (StickyMeasures(assigned=5_000, fallbacks=3, step_canary=5_000, step_total=20_000), Verdict.PASS, 0.0006),
        (StickyMeasures(assigned=2_000, fallbacks=600, step_canary=2_000, step_total=8_000), Verdict.FAIL, 0.3),
        (StickyMeasures(assigned=300, fallbacks=3, step_canary=300, step_total=1_000), Verdict.INCONCLUSIVE, 0.01),
        (StickyMeasures(error="metrics unavailable: down"), Verdict.INCONCLUSIVE, None),
    ],
    ids=["too-few", "healthy", "unreachable-canary", "undecided", "no-metrics"],
)
def test_the_fallback_check(measures: StickyMeasures, verdict: Verdict, value: float | None) -> None:
    result = assess_sticky(SPEC, measures, 30, looks=0)
    assert result.name == STICKY_CHECK
    assert result.verdict == verdict, result.message
    assert result.value == (pytest.approx(value) if value is not None else None)
    assert result.threshold == "fallbacks <= 0.01"


def test_looks_spend_alpha() -> None:
    """The same evidence that passes on the first look is not a pass at a much later look (narrower alpha
    widens the interval)."""
    measures = StickyMeasures(assigned=1_000, fallbacks=2, step_canary=1_000, step_total=4_000)
    assert assess_sticky(SPEC, measures, 30, looks=0).verdict == Verdict.PASS
    late = assess_sticky(SPEC, measures, 30, looks=500)
    assert late.verdict == Verdict.INCONCLUSIVE
    assert late.looks == 501


@pytest.mark.parametrize(
    ("measures", "share"),
    [
        (StickyMeasures(step_canary=300, step_total=1_000), 0.3),
        (StickyMeasures(step_canary=300, step_total=1_000, step_fallbacks=100), 0.2),
        (StickyMeasures(), None),
    ],
    ids=["all-answered", "fallbacks-subtracted", "nothing-counted"],
)
def test_effective_share(measures: StickyMeasures, share: float | None) -> None:
    assert measures.effective_share == (pytest.approx(share) if share is not None else None)


def test_judge_adds_the_check_and_the_share_and_a_failure_fails_the_analysis() -> None:
    status = FraudModelStatus(stable=track("v1", 70), canary=canary("v2", 30, step=2))
    fm = fraudmodel("v2", status=status, rollout=STICKY)
    passed = CheckResult(name="errorRate", verdict=Verdict.PASS)
    analysis = AnalysisStatus(time=T0, weight=30, verdict=Verdict.PASS, checks=[passed])
    measures = StickyMeasures(assigned=2_000, fallbacks=600, step_canary=2_000, step_total=8_000, step_fallbacks=600)
    judged = judge_sticky(fm, analysis, measures)
    assert [c.name for c in judged.checks] == ["errorRate", STICKY_CHECK]
    assert judged.verdict == Verdict.FAIL
    assert judged.effective_share == pytest.approx(0.175)


class Provider:
    def __init__(self) -> None:
        self.queries: list[str] = []

    async def query(self, promql: str) -> list[tuple[dict[str, str], float]]:
        self.queries.append(promql)
        if "by (route)" in promql:
            return [({"route": "canary"}, 290.0), ({"route": "stable"}, 700.0), ({"route": "unkeyed"}, 10.0)]
        if "fallbacks" in promql:
            return [({}, 5.0)]
        return [({}, 2_900.0)]

    async def is_online(self) -> bool:
        return True


def test_measures_read_the_stable_edges_counters() -> None:
    status = FraudModelStatus(stable=track("v1", 70), canary=canary("v2", 30, step=2))
    fm = fraudmodel("v2", status=status, rollout=STICKY)
    provider = Provider()
    measures = asyncio.run(measure_sticky(provider, fm, Ranges(rollout=600, step=120)))
    assert measures == StickyMeasures(step_canary=290, step_total=1_000, step_fallbacks=5, assigned=2_900, fallbacks=5)
    assert all('track="stable"' in q for q in provider.queries)
    queries = sticky_queries(fm, Ranges(rollout=600, step=120))
    assert "[120s]" in queries["step_routes"]
    assert "[600s]" in queries["assigned"]
    assert 'route="canary"' in queries["assigned"]


@pytest.mark.parametrize(
    ("rollout", "routed", "weight"),
    [(STICKY, 30, 30), (STICKY, 10, 10), (STICKY, 0, None), ({}, 30, None)],
    ids=["routed-30", "holding-at-10", "not-routed", "without-stickyBy"],
)
def test_the_routing_config_carries_the_routed_weight(rollout: dict[str, Any], routed: int, weight: int | None) -> None:
    status = FraudModelStatus(stable=track("v1", 70), canary=canary("v2", 30, step=2))
    fm = fraudmodel("v2", status=status, serving={"replicas": 10}, rollout=rollout)
    configmap = _by_name(plan_children(fm, routed))[("ConfigMap", "bot-routing")]
    sticky = routing_of(configmap).sticky
    if weight is None:
        assert sticky is None
        return
    assert sticky == StickyTarget(
        url="http://bot-canary.risk.svc:80", weight=weight, source="field:account_id", salt=canary("v2").revision
    )


def test_a_header_key_is_passed_in_lower_case() -> None:
    status = FraudModelStatus(stable=track("v1", 70), canary=canary("v2", 30, step=2))
    fm = fraudmodel("v2", status=status, rollout={"stickyBy": {"header": "X-Account-Id"}})
    sticky = routing_of(_by_name(plan_children(fm, 30))[("ConfigMap", "bot-routing")]).sticky
    assert sticky is not None
    assert sticky.source == "header:x-account-id"


def test_the_router_reads_the_weight_back_from_the_routing_config() -> None:
    status = FraudModelStatus(stable=track("v1", 70), canary=canary("v2", 30, step=2))
    fm = fraudmodel("v2", status=status, rollout=STICKY)
    configmap = _by_name(plan_children(fm, 30))[("ConfigMap", "bot-routing")]
    assert sticky_weights(configmap) == (70, 30)
    assert sticky_weights(_by_name(plan_children(fm, 0))[("ConfigMap", "bot-routing")]) == (100, 0)
    assert sticky_weights(None) is None


def test_a_rising_weight_is_written_after_the_canary_capacity_and_a_falling_one_first() -> None:
    status = FraudModelStatus(stable=track("v1", 70), canary=canary("v2", 30, step=2))
    fm = fraudmodel("v2", status=status, rollout=STICKY)
    at_10 = _by_name(plan_children(fm, 10))[("ConfigMap", "bot-routing")]
    at_30 = _by_name(plan_children(fm, 30))[("ConfigMap", "bot-routing")]
    assert routing_rank(at_30, at_10) == "expose"
    assert routing_rank(at_10, at_30) == "reduce"


def test_with_sticky_the_stables_latency_is_what_its_edge_answered_alone() -> None:
    """The stable's BentoML duration also counts the requests its edge forwarded (the hop and the
    canary's own time): a slow canary would slow its own baseline."""
    status = FraudModelStatus(stable=track("v1", 70), canary=canary("v2", 30, step=2))
    sticky = queries(fraudmodel("v2", status=status, rollout=STICKY), "stable")["latency"]
    assert "fraud_model_sticky_local_duration_seconds_bucket" in sticky
    assert 'model_version="v1"' in sticky
    canary_side = queries(fraudmodel("v2", status=status, rollout=STICKY), "canary")["latency"]
    assert "bentoml_service_request_duration_seconds_bucket" in canary_side
    plain = queries(fraudmodel("v2", status=status), "stable")["latency"]
    assert "bentoml_service_request_duration_seconds_bucket" in plain
