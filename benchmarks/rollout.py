"""Rollout benchmark with real processes: time to roll back a regression, and false rollbacks.

    .venv/bin/python benchmarks/rollout.py [--healthy 5] [--regressed 3]

Each run is the integration tier's world and FraudModel (tests/integration/test_rollout_real.py:
steps 20 and 50, its interval, failureLimit and minSamples): the Kopf operator (kmock API),
Prometheus from Debian's package scraping two BentoML servers of the bento, and traffic split at
the weight the operator routed (status.canary.routedWeight: the emulated API
merges the shared Service's selector, so the read-back effectiveWeight stays 0 there). Traffic is noisy:
its rate wanders between 200 and 300 requests per second (the tier's 250). Needs `prometheus` on
PATH and the bento's environment (./scripts/test sets both up).

Prints, per run, the outcome and timings, then:
- time from regression onset (the canary's first traffic) to rollback, against the
  target interval x failureLimit + interval;
- false rollbacks over the healthy runs (target: zero).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parents[1]))
sys.path.insert(0, str(Path(__file__).parents[1] / "operator"))

from scripts.dataplane import BENTO, Bento, Prometheus, Servers, canary_weight, send_traffic
from tests.integration.conftest import GOOD, GOOD_NEXT, MISCALIBRATED
from tests.integration.test_rollout_real import fraudmodel, play_deployment_controller
from tests.kopf_harness import FM, eventually, operator_harness

from fraudmodel_operator.api import FraudModel, parse_duration
from fraudmodel_operator.prometheus import PrometheusProvider

TIER = fraudmodel("v0", "http://prometheus")["spec"]["rollout"]
INTERVAL, FAILURE_LIMIT = parse_duration(TIER["interval"]), int(TIER["analysis"]["failureLimit"])
DEADLINE_SECONDS = 600.0  # the tier's own limit for an outcome
STABLE_TRAFFIC = 'increase(bentoml_service_request_total{track="stable",endpoint=~"/predict.*"}[15s]) > 0'


def noisy_rate(rng: random.Random) -> Callable[[], float]:
    """A request rate wandering between 200 and 300 per second."""
    rate = [250.0]

    def next_rate() -> float:
        rate[0] = min(300.0, max(200.0, rate[0] + rng.uniform(-10, 10)))
        return rate[0]

    return next_rate


async def one_run(bento: Bento, canary_version: str, workdir: Path) -> dict[str, Any]:
    servers = Servers(bento, workdir / "servers")
    prom = Prometheus(workdir / "prometheus")
    try:
        stable = servers.start(GOOD, "stable")
        canary = servers.start(canary_version, "canary")
        prom.scrape({"stable": stable.port, "canary": canary.port})
        prom.start()
        bodies = bento.payloads(3000, seed=random.randrange(1_000_000))
        async with httpx.AsyncClient() as http:

            def provider_for(fm: FraudModel) -> PrometheusProvider:
                p = fm.spec.rollout.analysis.prometheus
                return PrometheusProvider(http, p.address, parse_duration(p.timeout))

            async with operator_harness(provider_for) as harness:
                urls = {"stable": stable.url, "canary": canary.url}
                tasks = [
                    asyncio.create_task(play_deployment_controller(harness)),
                    asyncio.create_task(
                        send_traffic(
                            lambda: canary_weight(harness.status("bot"), effective=False),
                            urls,
                            bodies,
                            rps=noisy_rate(random.Random()),
                            seed=random.randrange(1_000_000),
                        )
                    ),
                ]
                try:
                    await harness.create(fraudmodel(GOOD, prom.url))
                    await eventually(lambda: harness.status("bot").get("phase") == "Ready", within=60)
                    # As in production, Prometheus has history before the rollout starts.
                    await asyncio.to_thread(prom.wait_for_data, STABLE_TRAFFIC)
                    spec = fraudmodel(canary_version, prom.url)["spec"]
                    await harness.patch(FM, "bot", {"spec": spec, "metadata": {"generation": 2}})
                    started = time.monotonic()
                    onset = None
                    deadline = started + DEADLINE_SECONDS
                    analyses: list[str] = []  # each analysis: verdict @ seconds after onset
                    seen = None
                    while time.monotonic() < deadline:
                        status = harness.status("bot")
                        if onset is None and (status.get("canary") or {}).get("weight", 0) > 0:
                            onset = time.monotonic()
                        last = status.get("lastAnalysis") or {}
                        if onset is not None and last.get("time") not in (None, seen):
                            seen = last["time"]
                            why = ",".join(c["name"] for c in last["checks"] if c["verdict"] != "Pass")
                            if last["verdict"] == "Inconclusive":
                                why += ": " + last["checks"][0].get("message", "")
                            analyses.append(f"{last['verdict']}({why})@{time.monotonic() - onset:.1f}s")
                        if status.get("phase") == "RolledBack":
                            reason = next(c["reason"] for c in status["conditions"] if c["type"] == "Degraded")
                            end = time.monotonic() - (onset or started)
                            return {
                                "outcome": "RolledBack",
                                "reason": reason,
                                "onset_to_end": end,
                                "analyses": analyses,
                            }
                        if status.get("stable", {}).get("version") == canary_version:
                            end = time.monotonic() - (onset or started)
                            return {"outcome": "Promoted", "onset_to_end": end, "analyses": analyses}
                        await asyncio.sleep(0.1)
                    return {"outcome": "Timeout", "onset_to_end": None}
                finally:
                    for task in tasks:
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        prom.stop()
        servers.stop_all()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--healthy", type=int, default=5)
    parser.add_argument("--regressed", type=int, default=3)
    args = parser.parse_args()
    bento = Bento(str(BENTO / ".venv" / "bin" / "python"), BENTO / ".bentoml")
    results: dict[str, list[dict[str, Any]]] = {"healthy": [], "regressed": []}
    for kind, version, count in (("regressed", MISCALIBRATED, args.regressed), ("healthy", GOOD_NEXT, args.healthy)):
        for i in range(count):
            with tempfile.TemporaryDirectory() as tmp:
                result = await one_run(bento, version, Path(tmp))
            results[kind].append(result)
            print(f"{kind} run {i + 1}/{count}: {result}", flush=True)
    target = INTERVAL * FAILURE_LIMIT + INTERVAL
    times = [r["onset_to_end"] for r in results["regressed"] if r["outcome"] == "RolledBack"]
    print(f"\nregressed ({MISCALIBRATED}): {len(times)}/{len(results['regressed'])} rolled back")
    if times:
        print(
            f"  onset -> rollback: median {statistics.median(times):.1f}s, max {max(times):.1f}s "
            f"(target <= interval {INTERVAL:.0f}s x failureLimit {FAILURE_LIMIT} + interval = {target:.0f}s)"
        )
    false = sum(1 for r in results["healthy"] if r["outcome"] != "Promoted")
    durations = [r["onset_to_end"] for r in results["healthy"] if r["outcome"] == "Promoted"]
    print(f"healthy ({GOOD_NEXT}): {false} false rollbacks or stalls out of {len(results['healthy'])} runs")
    if durations:
        print(f"  onset -> promotion: median {statistics.median(durations):.1f}s")


if __name__ == "__main__":
    asyncio.run(main())
