"""Watching the promoted model: the real Kopf operator measures a Ready FraudModel's stable model against
its reference (fake Prometheus), sets Drifting, posts Events, exports the metric, and touches nothing else."""

from __future__ import annotations

import math
from typing import Any

import pytest

from fraudmodel_operator.analysis import Vector
from tests.kopf_harness import DEPLOYMENTS, NS, Harness, eventually

pytestmark = pytest.mark.component

EDGES = (0.001, 0.01, 0.1, 0.28, 0.5, 0.9, math.inf)
REFERENCE = (0.30, 0.75, 0.95, 0.989, 0.993, 0.997, 1.0)  # cumulative shares; 1.1% at or above 0.28
DRIFTED = (0.05, 0.30, 0.70, 0.89, 0.93, 0.97, 1.0)  # legitimate traffic shifted: 11% flagged


def prometheus(live: tuple[float, ...], n: float = 50_000.0) -> Any:
    """Answers the monitoring queries of a stable track whose scores are distributed as `live`."""

    def answer(promql: str) -> Vector:
        if "fraud_model_reference_score_bucket" in promql:
            return [({"le": str(le)}, share) for le, share in zip(EDGES, REFERENCE, strict=True)]
        if "fraud_model_score_bucket" in promql:
            return [({"le": str(le)}, share * n) for le, share in zip(EDGES, live, strict=True)]
        if "fraud_model_reference_samples" in promql:
            return [({}, 10_000.0)]
        if "fraud_model_reference_flag_rate" in promql:
            return [({}, 1 - REFERENCE[3])]
        if "fraud_model_predictions_total" in promql:
            return [({}, n)]
        if 'decision="flag"' in promql:
            return [({}, n * (1 - live[3]))]
        return []

    return answer


def fraudmodel() -> dict[str, Any]:
    return {
        "apiVersion": "serving.riskml.io/v1alpha1",
        "kind": "FraudModel",
        "metadata": {"name": "bot"},
        "spec": {
            "model": {"name": "bot-detector", "version": "v1", "image": "bot:v1"},
            "serving": {"replicas": 2},
            "monitoring": {"interval": "10s"},
        },
    }


def drifting(harness: Harness) -> dict[str, Any]:
    return next((c for c in harness.status("bot").get("conditions", []) if c["type"] == "Drifting"), {})


async def test_a_drifting_stable_model_is_reported_and_left_serving(harness: Harness) -> None:
    harness.provider.answer = prometheus(DRIFTED)
    await harness.create(fraudmodel())
    await eventually(lambda: harness.get(DEPLOYMENTS, "bot-stable"))
    await harness.ready("bot-stable")
    # The stable is watched from its first deployment on (WATCHED_PHASES), so the drift may be
    # reported before the FraudModel is Ready: wait for both.
    condition = await eventually(
        lambda: (
            harness.status("bot").get("phase") == "Ready"
            and drifting(harness).get("status") == "True"
            and drifting(harness)
        )
    )
    assert condition["reason"] == "ScoreDrift", condition
    assert "stable v1 drifts from its training reference" in condition["message"]
    assert "flag rate 11.00%" in condition["message"], condition["message"]  # every drifting signal named
    warning = await eventually(lambda: harness.events("ScoreDrift"))
    assert warning[0]["type"] == "Warning"
    assert warning[0]["message"] == condition["message"]
    assert harness.metrics.drifting.labels(NS, "bot")._value.get() == 1
    assert harness.metrics.drift_value.labels(NS, "bot", "flagRate")._value.get() == pytest.approx(10.0)
    # Reported, never acted on: the model keeps serving as declared, all traffic on the stable.
    status = harness.status("bot")
    assert status["phase"] == "Ready"
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    assert (harness.get(DEPLOYMENTS, "bot-stable") or {})["spec"]["replicas"] == 2
    assert harness.get(DEPLOYMENTS, "bot-canary") is None

    # The population comes back: the next measurement (an interval later) clears it.
    harness.provider.answer = prometheus(REFERENCE)
    cleared = await eventually(lambda: drifting(harness).get("status") == "False" and drifting(harness), within=20)
    assert cleared["reason"] == "WithinReference"
    resolved = await eventually(lambda: harness.events("DriftResolved"))
    assert resolved[0]["type"] == "Normal"
    assert harness.metrics.drifting.labels(NS, "bot")._value.get() == 0
