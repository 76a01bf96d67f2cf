"""A rollout on the real control plane judged on the real data plane.

The operator (`fraudmodel-operator run`) works against the kube-apiserver; its Deployments run
on kwok nodes (no containers), so each track's pods are stood in for by a BentoML server of the
bento on loopback, scraped by Prometheus with the labels the chart's PodMonitor sets, and sent
traffic at the weight the operator writes into the FraudModel's status.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from scripts.dataplane import BENTO, MODELS, Bento, Prometheus, Servers, canary_weight, send_traffic
from tests.cluster.conftest import Cluster, Operator
from tests.cluster.test_operator import status, wait_ready
from tests.integration.test_rollout_real import RPS
from tests.integration.test_rollout_real import fraudmodel as integration_fraudmodel

pytestmark = pytest.mark.cluster

OUTCOME_WITHIN = 480  # seconds: a healthy version needs minutes of flags to pass the flag-rate interval


def _need(what: str, ok: bool) -> None:
    if not ok:
        if os.environ.get("CI"):
            pytest.fail(f"needs {what} (./scripts/test installs it)")
        pytest.skip(f"needs {what}: run ./scripts/test, which installs it")


@pytest.fixture(scope="module")
def bento() -> Bento:
    _need("the bento environment", Path(os.environ.get("FRAUDMODEL_BENTO_PYTHON", Bento().python)).exists())
    _need("Prometheus", shutil.which("prometheus") is not None)
    b = Bento(os.environ.get("FRAUDMODEL_BENTO_PYTHON", Bento().python), BENTO / ".bentoml")
    b.train(list(MODELS))
    return b


@pytest.fixture
def dataplane(bento: Bento, tmp_path: Path) -> Iterator[tuple[Servers, Prometheus]]:
    servers, prometheus = Servers(bento, tmp_path / "servers"), Prometheus(tmp_path / "prometheus")
    try:
        yield servers, prometheus
    finally:
        prometheus.stop()
        servers.stop_all()


def fraudmodel(version: str, prometheus: str) -> str:
    return yaml.safe_dump(integration_fraudmodel(version, prometheus, name="fd"))


async def roll_out(
    cluster: Cluster, namespace: str, operator: Operator, bento: Bento, servers: Servers, prom: Prometheus, canary: str
) -> dict[str, Any]:
    stable_server = servers.start("v1", "stable", "fd")
    canary_server = servers.start(canary, "canary", "fd")
    prom.scrape({"stable": stable_server.port, "canary": canary_server.port}, "fd", namespace)
    prom.start()
    cluster.apply(fraudmodel("v1", prom.url), namespace)
    wait_ready(cluster, namespace, "fd", operator)
    latest: dict[str, Any] = status(cluster, namespace, "fd")

    async def follow() -> None:
        nonlocal latest
        while True:
            latest = await asyncio.to_thread(status, cluster, namespace, "fd")
            await asyncio.sleep(0.5)

    urls = {"stable": stable_server.url, "canary": canary_server.url}
    tasks = [
        asyncio.create_task(follow()),
        asyncio.create_task(send_traffic(lambda: canary_weight(latest), urls, bento.payloads(3000, seed=5), rps=RPS)),
    ]
    try:
        await asyncio.to_thread(cluster.apply, fraudmodel(canary, prom.url), namespace)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + OUTCOME_WITHIN
        while loop.time() < deadline:
            if latest.get("phase") == "RolledBack" or latest.get("stable", {}).get("version") == canary:
                return latest
            await asyncio.sleep(0.5)
        pytest.fail(f"no outcome within {OUTCOME_WITHIN}s: {latest}\n{operator.tail()}")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_healthy_version_is_promoted(
    cluster: Cluster, operator: Operator, namespace: str, bento: Bento, dataplane: tuple[Servers, Prometheus]
) -> None:
    final = await roll_out(cluster, namespace, operator, bento, *dataplane, canary="v2")
    assert final["stable"]["version"] == "v2", [c for c in final["lastAnalysis"]["checks"] if c["verdict"] != "Pass"]
    assert final["history"][0]["outcome"] == "Promoted"
    image = cluster.get_json("deployment", "fd-stable", "-n", namespace)["spec"]["template"]["spec"]["containers"][0]
    assert image["image"] == "fraud-detector:v2"


async def test_regressed_version_is_rolled_back(
    cluster: Cluster, operator: Operator, namespace: str, bento: Bento, dataplane: tuple[Servers, Prometheus]
) -> None:
    final = await roll_out(cluster, namespace, operator, bento, *dataplane, canary="v2-miscalibrated")
    assert final["phase"] == "RolledBack", final
    degraded = next(c for c in final["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] in ("ScoreDriftFailed", "FlagRateFailed"), degraded
    events = cluster.get_json("events", "-n", namespace, "--field-selector", "involvedObject.name=fd")["items"]
    rolled = [e for e in events if e["reason"] == "RolledBack"]
    assert rolled, [e["reason"] for e in events]
    assert rolled[0]["type"] == "Warning"
    assert "threshold" in rolled[0]["message"]
    assert cluster.get_json("fraudmodel", "fd", "-n", namespace)["spec"]["model"]["version"] == "v2-miscalibrated"
