"""Shadow phases judged on real metrics: the Kopf operator, real Prometheus, real BentoML servers.

Kubernetes is emulated (kmock); the test plays the Deployment controller (pods ready at once) and
the kubelet (it copies the operator's `bot-routing` ConfigMap into the stable server's routing file,
as a mounted volume would be refreshed). Everything else is real: the stable server mirrors to the
shadow server through its own edge, the shadow records the agreement table, Prometheus scrapes
both, and the operator's paired gates decide. Clients send to the stable only, and every answer
they get is checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from scripts.dataplane import Bento, Prometheus, Servers

from fraudmodel_operator.api import FraudModel, parse_duration
from fraudmodel_operator.edge_routing import ROUTING_KEY
from fraudmodel_operator.prometheus import PrometheusProvider
from tests.integration.conftest import GOOD, GOOD_NEXT, MISCALIBRATED
from tests.integration.test_rollout_real import fraudmodel, play_deployment_controller
from tests.kopf_harness import CONFIGMAPS, DEPLOYMENTS, FM, Harness, eventually, operator_harness

pytestmark = pytest.mark.integration

RPS = 200
SHADOW = {
    "duration": "1m",
    "minPairedSamples": 1000,
    "sample": 1.0,
    "gates": {"flipRate": {"maxRate": 0.01}, "flagRateRatio": {"minRatio": 0.67, "maxRatio": 1.5}},
    "then": "Canary",
}


async def play_kubelet(harness: Harness, routing_file: Path, shadow_url: str) -> None:
    """The mounted ConfigMap: its data lands in the stable pod's file, swapped atomically. The shadow
    Service's cluster name is resolved to the shadow server on loopback (cluster DNS and kube-proxy)."""
    last = None
    while True:
        configmap = harness.get(CONFIGMAPS, "bot-routing")
        data = ((configmap or {}).get("data") or {}).get(ROUTING_KEY)
        if data is not None and data != last:
            doc = json.loads(data)
            if doc.get("shadow"):
                assert doc["shadow"]["url"] == "http://bot-shadow.default.svc:80", doc
                doc["shadow"]["url"] = shadow_url
            tmp = routing_file.with_suffix(".swap")
            tmp.write_text(json.dumps(doc))
            tmp.replace(routing_file)
            last = data
        await asyncio.sleep(0.5)


async def play_shadow_deployment(harness: Harness) -> None:
    while True:
        live = harness.get(DEPLOYMENTS, "bot-shadow")
        if live is not None:
            want = int(live["spec"].get("replicas", 1))
            if (live.get("status") or {}).get("readyReplicas") != want:
                await harness.ready("bot-shadow", want)
        await asyncio.sleep(0.2)


async def clients(url: str, bodies: list[dict[str, Any]], answers: Counter[str], rps: float = RPS) -> None:
    """Open-loop clients of the stable Service only (a shadow is on no route); every answer is counted
    by the version that gave it."""
    rng = random.Random(3)
    in_flight: set[asyncio.Task[None]] = set()

    async def one(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
        with contextlib.suppress(httpx.HTTPError):
            r = await client.post(f"{url}/predict", json=body)
            answers[
                r.json().get("version", f"HTTP {r.status_code}") if r.status_code == 200 else str(r.status_code)
            ] += 1

    async with httpx.AsyncClient(timeout=5) as client:
        try:
            while True:
                task = asyncio.get_running_loop().create_task(one(client, rng.choice(bodies)))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                await asyncio.sleep(1 / rps)
        finally:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)


@contextlib.asynccontextmanager
async def shadow_world(
    bento: Bento, servers: Servers, prometheus: Prometheus, version: str, tmp_path: Path, **stable_env: str
) -> AsyncIterator[tuple[Harness, Counter[str], Any]]:
    routing = tmp_path / "routing.json"
    stable = servers.start(GOOD, "stable", FRAUDMODEL_ROUTING_FILE=str(routing), **stable_env)
    shadow = servers.start(version, "shadow")
    prometheus.scrape({"stable": stable.port, "shadow": shadow.port})
    prometheus.start()
    http = httpx.AsyncClient()
    answers: Counter[str] = Counter()

    def provider_for(fm: FraudModel) -> PrometheusProvider:
        prom = fm.spec.rollout.analysis.prometheus
        return PrometheusProvider(http, prom.address, parse_duration(prom.timeout))

    async with operator_harness(provider_for) as harness:
        bodies = bento.payloads(3000, seed=7)
        tasks = [
            asyncio.create_task(play_deployment_controller(harness)),
            asyncio.create_task(play_shadow_deployment(harness)),
            asyncio.create_task(play_kubelet(harness, routing, shadow.url)),
            asyncio.create_task(clients(stable.url, bodies, answers)),
        ]
        try:
            await harness.create(fraudmodel(GOOD, prometheus.url))
            await eventually(lambda: harness.status("bot").get("phase") == "Ready", within=30)
            spec = fraudmodel(version, prometheus.url)["spec"]
            spec["rollout"]["shadow"] = SHADOW
            await harness.patch(FM, "bot", {"spec": spec, "metadata": {"generation": 2}})
            yield harness, answers, shadow
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await http.aclose()


async def test_miscalibrated_shadow_fails_on_flip_rate_while_clients_only_see_stable(
    bento: Bento, servers: Servers, prometheus: Prometheus, tmp_path: Path
) -> None:
    async with shadow_world(bento, servers, prometheus, MISCALIBRATED, tmp_path) as (harness, answers, _):
        await eventually(lambda: harness.status("bot").get("phase") == "RolledBack", within=600)
        status = harness.status("bot")
        assert status["history"][0]["reason"] == "FlipRateFailed", status.get("lastAnalysis")
        degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
        assert degraded["reason"] == "FlipRateFailed"
        checks = {c["name"]: c for c in status["lastAnalysis"]["checks"]}
        assert checks["flipRate"]["verdict"] == "Fail"
        assert checks["flipRate"]["samples"] >= 1000
        assert "shadow" not in status
        assert status["stable"]["version"] == GOOD
        # Every answer came from the stable's model (a 503 is the stable shedding load on two shared cores).
        assert set(answers) - {"503"} == {GOOD}, f"clients got other answers: {answers}"
        assert answers[GOOD] > 1000


async def test_healthy_retrain_passes_shadow_and_proceeds_to_canary(
    bento: Bento, servers: Servers, prometheus: Prometheus, tmp_path: Path
) -> None:
    async with shadow_world(bento, servers, prometheus, GOOD_NEXT, tmp_path) as (harness, answers, _):
        await eventually(lambda: harness.status("bot").get("phase") == "Shadow", within=60)
        status = await eventually(
            lambda: (harness.status("bot").get("canary") or {}).get("version") == GOOD_NEXT and harness.status("bot"),
            within=600,
        )
        checks = {c["name"]: c for c in status["lastAnalysis"]["checks"]}
        assert {c["verdict"] for c in checks.values()} == {"Pass"}, checks
        assert checks["flipRate"]["samples"] >= 1000
        assert "shadow" not in status
        assert status["history"] == [] or status["history"][0]["version"] != GOOD_NEXT
        assert set(answers) - {"503"} == {GOOD}, f"clients got other answers during the shadow phase: {answers}"
