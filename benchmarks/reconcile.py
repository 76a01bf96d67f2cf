"""Operator benchmark: planning cost and API requests per reconcile.

    .venv/bin/python benchmarks/reconcile.py [--models 1000]

Prints: per-plan time over N FraudModels of mixed shapes (fixed replicas, autoscaling,
mid-canary), and the Kubernetes requests one reconcile sends when nothing changed
(target: 0 writes) and when one field changed (target: one apply per changed child
plus one status patch). Requests are counted at the `Kube` boundary the operator
uses, with live objects served back as the API server would, and again as HTTP
requests: every call also goes through the operator's real client (`KubeClient`)
to an emulated API server (kmock), which counts what arrives.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parents[1] / "operator"))
sys.path.insert(0, str(Path(__file__).parents[1]))

import kmock
from kubernetes.client import Configuration

from fraudmodel_operator.analysis import Vector
from fraudmodel_operator.api import FraudModel, parse_fraudmodel
from fraudmodel_operator.kube import KubeClient, Manifest
from fraudmodel_operator.metrics import OperatorMetrics
from fraudmodel_operator.planner import plan_children
from fraudmodel_operator.reconciler import Context, reconcile
from fraudmodel_operator.rollout import Event


def body(i: int, version: str = "v1", replicas: int = 3, status: dict[str, Any] | None = None) -> dict[str, Any]:
    serving: dict[str, Any] = {"replicas": replicas}
    if i % 3 == 1:
        serving = {"autoscaling": {"minReplicas": 2, "maxReplicas": 10}}
    return {
        "metadata": {"name": f"fm-{i}", "namespace": "bench", "uid": f"u{i}", "generation": 1},
        "spec": {"model": {"name": "m", "version": version, "image": f"m:{version}"}, "serving": serving},
        "status": status or {},
    }


class CountingKube:
    """Serves back what was applied (as the API server and the watch-fed index would)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], Manifest] = {}
        self.calls: Counter[str] = Counter()
        self.status: dict[str, Any] = {}

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> Manifest | None:
        self.calls["get"] += 1
        return self.objects.get((kind, name))

    async def apply(self, manifest: Manifest) -> None:
        self.calls["apply"] += 1
        live = {**manifest, "status": {}}
        if manifest["kind"] == "Deployment":
            n = manifest["spec"].get("replicas", 1)
            live["status"] = {"readyReplicas": n, "updatedReplicas": n, "replicas": n}
        self.objects[(manifest["kind"], manifest["metadata"]["name"])] = live

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        self.calls["delete"] += 1
        self.objects.pop((kind, name), None)

    async def patch_status(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        self.calls["patch_status"] += 1
        self.status = merge(self.status, patch)


class OverHttp(CountingKube):
    """CountingKube that also sends every call through the operator's real client."""

    def __init__(self, client: KubeClient) -> None:
        super().__init__()
        self.client = client

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> Manifest | None:
        await self.client.get(api_version, kind, namespace, name)
        return await super().get(api_version, kind, namespace, name)

    async def apply(self, manifest: Manifest) -> None:
        await self.client.apply(manifest)
        await super().apply(manifest)

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        await self.client.delete(api_version, kind, namespace, name)
        await super().delete(api_version, kind, namespace, name)

    async def patch_status(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        await self.client.patch_status(namespace, name, patch)
        await super().patch_status(namespace, name, patch)


def merge(old: Any, patch: Any) -> Any:
    if not isinstance(patch, dict) or not isinstance(old, dict):
        return patch
    out = dict(old)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge(old.get(k), v)
    return out


class NoMetrics:
    """A Prometheus with no series yet: the stable model's monitoring stays InsufficientData."""

    async def query(self, _: str) -> Vector:
        return []

    async def is_online(self) -> bool:
        return True


class ReferenceLike:
    """A Prometheus whose stable track scores exactly like its model's reference: no drift."""

    EDGES = (0.001, 0.01, 0.1, 0.28, 0.5, 0.9, math.inf)
    SHARES = (0.30, 0.75, 0.95, 0.989, 0.993, 0.997, 1.0)  # cumulative
    N = 50_000.0

    async def query(self, promql: str) -> Vector:
        def hist(scale: float) -> Vector:
            return [({"le": str(le)}, share * scale) for le, share in zip(self.EDGES, self.SHARES, strict=True)]

        if "fraud_model_reference_score_bucket" in promql:
            return hist(1.0)
        if "fraud_model_score_bucket" in promql:
            return hist(self.N)
        if "fraud_model_reference_samples" in promql:
            return [({}, 10_000.0)]
        if "fraud_model_reference_flag_rate" in promql:
            return [({}, 1 - self.SHARES[3])]
        if "fraud_model_predictions_total" in promql:
            return [({}, self.N)]
        if 'decision="flag"' in promql:
            return [({}, self.N * (1 - self.SHARES[3]))]
        return []

    async def is_online(self) -> bool:
        return True


def bench_planning(n: int) -> None:
    models: list[FraudModel] = []
    for i in range(n):
        status: dict[str, Any] = {}
        if i % 4 == 3:  # mid-canary
            status = {
                "stable": {"version": "v1", "image": "m:v1", "model": {"name": "m", "version": "v1", "image": "m:v1"}},
                "canary": {
                    "version": "v2",
                    "image": "m:v2",
                    "weight": 20,
                    "model": {"name": "m", "version": "v2", "image": "m:v2"},
                },
            }
        models.append(parse_fraudmodel(body(i, "v2" if status else "v1", status=status)))
    times = []
    children = 0
    for fm in models:
        start = time.perf_counter()
        children += len(plan_children(fm))
        times.append(time.perf_counter() - start)
    times.sort()
    print(f"planning: {n} FraudModels, {children} children")
    print(
        f"  per plan: median {statistics.median(times) * 1e6:.0f} us, p99 {times[int(0.99 * n)] * 1e6:.0f} us, "
        f"total {sum(times) * 1e3:.0f} ms"
    )


async def bench_requests() -> None:
    from tests.kopf_harness import FM, SSAEmulator, served

    emulator = SSAEmulator()
    served(emulator)
    async with emulator, kmock.Server(emulator, user_agent="benchmark"):
        fm = {"apiVersion": "serving.riskml.io/v1alpha1", "kind": "FraudModel", **body(0)}
        resp = await emulator.post(f"/apis/{FM.rsplit('/', 1)[0]}/namespaces/bench/fraudmodels", json=fm)
        assert resp.status < 300, await resp.text()
        client = KubeClient.connect(Configuration(host=str(emulator.url).rstrip("/")))
        try:
            await _requests(OverHttp(client), emulator)
        finally:
            client.close()


def _http(emulator: Any, since: int) -> Counter[str]:
    """HTTP requests the operator's client sent, by method and content type."""
    sent = [r for r in list(emulator)[since:] if "benchmark" not in (r.headers.get("User-Agent") or "")]
    methods = (str(r.method.value).upper() for r in sent)
    kinds = ((r.headers.get("Content-Type") or "").split(";")[0] for r in sent)
    return Counter(f"{m} {k}".strip() for m, k in zip(methods, kinds, strict=True))


async def _requests(kube: OverHttp, emulator: Any) -> None:
    ctx = Context(kube=kube, metrics=OperatorMetrics(), provider_for=lambda fm: NoMetrics())
    events: list[Event] = []

    def live() -> dict[tuple[str, str], Manifest]:
        return dict(kube.objects)

    async def once(b: dict[str, Any]) -> tuple[Counter[str], Counter[str]]:
        before, seen = Counter(kube.calls), len(list(emulator))
        b = {**b, "status": kube.status}
        await reconcile(ctx, b, live(), datetime.now(UTC), events.append)
        return kube.calls - before, _http(emulator, seen)

    first = body(0)
    created = await once(first)
    settle = await once(first)  # status now shows the ready stable track
    unchanged = [await once(first) for _ in range(5)]
    changed = await once(
        {
            **first,
            "metadata": {**first["metadata"], "generation": 2},
            "spec": {**first["spec"], "serving": {"replicas": 5}},
        }
    )
    print("API requests per reconcile of one FraudModel (replicas: 3, replicaRatio router):")
    print("  at the Kube boundary | as HTTP requests received by the API server")
    print(f"  first reconcile (create): {dict(created[0])} | {dict(created[1])}")
    print(f"  second (stable became ready): {dict(settle[0])} | {dict(settle[1])}")
    calls, http = [dict(c) or "none" for c, _ in unchanged], [dict(h) or "none" for _, h in unchanged]
    print(f"  unchanged, 5 reconciles: {calls} | {http}")
    print(f"  replicas 3 -> 5: {dict(changed[0])} | {dict(changed[1])}  (Deployment and status only)")

    # The stable model measured against its reference at every reconcile (each one an interval later).
    world = ReferenceLike()
    ctx.provider_for = lambda fm: world
    later = datetime.now(UTC)

    async def measured(b: dict[str, Any]) -> Counter[str]:
        nonlocal later
        later += timedelta(minutes=5)
        before = Counter(kube.calls)
        await reconcile(ctx, {**b, "status": kube.status}, live(), later, events.append)
        return kube.calls - before

    five = {
        **first,
        "metadata": {**first["metadata"], "generation": 2},
        "spec": {**first["spec"], "serving": {"replicas": 5}},
    }
    first_look = await measured(five)
    looks = [await measured(five) for _ in range(5)]
    drifting = [c for c in kube.status.get("conditions", []) if c["type"] == "Drifting"]
    print(f"  monitoring, first measurement within bounds: {dict(first_look) or 'none'}  (Drifting -> False)")
    print(f"  monitoring, 5 more measurements, no drift: {[dict(c) or 'none' for c in looks]}")
    print(f"  Drifting: {drifting[0]['status']} ({drifting[0]['reason']})" if drifting else "  Drifting: absent")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=int, default=1000)
    args = parser.parse_args()
    bench_planning(args.models)
    asyncio.run(bench_requests())


if __name__ == "__main__":
    main()
