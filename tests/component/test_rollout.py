"""Canary rollouts through the real Kopf operator: promotion, automatic rollback, retry, fake metrics."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from fraudmodel_operator.analysis import Vector
from tests.kopf_harness import DEPLOYMENTS, FM, SERVICES, Harness, eventually

pytestmark = pytest.mark.component

LOW = [8, 6, 5, 4, 3, 2, 2, 1, 1, 1, 0.5, 0.5, 0.5, 0.3, 0.3, 0.2, 0.2, 0.2, 0.2, 0.1]


def metrics(flag_rate: dict[str, float]) -> Any:
    """Prometheus answers: both tracks serve 20,000 requests (enough flags for the flag-rate interval
    to be conclusive at the first look); flag rates per track as given."""

    def answer(promql: str) -> Vector:
        track = "canary" if 'track="canary"' in promql else "stable"
        n = 20_000.0
        if "fraud_model_score_bucket" in promql:
            out, running = [], 0.0
            for i, w in enumerate(LOW):
                running += n * w / sum(LOW)
                out.append(({"le": str((i + 1) / 20)}, running))
            return [*out, ({"le": "+Inf"}, running)]
        if "request_duration_seconds_bucket" in promql:
            return [({"le": "0.01"}, n * 0.9), ({"le": "0.025"}, n), ({"le": "+Inf"}, n)]
        if 'decision="flag"' in promql:
            return [({}, n * flag_rate[track])]
        if "http_response_code" in promql or "rejected" in promql or "shed" in promql:
            return [({}, 0.0)]
        return [({}, n)]  # requests, predictions

    return answer


def fraudmodel(version: str) -> dict[str, Any]:
    return {
        "apiVersion": "serving.riskml.io/v1alpha1",
        "kind": "FraudModel",
        "metadata": {"name": "bot"},
        "spec": {
            "model": {"name": "bot-detector", "version": version, "image": f"bot:{version}"},
            "serving": {"replicas": 4},
            "rollout": {
                "steps": [25, 50],
                "interval": "1s",
                "analysis": {"failureLimit": 2, "minSamples": 100},
                "onRollback": {"scaleDownDelay": "1s"},
            },
        },
    }


async def deployed(harness: Harness) -> None:
    await harness.create(fraudmodel("v1"))
    await eventually(lambda: harness.get(DEPLOYMENTS, "bot-stable"))
    await harness.ready("bot-stable")
    await eventually(lambda: harness.status("bot").get("phase") == "Ready")


async def new_version(harness: Harness, version: str, generation: int = 2) -> None:
    spec = fraudmodel(version)["spec"]
    await harness.patch(FM, "bot", {"spec": spec, "metadata": {"generation": generation}})
    await eventually(lambda: harness.get(DEPLOYMENTS, "bot-canary"))
    await harness.ready("bot-canary", 1)


async def play_canary_controller(harness: Harness) -> None:
    """The canary's pods become ready at whatever count its step asks for (a step's weight is
    routed, and so judged, only once the canary has the ready pods for it)."""
    while True:
        live = harness.get(DEPLOYMENTS, "bot-canary")
        if live is not None and (live.get("status") or {}).get("readyReplicas") != live["spec"].get("replicas", 1):
            await harness.ready("bot-canary")
        await asyncio.sleep(0.1)


async def test_healthy_canary_steps_up_and_is_promoted(harness: Harness) -> None:
    harness.provider.answer = metrics({"stable": 0.03, "canary": 0.03})
    await deployed(harness)
    await new_version(harness, "v2")
    weights: set[int] = set()

    def promoted() -> bool:
        status = harness.status("bot")
        weights.add((status.get("canary") or {}).get("weight", 0))
        return status.get("stable", {}).get("version") == "v2"

    controller = asyncio.create_task(play_canary_controller(harness))
    try:
        await eventually(promoted, within=20)
    finally:
        controller.cancel()
    assert {25, 50} <= weights, f"the canary went through each step: {weights}"
    deployment = harness.get(DEPLOYMENTS, "bot-stable")
    assert deployment is not None
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "bot:v2"
    await harness.ready("bot-stable")
    await eventually(lambda: harness.status("bot").get("phase") == "Ready" and "canary" not in harness.status("bot"))
    await eventually(lambda: harness.get(DEPLOYMENTS, "bot-canary") is None)
    assert harness.get(SERVICES, "bot-canary") is None
    assert harness.status("bot")["history"][0]["outcome"] == "Promoted"
    assert harness.provider.queries, "the analysis queried the metric provider"


async def test_canary_flagging_five_times_more_is_rolled_back(harness: Harness) -> None:
    harness.provider.answer = metrics({"stable": 0.03, "canary": 0.15})
    await deployed(harness)
    await new_version(harness, "v2")
    await eventually(lambda: harness.status("bot").get("phase") == "RolledBack", within=20)
    status = harness.status("bot")
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "FlagRateFailed")
    assert "flagRate=" in degraded["message"]
    assert "[0.5, 2.0]" in degraded["message"], "the message names the threshold"
    assert status["canary"]["weight"] == 0
    assert status["stable"]["version"] == "v1"
    assert status["rollbacks"] == 1
    warnings = await eventually(lambda: harness.events("RolledBack"))
    assert warnings[0]["type"] == "Warning"
    assert harness.metrics.rollbacks.labels("default", "bot", "FlagRateFailed")._value.get() == 1
    await eventually(lambda: (harness.get(DEPLOYMENTS, "bot-canary") or {}).get("spec", {}).get("replicas") == 0)
    assert harness.get(FM, "bot")["spec"]["model"]["version"] == "v2", "spec is never written"

    # Retrying the same version under GitOps: an annotation, not a spec change.
    harness.provider.answer = metrics({"stable": 0.03, "canary": 0.03})
    await harness.patch(FM, "bot", {"metadata": {"annotations": {"serving.riskml.io/retry": "1"}}})
    await eventually(lambda: harness.status("bot").get("phase") == "Progressing")
    controller = asyncio.create_task(play_canary_controller(harness))
    try:
        await eventually(lambda: harness.status("bot").get("stable", {}).get("version") == "v2", within=20)
    finally:
        controller.cancel()


async def test_pause_annotation_holds_the_weight(harness: Harness) -> None:
    harness.provider.answer = metrics({"stable": 0.03, "canary": 0.03})
    await deployed(harness)
    await harness.patch(FM, "bot", {"metadata": {"annotations": {"serving.riskml.io/pause": "true"}}})
    await new_version(harness, "v2")
    await eventually(lambda: harness.status("bot").get("phase") == "Paused")
    queries = len(harness.provider.queries)
    reconciles = harness.metrics.reconciles.labels("unchanged")._value.get()
    await eventually(lambda: harness.metrics.reconciles.labels("unchanged")._value.get() >= reconciles + 5)
    assert harness.status("bot")["canary"]["weight"] in (0, 25)
    assert len(harness.provider.queries) == queries, "no analysis while paused"


async def test_a_paused_canary_is_still_analysed_and_rolled_back_on_failure(harness: Harness) -> None:
    """Pause stops advancing, not protection: a paused canary flagging five times more still goes."""
    harness.provider.answer = metrics({"stable": 0.03, "canary": 0.03})
    await deployed(harness)
    await new_version(harness, "v2")
    await eventually(lambda: (harness.status("bot").get("canary") or {}).get("weight", 0) >= 25, within=20)
    await harness.patch(FM, "bot", {"metadata": {"annotations": {"serving.riskml.io/pause": "true"}}})
    await eventually(lambda: harness.status("bot").get("phase") == "Paused")
    harness.provider.answer = metrics({"stable": 0.03, "canary": 0.15})
    await eventually(lambda: harness.status("bot").get("phase") == "RolledBack", within=20)
    degraded = next(c for c in harness.status("bot")["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "FlagRateFailed"
