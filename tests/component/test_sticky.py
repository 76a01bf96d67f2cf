"""Account-sticky canaries through the real Kopf operator: the weight travels in the routing config (never
through the shared Service or the stable's size), the analysis reads the stable edge's counters."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from fraudmodel_operator.analysis import Vector
from tests.component.test_rollout import fraudmodel, metrics, play_canary_controller
from tests.kopf_harness import CONFIGMAPS, DEPLOYMENTS, FM, SERVICES, Harness, eventually

pytestmark = pytest.mark.component

ASSIGNED = 5_000.0  # canary-keyed transactions the stable edge counted


def sticky_fm(version: str) -> dict[str, Any]:
    fm = fraudmodel(version)
    fm["spec"]["rollout"]["stickyBy"] = {"field": "account_id"}
    return fm


def edge_metrics(fallback_share: float) -> Any:
    """Prometheus answers of test_rollout (healthy tracks), plus the stable edge's split counters."""
    base = metrics({"stable": 0.03, "canary": 0.03})

    def answer(promql: str) -> Vector:
        if "fraud_model_sticky_local_duration_seconds_bucket" in promql:
            return base("bentoml_service_request_duration_seconds_bucket")
        if "by (route)" in promql:
            return [({"route": "canary"}, ASSIGNED), ({"route": "stable"}, 14_000.0), ({"route": "unkeyed"}, 1_000.0)]
        if "fraud_model_sticky_fallbacks_total" in promql:
            return [({}, ASSIGNED * fallback_share)]
        if "fraud_model_sticky_transactions_total" in promql:
            return [({}, ASSIGNED)]
        return base(promql)

    return answer


def routing(harness: Harness) -> dict[str, Any]:
    configmap = harness.get(CONFIGMAPS, "bot-routing") or {}
    document: dict[str, Any] = json.loads((configmap.get("data") or {}).get("routing.json", "{}"))
    return document


async def started(harness: Harness) -> None:
    await harness.create(sticky_fm("v1"))
    await eventually(lambda: harness.get(DEPLOYMENTS, "bot-stable"))
    await harness.ready("bot-stable")
    await eventually(lambda: harness.status("bot").get("phase") == "Ready")
    await harness.patch(FM, "bot", {"spec": sticky_fm("v2")["spec"], "metadata": {"generation": 2}})
    await eventually(lambda: harness.get(DEPLOYMENTS, "bot-canary"))


async def test_the_weight_travels_in_the_routing_config_and_the_stable_keeps_every_request(harness: Harness) -> None:
    harness.provider.answer = edge_metrics(0.0)
    await started(harness)
    sticky_weights: set[int] = set()
    selectors: set[str | None] = set()
    stable_sizes: set[int] = set()

    def promoted() -> bool:
        sticky = routing(harness).get("sticky")
        if sticky is not None:
            sticky_weights.add(sticky["weight"])
            assert sticky["url"] == "http://bot-canary.default.svc:80"
            assert sticky["source"] == "field:account_id"
        shared = harness.get(SERVICES, "bot") or {}
        selectors.add(((shared.get("spec") or {}).get("selector") or {}).get("serving.riskml.io/track"))
        stable = harness.get(DEPLOYMENTS, "bot-stable") or {}
        stable_sizes.add(int((stable.get("spec") or {}).get("replicas", 0)))
        return harness.status("bot").get("stable", {}).get("version") == "v2"

    controller = asyncio.create_task(play_canary_controller(harness))
    try:
        await eventually(promoted, within=20)
    finally:
        controller.cancel()
    assert {25, 50} <= sticky_weights, sticky_weights
    assert selectors == {"stable"}, "the shared Service never selects the canary's pods"
    assert stable_sizes == {4}, "the stable takes every request first: it never shrinks"
    last = harness.status("bot")["history"][0]
    assert last["outcome"] == "Promoted"


async def test_a_canary_the_stable_edge_cannot_reach_is_rolled_back(harness: Harness) -> None:
    harness.provider.answer = edge_metrics(0.3)
    await started(harness)
    controller = asyncio.create_task(play_canary_controller(harness))
    try:
        await eventually(lambda: harness.status("bot").get("phase") == "RolledBack", within=20)
    finally:
        controller.cancel()
    status = harness.status("bot")
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "StickyFallbackFailed")
    checks = {c["name"]: c for c in status["lastAnalysis"]["checks"]}
    assert checks["stickyFallback"]["value"] == pytest.approx(0.3)
    assert status["lastAnalysis"]["effectiveShare"] == pytest.approx((ASSIGNED * 0.7) / 20_000)
    await eventually(lambda: routing(harness).get("sticky") is None)  # nothing forwarded after the rollback
