"""The real Kopf operator against the kmock Kubernetes emulator (shared by the component and integration tiers)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp.web
import httpx
import kmock
import kopf
from kubernetes.client import Configuration

from fraudmodel_operator import handlers
from fraudmodel_operator.analysis import MetricProvider, Vector
from fraudmodel_operator.api import FraudModel
from fraudmodel_operator.kube import KubeClient
from fraudmodel_operator.metrics import OperatorMetrics
from fraudmodel_operator.readiness import HttpReadiness
from fraudmodel_operator.reconciler import Context
from fraudmodel_operator.settings import OperatorConfig

FM = "serving.riskml.io/v1alpha1/fraudmodels"
DEPLOYMENTS = "apps/v1/deployments"
SERVICES = "v1/services"
HPAS = "autoscaling/v2/horizontalpodautoscalers"
PDBS = "policy/v1/poddisruptionbudgets"
CONFIGMAPS = "v1/configmaps"
EVENTS = "v1/events"
PODS = "v1/pods"
NS = "default"
ProviderFor = Callable[[FraudModel], MetricProvider]


class SSAEmulator(kmock.KubernetesEmulator):
    """kmock plus server-side apply's upsert: an apply PATCH of a missing object of a served
    resource creates it."""

    _generated = 0

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        meta = (request.data or {}).get("metadata") if isinstance(request.data, dict) else None
        if request.method == "POST" and meta is not None:
            SSAEmulator._generated += 1
            meta.setdefault("uid", f"uid-{SSAEmulator._generated}")  # Kopf indexes objects by uid
            if "generateName" in meta and not meta.get("name"):
                meta["name"] = f"{meta['generateName']}{SSAEmulator._generated}"
        if (
            request.method == "PATCH"
            and "apply-patch" in (request.headers.get("Content-Type") or "")
            and request.resource is not None
            and request.resource in self.resources  # an unknown resource stays a 404, as on a real server
            and request.name is not None
        ):
            key = (request.resource, request.namespace, request.name)
            if key not in self.objects or self.objects[key].deleted:
                SSAEmulator._generated += 1
                async with self._lock:
                    if key not in self.objects:
                        self.objects[key] = {}
                    self.objects[key].create({"metadata": {"uid": f"uid-{SSAEmulator._generated}"}})
        return await super()._handle(request)


_server: dict[str, str] = {}


@kopf.on.login()
def _login(**_: Any) -> kopf.ConnectionInfo:
    return kopf.ConnectionInfo(server=_server["url"], scheme=None, token=None)


class FakeProvider:
    """A metric provider answering from a function of the PromQL (tests set `answer`)."""

    def __init__(self) -> None:
        self.answer: Callable[[str], Vector] = lambda _q: []
        self.queries: list[str] = []

    async def query(self, promql: str) -> Vector:
        self.queries.append(promql)
        return self.answer(promql)

    async def is_online(self) -> bool:
        return True


@dataclass
class Harness:
    kmock: Any
    provider: FakeProvider
    metrics: OperatorMetrics

    async def create(self, body: dict[str, Any]) -> None:
        ns = body["metadata"].setdefault("namespace", NS)
        body["metadata"].setdefault("uid", f"uid-{body['metadata']['name']}")  # kept by the emulator
        body["metadata"].setdefault("generation", 1)
        body["metadata"].setdefault("resourceVersion", "1")
        resp = await self.kmock.post(f"/apis/serving.riskml.io/v1alpha1/namespaces/{ns}/fraudmodels", json=body)
        assert resp.status < 300, await resp.text()

    async def patch(self, resource: str, name: str, patch: dict[str, Any], sub: str = "") -> None:
        group_version, plural = resource.rsplit("/", 1)
        prefix = "/api" if group_version == "v1" else "/apis"
        url = f"{prefix}/{group_version}/namespaces/{NS}/{plural}/{name}{sub}"
        resp = await self.kmock.patch(url, json=patch, headers={"Content-Type": "application/merge-patch+json"})
        assert resp.status < 300, await resp.text()

    async def delete(self, resource: str, name: str) -> None:
        group_version, plural = resource.rsplit("/", 1)
        prefix = "/api" if group_version == "v1" else "/apis"
        resp = await self.kmock.delete(f"{prefix}/{group_version}/namespaces/{NS}/{plural}/{name}")
        assert resp.status < 300, await resp.text()

    def get(self, resource: str, name: str) -> dict[str, Any] | None:
        group_version, plural = resource.rsplit("/", 1)
        group, _, version = group_version.rpartition("/")
        key = (kmock.resource(group=group, version=version, plural=plural), NS, name)
        if key not in self.kmock.objects or self.kmock.objects[key].deleted:
            return None
        raw: dict[str, Any] = self.kmock.objects[key].raw
        return raw

    def status(self, name: str) -> dict[str, Any]:
        return (self.get(FM, name) or {}).get("status") or {}

    def writes(self) -> list[Any]:
        """Every write request the operator sent (not the test's own)."""
        return [
            r
            for r in list(self.kmock)
            if r.method in ("PATCH", "POST", "PUT", "DELETE")
            and "kmock-test" not in (r.headers.get("User-Agent") or "")
            and not str(r.url.path).endswith("/events")
        ]

    def events(self, reason: str) -> list[dict[str, Any]]:
        """Events the operator posted with `reason`."""
        posted = [r.data for r in list(self.kmock) if r.method == "POST" and str(r.url.path).endswith("/events")]
        return [e for e in posted if e and e.get("reason") == reason]

    async def ready(self, deployment: str, replicas: int | None = None) -> None:
        """Play the Deployment controller: mark all pods of `deployment` ready."""
        live = self.get(DEPLOYMENTS, deployment)
        assert live is not None
        n = replicas if replicas is not None else int(live["spec"].get("replicas", 1))
        await self.patch(
            DEPLOYMENTS,
            deployment,
            {"status": {"replicas": n, "readyReplicas": n, "updatedReplicas": n, "availableReplicas": n}},
        )


async def eventually(check: Callable[[], Any] | Callable[[], Awaitable[Any]], within: float = 10.0) -> Any:
    """Poll `check` until it returns something truthy (no sleeps as synchronisation)."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"condition not met within {within}s (last: {last!r})")


def served(emulator: kmock.KubernetesEmulator) -> None:
    """The resources the operator lists, watches and writes, served by `emulator`."""
    for resource, kind, subresources in (
        (FM, "FraudModel", {"status"}),
        (DEPLOYMENTS, "Deployment", {"status"}),
        (SERVICES, "Service", set()),
        (HPAS, "HorizontalPodAutoscaler", set()),
        (PDBS, "PodDisruptionBudget", set()),
        (CONFIGMAPS, "ConfigMap", set()),
        (EVENTS, "Event", set()),
        (PODS, "Pod", {"status"}),
        ("v1/namespaces", "Namespace", set()),  # discovered (Kopf waits for it), never listed
        ("apiextensions.k8s.io/v1/customresourcedefinitions", "CustomResourceDefinition", set()),
    ):
        emulator.resources[resource] = kmock.ResourceInfo(
            kind=kind,
            namespaced=resource not in ("v1/namespaces", "apiextensions.k8s.io/v1/customresourcedefinitions"),
            verbs={"list", "watch", "get", "patch", "create", "delete", "update"},
            subresources=subresources,
        )


@contextlib.asynccontextmanager
async def operator_harness(provider_for: ProviderFor | None = None) -> AsyncIterator[Harness]:
    """Kopf running the project's handlers against a fresh emulator; fake metrics unless `provider_for` is given."""
    emulator = SSAEmulator()
    served(emulator)
    async with emulator, kmock.Server(emulator, user_agent="kmock-test"):
        _server["url"] = str(emulator.url).rstrip("/")
        provider = FakeProvider()
        metrics = OperatorMetrics()

        def fake_provider(_fm: FraudModel) -> MetricProvider:
            return provider

        config = OperatorConfig(standalone=True, reconcile_interval=0.3)
        kube = KubeClient.connect(Configuration(host=_server["url"]))
        http = httpx.AsyncClient()

        context = Context(
            kube=kube,
            metrics=metrics,
            provider_for=provider_for or fake_provider,
            readiness=HttpReadiness(http),
        )
        runtime = handlers.Runtime(config=config, context=context, http=http, kube=kube)
        stop = asyncio.Event()
        task = asyncio.create_task(
            kopf.operator(
                standalone=True,
                clusterwide=True,  # kmock cannot serve the namespace listing a namespaced run needs
                memo=kopf.Memo(config=config, runtime=runtime),
                stop_flag=stop,
            )
        )
        try:
            yield Harness(emulator, provider, metrics)
        finally:
            stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, timeout=15)
            await runtime.aclose()  # also done by the operator's cleanup handler, unless it failed to start
