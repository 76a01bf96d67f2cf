"""Rollouts judged on real metrics: the Kopf operator, real Prometheus, real BentoML servers, real traffic.

Kubernetes is emulated (kmock) and the test plays the Deployment controller (pods become ready
at once); everything the analysis reads is real: each track is a BentoML server of the bento,
traffic is split at the weight the operator writes into status, Prometheus scrapes both.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from scripts.dataplane import SCENARIOS, Bento, Prometheus, Servers, canary_weight, send_traffic

from fraudmodel_operator.api import FraudModel, parse_duration
from fraudmodel_operator.prometheus import PrometheusProvider
from tests.integration.conftest import GOOD, GOOD_NEXT, MISCALIBRATED
from tests.kopf_harness import DEPLOYMENTS, FM, Harness, eventually, operator_harness

pytestmark = pytest.mark.integration

# The flag-rate interval closes on flags, not requests: at a ~1% flag rate, 250 requests a second give
# the canary ~0.5 flags a second at 20%, enough for a healthy version to pass within minutes.
RPS = 250


def fraudmodel(
    version: str,
    prometheus: str,
    name: str = "bot",
    checks: dict[str, Any] | None = None,
    steps: list[int] | None = None,
) -> dict[str, Any]:
    """The FraudModel of the real-metrics tiers: two quick steps, judged on `prometheus`."""
    return {
        "apiVersion": "serving.riskml.io/v1alpha1",
        "kind": "FraudModel",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": "fraud-detector", "version": version, "image": f"fraud-detector:{version}"},
            "serving": {"replicas": 2},
            "rollout": {
                "steps": steps or [20, 50],
                # Fewer looks spend less alpha each: 15s lets the flag-rate interval close in minutes.
                "interval": "15s",
                "progressDeadline": "10m",
                "analysis": {
                    "prometheus": {"address": prometheus},
                    "minSamples": 40,
                    # Two shared cores make a p95 of ~10 ms swing by ~10 ms under this tier's own load
                    # (a point estimate; the faults it must catch are 80 ms): 30 ms of tolerance.
                    "checks": {"latency": {"toleranceSeconds": 0.03}, **(checks or {})},
                    "failureLimit": 2,
                    "inconclusiveLimit": 100,
                },
            },
        },
    }


async def play_deployment_controller(harness: Harness) -> None:
    """Every Deployment's pods become ready at once (the pods are the BentoML servers outside)."""
    while True:
        for name in ("bot-stable", "bot-canary"):
            live = harness.get(DEPLOYMENTS, name)
            if live is None:
                continue
            want = int(live["spec"].get("replicas", 1))
            if (live.get("status") or {}).get("readyReplicas") != want:
                await harness.ready(name, want)
        await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def rollout_world(
    bento: Bento,
    servers: Servers,
    prometheus: Prometheus,
    canary_version: str,
    checks: dict[str, Any] | None = None,
    steps: list[int] | None = None,
    rps: float = RPS,
    **canary_env: str,
) -> AsyncIterator[Harness]:
    bodies = bento.payloads(3000, seed=99)
    stable = servers.start(GOOD, "stable")
    if canary_env:
        canary = servers.start(canary_version, "canary", model=SCENARIOS[canary_version].model, **canary_env)
    else:
        canary = servers.start_scenario(canary_version, "canary", bodies, stable.url)
    prometheus.scrape({"stable": stable.port, "canary": canary.port})
    prometheus.start()
    http = httpx.AsyncClient()

    def provider_for(fm: FraudModel) -> PrometheusProvider:
        prom = fm.spec.rollout.analysis.prometheus
        return PrometheusProvider(http, prom.address, parse_duration(prom.timeout))

    urls = {"stable": stable.url, "canary": canary.url}
    async with operator_harness(provider_for) as harness:
        tasks = [
            asyncio.create_task(play_deployment_controller(harness)),
            # The routed weight, not the read-back: the emulated API merges the shared Service's selector
            # (scripts/dataplane.py, canary_weight).
            asyncio.create_task(
                send_traffic(lambda: canary_weight(harness.status("bot"), effective=False), urls, bodies, rps=rps)
            ),
        ]
        try:
            await harness.create(fraudmodel(GOOD, prometheus.url))
            await eventually(lambda: harness.status("bot").get("phase") == "Ready", within=30)
            # As in production, Prometheus has history before the rollout starts.
            stable_traffic = 'increase(bentoml_service_request_total{track="stable",endpoint=~"/predict.*"}[15s]) > 0'
            await asyncio.to_thread(prometheus.wait_for_data, stable_traffic)
            spec = fraudmodel(canary_version, prometheus.url, checks=checks, steps=steps)["spec"]
            await harness.patch(FM, "bot", {"spec": spec, "metadata": {"generation": 2}})
            yield harness
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await http.aclose()


def outcome(harness: Harness) -> str | None:
    status = harness.status("bot")
    if status.get("phase") == "RolledBack":
        return "RolledBack"
    if status.get("stable", {}).get("version") != GOOD:
        return "Promoted"
    return None


async def test_healthy_canary_is_promoted(bento: Bento, servers: Servers, prometheus: Prometheus) -> None:
    async with rollout_world(bento, servers, prometheus, GOOD_NEXT) as harness:
        result = await eventually(lambda: outcome(harness), within=600)
        status = harness.status("bot")
        assert result == "Promoted", [c for c in status["lastAnalysis"]["checks"] if c["verdict"] != "Pass"]
        checks = {c["name"]: c for c in status["lastAnalysis"]["checks"]}
        assert {c["verdict"] for c in checks.values()} == {"Pass"}
        assert checks["scoreDrift"]["samples"] >= 40


async def test_miscalibrated_canary_is_rolled_back(bento: Bento, servers: Servers, prometheus: Prometheus) -> None:
    async with rollout_world(bento, servers, prometheus, MISCALIBRATED) as harness:
        result = await eventually(lambda: outcome(harness), within=600)
        status = harness.status("bot")
        assert result == "RolledBack", status.get("lastAnalysis")
        degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
        assert degraded["reason"] in ("ScoreDriftFailed", "FlagRateFailed"), degraded
        failed = [c for c in status["lastAnalysis"]["checks"] if c["verdict"] == "Fail"]
        assert failed, status["lastAnalysis"]
        assert all(c["value"] is not None and c["threshold"] for c in failed)
        assert status["stable"]["version"] == GOOD
        assert status["canary"]["weight"] == 0


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ({"FRAUDMODEL_FAULT_ERROR_RATE": "0.2"}, "ErrorRateFailed"),
        ({"FRAUDMODEL_FAULT_DELAY_MS": "80"}, "LatencyFailed"),
    ],
    ids=["errors", "latency"],
)
async def test_failing_or_slow_canary_is_rolled_back(
    bento: Bento, servers: Servers, prometheus: Prometheus, fault: dict[str, str], reason: str
) -> None:
    """The same good model, with one fifth of scoring calls failing, or every call 80ms slower."""
    async with rollout_world(bento, servers, prometheus, GOOD_NEXT, **fault) as harness:
        result = await eventually(lambda: outcome(harness), within=600)
        status = harness.status("bot")
        assert result == "RolledBack", status.get("lastAnalysis")
        degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
        assert degraded["reason"] == reason, degraded
        failed = {c["name"]: c for c in status["lastAnalysis"]["checks"] if c["verdict"] == "Fail"}
        check = failed[reason.removesuffix("Failed")[0].lower() + reason.removesuffix("Failed")[1:]]
        assert check["value"] > check["baseline"], check
        assert set(failed) <= {"errorRate", "latency"}, failed  # the model itself is fine: no drift, no flag change


async def test_no_promotion_while_prometheus_is_down(bento: Bento, servers: Servers, prometheus: Prometheus) -> None:
    async with rollout_world(bento, servers, prometheus, GOOD_NEXT) as harness:
        await eventually(lambda: (harness.status("bot").get("canary") or {}).get("weight") == 20, within=60)
        prometheus.stop()
        down = await eventually(
            lambda: (
                "metrics unavailable" in str((harness.status("bot").get("lastAnalysis") or {}).get("checks"))
                and harness.status("bot")
            ),
            within=60,
        )
        assert down["lastAnalysis"]["verdict"] == "Inconclusive"
        for _ in range(3):  # three more analysis intervals with Prometheus down: never promoted
            await asyncio.sleep(15)
            assert outcome(harness) is None
            assert harness.status("bot")["canary"]["weight"] == 20
        prometheus.start()
        assert await eventually(lambda: outcome(harness), within=600) == "Promoted"
