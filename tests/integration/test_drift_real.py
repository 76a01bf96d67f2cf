"""Drift after promotion on real metrics: a real bento serves v1 as the stable track, real Prometheus
scrapes it and evaluates the chart's drift rules, the Kopf operator watches it (Kubernetes emulated).

Traffic from the bento's own generator first (the population v1 was validated on), then the
generator's `shift` 0.25 (legitimate customers move: false alarms grow about tenfold). The
operator must say Drifting=False, then True, and the chart's alerts must fire; neither may touch
the model's traffic.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from scripts.dataplane import Bento, Prometheus, Servers, send_traffic

from fraudmodel_operator.api import FraudModel, parse_duration
from fraudmodel_operator.prometheus import PrometheusProvider
from tests.integration.conftest import GOOD
from tests.integration.test_rollout_real import play_deployment_controller
from tests.kopf_harness import eventually, operator_harness
from tests.unit.test_chart import CHART, one, render

pytestmark = pytest.mark.integration

RPS = 200
DRIFT_ALERTS = {"FraudModelScoreDrift", "FraudModelFeatureDrift", "FraudModelFlagRateShift"}


def chart_rules() -> dict[str, Any]:
    """The chart's PrometheusRule groups, with the drift alerts' `for` and traffic floor scaled to a test."""
    sets = (
        "metrics.prometheusRule.enabled=true",
        "metrics.prometheusRule.drift.for=10s",
        "metrics.prometheusRule.drift.minSamples=200",
    )
    rule = one(render(CHART / "ci" / "monitoring-values.yaml", sets=sets), "PrometheusRule")
    return {"groups": rule["spec"]["groups"]}


def fraudmodel(prometheus: str) -> dict[str, Any]:
    return {
        "apiVersion": "serving.riskml.io/v1alpha1",
        "kind": "FraudModel",
        "metadata": {"name": "bot"},
        "spec": {
            "model": {"name": "fraud-detector", "version": GOOD, "image": f"fraud-detector:{GOOD}"},
            "serving": {"replicas": 1},
            "rollout": {"analysis": {"prometheus": {"address": prometheus}}},
            "monitoring": {"interval": "10s", "window": "2m", "minSamples": 1000},
        },
    }


def drifting(status: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == "Drifting"), {})


async def firing(client: httpx.AsyncClient, prometheus: Prometheus) -> set[str]:
    body = (await client.get(f"{prometheus.url}/api/v1/alerts", timeout=5)).json()
    return {
        a["labels"]["alertname"]
        for a in body["data"]["alerts"]
        if a["state"] == "firing" and a["labels"].get("track") == "stable"
    }


async def test_a_drifted_population_sets_drifting_and_fires_the_charts_alerts(
    bento: Bento, servers: Servers, prometheus: Prometheus
) -> None:
    stable = servers.start(GOOD, "stable")
    prometheus.scrape({"stable": stable.port}, rules=chart_rules())
    prometheus.start()
    bodies = bento.payloads(4000, seed=11)
    drifted = bento.payloads(4000, seed=12, shift=0.25)
    http = httpx.AsyncClient()

    def provider_for(fm: FraudModel) -> PrometheusProvider:
        prom = fm.spec.rollout.analysis.prometheus
        return PrometheusProvider(http, prom.address, parse_duration(prom.timeout))

    async with operator_harness(provider_for) as harness:
        urls = {"stable": stable.url, "canary": stable.url}
        tasks = [
            asyncio.create_task(play_deployment_controller(harness)),
            asyncio.create_task(send_traffic(lambda: 0, urls, bodies, rps=RPS)),
        ]
        try:
            await harness.create(fraudmodel(prometheus.url))
            await eventually(lambda: harness.status("bot").get("phase") == "Ready", within=60)
            within = await eventually(lambda: drifting(harness.status("bot")).get("status") == "False", within=300)
            assert drifting(harness.status("bot"))["reason"] == "WithinReference", within
            assert not (await firing(http, prometheus)) & DRIFT_ALERTS

            shifted_at = time.monotonic()
            bodies[:] = drifted  # the generator's shift 0.25 from now on
            condition = await eventually(
                lambda: drifting(harness.status("bot")).get("status") == "True" and drifting(harness.status("bot")),
                within=300,
            )
            condition_after = time.monotonic() - shifted_at
            alerts = await eventually(lambda: firing(http, prometheus), within=300)
            alerts_after = time.monotonic() - shifted_at
            print(
                f"\ndrift: Drifting=True ({condition['reason']}) {condition_after:.0f}s after the shift, "
                f"chart alerts {sorted(alerts)} firing {alerts_after:.0f}s after it\n{condition['message']}"
            )
            assert condition["reason"] in ("ScoreDrift", "FeatureDrift", "FlagRateShift"), condition
            assert alerts & DRIFT_ALERTS, alerts
            events = harness.events(condition["reason"])
            assert events, "no Warning Event for the drift"
            assert events[0]["type"] == "Warning"
            # reported, never acted on: still Ready, serving v1 with all the traffic
            status = harness.status("bot")
            assert status["phase"] == "Ready"
            assert status["stable"]["version"] == GOOD
            assert harness.metrics.drifting.labels("default", "bot")._value.get() == 1
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await http.aclose()
