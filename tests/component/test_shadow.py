"""A shadow phase through the real Kopf operator (fake metrics): the shadow track, the routing config
that points the stable edge at it, rollback on a failed paired gate, a pass held for the whole duration."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from fraudmodel_operator.analysis import Vector
from tests.component.test_rollout import deployed, fraudmodel, metrics
from tests.kopf_harness import CONFIGMAPS, DEPLOYMENTS, FM, SERVICES, Harness, eventually

pytestmark = pytest.mark.component


def paired(both: float, only_stable: float, only_shadow: float, neither: float) -> Callable[[str], Vector]:
    cells = {("flag", "flag"): both, ("flag", "allow"): only_stable, ("allow", "flag"): only_shadow}
    cells[("allow", "allow")] = neither
    canary = metrics({"stable": 0.03, "canary": 0.03})

    def answer(promql: str) -> Vector:
        if "fraud_model_paired_" in promql and "delta" not in promql:
            return [({"stable_decision": s, "shadow_decision": h}, n) for (s, h), n in cells.items()]
        if "delta" in promql:
            return [({}, 1.0)]
        return canary(promql)

    return answer


def routing(harness: Harness) -> dict[str, Any]:
    configmap = harness.get(CONFIGMAPS, "bot-routing") or {}
    doc: dict[str, Any] = json.loads((configmap.get("data") or {}).get("routing.json") or "{}")
    return doc


async def shadow_of(harness: Harness, version: str, then: str = "Canary") -> None:
    spec = fraudmodel(version)["spec"]
    spec["rollout"]["shadow"] = {"duration": "1m", "minPairedSamples": 1000, "sample": 0.5, "then": then}
    await harness.patch(FM, "bot", {"spec": spec, "metadata": {"generation": 2}})
    await eventually(lambda: harness.get(DEPLOYMENTS, "bot-shadow"))
    await harness.ready("bot-shadow")


async def test_shadow_track_gets_mirrored_traffic_and_a_failed_gate_removes_it(harness: Harness) -> None:
    harness.provider.answer = paired(10, 2, 1, 200)  # too few pairs: inconclusive
    await deployed(harness)
    await shadow_of(harness, "v2")
    status = await eventually(lambda: harness.status("bot").get("phase") == "Shadow" and harness.status("bot"))
    assert status["shadow"]["version"] == "v2"
    assert "canary" not in status
    shadow = await eventually(lambda: routing(harness).get("shadow"))
    assert shadow == {"url": "http://bot-shadow.default.svc:80", "sample": 0.5, "version": "v2"}
    assert harness.get(SERVICES, "bot-shadow")["spec"]["selector"]["serving.riskml.io/track"] == "shadow"
    assert harness.get(SERVICES, "bot")["spec"]["selector"]["serving.riskml.io/track"] == "stable"
    assert harness.get(DEPLOYMENTS, "bot-stable")["spec"]["template"]["spec"]["containers"][0]["image"] == "bot:v1"
    harness.provider.answer = paired(40, 10, 460, 4490)  # one decision in ten flips
    await eventually(lambda: harness.status("bot").get("phase") == "RolledBack", within=20)
    status = harness.status("bot")
    assert status["history"][0]["reason"] == "FlipRateFailed"
    assert {c["name"] for c in status["lastAnalysis"]["checks"]} == {"flipRate", "pairedFlagRate"}
    await eventually(lambda: harness.get(DEPLOYMENTS, "bot-shadow") is None)
    await eventually(lambda: "shadow" not in routing(harness))
    assert harness.get(DEPLOYMENTS, "bot-canary") is None, "a failed shadow never reaches a canary"


async def test_a_passing_shadow_runs_its_whole_duration_before_any_canary(harness: Harness) -> None:
    harness.provider.answer = paired(200, 2, 3, 19795)
    await deployed(harness)
    await shadow_of(harness, "v2")
    # The gates pass at once; the phase still runs its whole duration (1m) before the canary starts.
    await eventually(lambda: (harness.status("bot").get("shadow") or {}).get("passedAt"), within=20)
    assert harness.get(DEPLOYMENTS, "bot-canary") is None
    assert harness.status("bot")["phase"] == "Shadow"
