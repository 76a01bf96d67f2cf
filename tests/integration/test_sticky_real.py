"""Account-sticky canaries on real servers: the operator's routing config reaches a real stable BentoML
server's edge, which forwards the canary's accounts to a real canary server; Prometheus scrapes both
and the analysis reads the edge's own counters.

Kubernetes is emulated (kmock). The test plays two controllers: the Deployment controller (pods are
ready at once) and the kubelet, which copies the `<name>-routing` ConfigMap into the file the stable
server reads (`FRAUDMODEL_ROUTING_FILE`), by an atomic rename as the kubelet's `..data` swap; the one
liberty is the canary's URL, the canary Service's cluster DNS name rewritten to the canary server's
loopback address. Every request goes to the stable server (the shared Service selects the stable
pods only); each answer says which version made it and which routing config assigned it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from scripts.dataplane import Bento, Prometheus, Servers

from fraudmodel_operator.api import FraudModel, parse_duration
from fraudmodel_operator.edge_routing import ROUTING_KEY
from fraudmodel_operator.prometheus import PrometheusProvider
from tests.integration.conftest import GOOD, GOOD_NEXT
from tests.integration.test_rollout_real import fraudmodel, outcome, play_deployment_controller
from tests.kopf_harness import CONFIGMAPS, FM, SERVICES, Harness, eventually, operator_harness

pytestmark = pytest.mark.integration

RPS = 100
ACCOUNTS = 1_000  # each account sends a request every ~10 s
# The routing is under test, not the models: the checks that need many flags to decide (flag rate,
# drift) and the latency check are off, so the steps advance on the error, shed, rejection and
# stickyFallback checks within minutes even on a loaded machine.
CHECKS = {"flagRate": {"enabled": False}, "scoreDrift": {"enabled": False}, "latency": {"enabled": False}}


@dataclass
class Seen:
    """Answers by routing config revision: account -> versions that answered it."""

    by_revision: dict[str, dict[str, set[str]]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(set)))
    documents: dict[str, dict[str, Any]] = field(default_factory=dict)  # revision -> routing document
    statuses: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    transport_errors: int = 0
    stable_url: str = ""


def counter_total(metrics_text: str, name: str) -> float:
    """Sum of a counter's samples in a /metrics page."""
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in metrics_text.splitlines() if line.startswith((name + "{", name + " "))
    )


async def play_kubelet(harness: Harness, path: Path, canary_url: str, seen: Seen) -> None:
    """Copy the routing ConfigMap into the stable server's file whenever it changes (atomically)."""
    written = None
    while True:
        configmap = harness.get(CONFIGMAPS, "bot-routing")
        data = ((configmap or {}).get("data") or {}).get(ROUTING_KEY)
        if data is not None and data != written:
            document = json.loads(data)
            if "sticky" in document:
                document["sticky"]["url"] = canary_url
            seen.documents[document.get("revision", "")] = document
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(document))
            os.replace(tmp, path)
            written = data
        await asyncio.sleep(0.5)


async def send_keyed_traffic(
    url: str, bodies: list[dict[str, Any]], seen: Seen, rps: float, stop: asyncio.Event
) -> None:
    """Open-loop traffic to the shared Service (the stable server) with an account id per transaction,
    until `stop`; then the requests in flight finish before the client closes (a request cancelled
    mid-flight can leave its socket to the garbage collector)."""
    rng = random.Random(3)
    in_flight: set[asyncio.Task[None]] = set()

    async def one(client: httpx.AsyncClient, body: dict[str, Any], account: str) -> None:
        try:
            response = await client.post(f"{url}/predict", json={**body, "account_id": account})
        except httpx.HTTPError:
            seen.transport_errors += 1
            return
        seen.statuses[response.status_code] += 1
        revision = response.headers.get("x-fraudmodel-routing")
        if response.status_code == 200 and revision is not None:
            seen.by_revision[revision][account].add(response.json()["version"])

    async with httpx.AsyncClient(timeout=5) as client:
        i = 0
        while not stop.is_set():
            account = f"acct-{rng.randrange(ACCOUNTS):05d}"
            task = asyncio.get_running_loop().create_task(one(client, bodies[i % len(bodies)], account))
            i += 1
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            await asyncio.sleep(1 / rps)
        await asyncio.gather(*in_flight, return_exceptions=True)


@contextlib.asynccontextmanager
async def sticky_world(
    bento: Bento, servers: Servers, prometheus: Prometheus, tmp_path: Path, seen: Seen
) -> AsyncIterator[Harness]:
    bodies = bento.payloads(3000, seed=99)
    routing_file = tmp_path / "routing.json"
    # A generous hop timeout: on two shared cores a forward can wait behind other work, and a timeout
    # (answered by the stable, as the policy says) is not what this test is about; it counts them.
    # and no shedding: the machine's own load is not under test either.
    stable = servers.start(
        GOOD,
        "stable",
        FRAUDMODEL_ROUTING_FILE=str(routing_file),
        FRAUDMODEL_STICKY_TIMEOUT_MS="2000",
        FRAUDMODEL_MAX_QUEUE_MS="5000",
    )
    seen.stable_url = stable.url
    canary = servers.start(GOOD_NEXT, "canary")
    prometheus.scrape({"stable": stable.port, "canary": canary.port})
    prometheus.start()
    http = httpx.AsyncClient()

    def provider_for(fm: FraudModel) -> PrometheusProvider:
        prom = fm.spec.rollout.analysis.prometheus
        return PrometheusProvider(http, prom.address, parse_duration(prom.timeout))

    stop = asyncio.Event()
    async with operator_harness(provider_for) as harness:
        traffic = asyncio.create_task(send_keyed_traffic(stable.url, bodies, seen, RPS, stop))
        tasks = [
            asyncio.create_task(play_deployment_controller(harness)),
            asyncio.create_task(play_kubelet(harness, routing_file, canary.url, seen)),
        ]
        try:
            first = fraudmodel(GOOD, prometheus.url, checks=CHECKS)
            first["spec"]["rollout"]["stickyBy"] = {"field": "account_id"}
            await harness.create(first)
            await eventually(lambda: harness.status("bot").get("phase") == "Ready", within=30)
            stable_traffic = 'increase(bentoml_service_request_total{track="stable",endpoint=~"/predict.*"}[15s]) > 0'
            await asyncio.to_thread(prometheus.wait_for_data, stable_traffic)
            spec = fraudmodel(GOOD_NEXT, prometheus.url, checks=CHECKS)["spec"]
            spec["rollout"]["stickyBy"] = {"field": "account_id"}
            await harness.patch(FM, "bot", {"spec": spec, "metadata": {"generation": 2}})
            yield harness
        finally:
            stop.set()
            await traffic
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await http.aclose()


async def test_sticky_canary_keeps_each_account_on_one_track_and_is_promoted(
    bento: Bento, servers: Servers, prometheus: Prometheus, tmp_path: Path
) -> None:
    seen = Seen()
    async with sticky_world(bento, servers, prometheus, tmp_path, seen) as harness:
        result = await eventually(lambda: outcome(harness), within=600)
        status = harness.status("bot")
        shared = harness.get(SERVICES, "bot")
        async with httpx.AsyncClient(timeout=5) as client:
            edge = (await client.get(f"{seen.stable_url}/metrics")).text
    fallbacks = counter_total(edge, "fraud_model_sticky_fallbacks_total")
    forwarded = counter_total(edge, "fraud_model_sticky_transactions_total")
    checks = {c["name"]: c for c in status["lastAnalysis"]["checks"]}
    assert result == "Promoted", [c for c in checks.values() if c["verdict"] != "Pass"]
    assert checks["stickyFallback"]["verdict"] == "Pass", checks["stickyFallback"]
    assert shared is not None
    assert shared["spec"]["selector"]["serving.riskml.io/track"] == "stable"  # every request reaches stable

    # Clients only ever got answers: no canary failure reached them.
    assert set(seen.statuses) == {200}, dict(seen.statuses)
    assert seen.transport_errors == 0
    assert fallbacks <= 0.005 * forwarded, (fallbacks, forwarded)

    weights = {
        revision: doc["sticky"]["weight"] for revision, doc in seen.documents.items() if doc.get("sticky") is not None
    }
    assert sorted(set(weights.values()))[:2] == [20, 50], weights  # both steps reached the edge
    for revision, accounts in seen.by_revision.items():
        # Within one routing config (one step), each account got one version's answers.
        # (A fallback answers a canary account from the stable: each can mix at most one account.)
        mixed = {a: v for a, v in accounts.items() if len(v) > 1}
        assert len(mixed) <= fallbacks, (revision, weights.get(revision), fallbacks, list(mixed.items())[:5])
    on_canary = {
        weights[r]: {a for a, v in accounts.items() if GOOD_NEXT in v}
        for r, accounts in seen.by_revision.items()
        if r in weights
    }
    answered = {weights[r]: set(accounts) for r, accounts in seen.by_revision.items() if r in weights}
    # The canary's accounts at 20% stayed on it at 50% (those that sent a request in both steps).
    both = on_canary[20] & answered[50]
    assert both, "no canary account of the 20% step came back in the 50% step"
    assert both <= on_canary[50], sorted(both - on_canary[50])[:5]
    # And the canary got about its weight of the accounts at each step.
    for weight in (20, 50):
        share = len(on_canary[weight]) / len(answered[weight])
        assert abs(share - weight / 100) < 0.06, (weight, share, len(answered[weight]))
    effective = status["lastAnalysis"].get("effectiveShare")
    assert effective is not None
    assert abs(effective - status["lastAnalysis"]["weight"] / 100) < 0.08, effective
