"""Operator benchmark: planning cost and API requests per reconcile.

    .venv/bin/python benchmarks/reconcile.py [--models 1000]

Prints: per-plan time over N FraudModels of mixed shapes (fixed replicas, autoscaling,
mid-canary), and the Kubernetes requests one reconcile sends when nothing changed
(target: 0 writes) and when one field changed (target: one apply per changed child
plus one status patch). Requests are counted at the `Kube` boundary the operator
uses, with live objects served back as the API server would.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parents[1] / "operator"))

from fraudmodel_operator.analysis import Vector
from fraudmodel_operator.api import FraudModel, parse_fraudmodel
from fraudmodel_operator.kube import Manifest
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


async def no_metrics(_: str) -> Vector:
    return []


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
    kube = CountingKube()
    ctx = Context(kube=kube, metrics=OperatorMetrics(), provider_for=lambda fm: None)  # type: ignore[arg-type,return-value]
    events: list[Event] = []

    def live() -> dict[tuple[str, str], Manifest]:
        return dict(kube.objects)

    async def once(b: dict[str, Any]) -> Counter[str]:
        before = Counter(kube.calls)
        b = {**b, "status": kube.status}
        await reconcile(ctx, b, live(), datetime.now(UTC), events.append)
        return kube.calls - before

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
    print(f"  first reconcile (create): {dict(created)}")
    print(f"  second (stable became ready): {dict(settle)}")
    print(f"  unchanged, 5 reconciles: {[dict(c) or 'none' for c in unchanged]}")
    print(f"  replicas 3 -> 5: {dict(changed)}  (Deployment and status only)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=int, default=1000)
    args = parser.parse_args()
    bench_planning(args.models)
    asyncio.run(bench_requests())


if __name__ == "__main__":
    main()
