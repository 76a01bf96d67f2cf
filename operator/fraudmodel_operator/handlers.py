"""Kopf wiring, thin: configure once, index the children, run one reconcile loop per FraudModel.

Design (see docs/operator.md):
- a daemon per FraudModel reconciles every `RECONCILE_INTERVAL` seconds (level-triggered)
  and at once when woken by a watch event of the FraudModel or of one of its children;
- children are kept in Kopf indexes (in memory, fed by watches), so a reconcile that
  changes nothing sends no request at all;
- no create/update handlers, so Kopf writes no progress or diff-base annotations;
  its only mark on the object is a finalizer under our own prefix, which lets it stop
  the daemon before the FraudModel goes.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import kopf

from fraudmodel_operator import api
from fraudmodel_operator.api import FraudModel, parse_duration
from fraudmodel_operator.kube import KubeClient, Manifest, controller_uid, indexed, load_configuration
from fraudmodel_operator.metrics import OperatorMetrics
from fraudmodel_operator.planner import INSTANCE_LABEL, MANAGED_BY
from fraudmodel_operator.pods import PodState, summarize
from fraudmodel_operator.prometheus import PrometheusProvider
from fraudmodel_operator.readiness import HttpReadiness
from fraudmodel_operator.reconciler import Context, reconcile, status_caught_up
from fraudmodel_operator.rollout import Event
from fraudmodel_operator.settings import OperatorConfig

log = logging.getLogger(__name__)
MANAGED = {"app.kubernetes.io/managed-by": MANAGED_BY}
FINALIZER = f"{api.GROUP}/finalizer"
CATCH_UP_SECONDS = 5.0
LIST_PAGE = 500  # objects per page of the initial listings


@dataclass
class Runtime:
    """Process-wide state, kept in Kopf's memo (no globals)."""

    config: OperatorConfig
    context: Context
    http: httpx.AsyncClient
    kube: KubeClient | None = None  # the API client to close at cleanup (the context's `kube` is a Protocol)
    wakeups: dict[tuple[str, str], asyncio.Event] = field(default_factory=dict)

    def wake(self, namespace: str, name: str) -> None:
        event = self.wakeups.get((namespace, name))
        if event is not None:
            event.set()

    async def aclose(self) -> None:
        """Close the clients: HTTP connections to Prometheus, the API client's threads and connections."""
        await self.http.aclose()
        if self.kube is not None:
            await asyncio.to_thread(self.kube.close)


def configure(settings: kopf.OperatorSettings, config: OperatorConfig) -> None:
    """Kopf settings, applied once at startup."""
    settings.persistence.finalizer = FINALIZER
    # No change-detecting handlers exist, but should one appear, keep its bookkeeping in status.
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=api.GROUP, key="last-handled-configuration"
    )
    settings.peering.name = config.peering
    settings.peering.standalone = config.standalone
    settings.peering.mandatory = not config.standalone
    settings.watching.server_timeout = config.watch_timeout
    settings.watching.client_timeout = config.watch_timeout + 30
    # A restart lists every watched object; in pages, the peak is one page, not all of them at once.
    settings.watching.chunk_size = LIST_PAGE
    settings.posting.level = logging.INFO
    # Events name us (`kubectl describe`'s "From"), not the framework; the instance is the pod.
    settings.posting.reporting_component = MANAGED_BY
    settings.posting.reporting_instance = socket.gethostname()
    settings.posting.event_name_prefix = f"{MANAGED_BY}-"
    settings.execution.max_workers = 20


def build_runtime(config: OperatorConfig, kube: KubeClient, http: httpx.AsyncClient) -> Runtime:
    def provider_for(fm: FraudModel) -> PrometheusProvider:
        prom = fm.spec.rollout.analysis.prometheus
        return PrometheusProvider(http, prom.address, parse_duration(prom.timeout))

    context = Context(
        kube=kube,
        metrics=OperatorMetrics(),
        provider_for=provider_for,
        readiness=HttpReadiness(http),
    )
    return Runtime(config=config, context=context, http=http, kube=kube)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    config: OperatorConfig = memo.get("config") or OperatorConfig()
    configure(settings, config)
    if "runtime" not in memo:  # tests inject their own
        kube = KubeClient.connect(await asyncio.to_thread(load_configuration))
        runtime = build_runtime(config, kube, httpx.AsyncClient())
        memo["runtime"] = runtime
        runtime.context.metrics.serve(config.metrics_port)
        log.info("operator metrics on :%d/metrics", config.metrics_port)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime | None = memo.get("runtime")
    if runtime is not None:
        await runtime.aclose()


# ---------------------------------------------------------------- children, indexed
# The index and event handlers are coroutines: they only copy a few fields, and Kopf would run
# plain functions on its thread pool, a thread hop per watch event.


def _snapshot(kind: str, api_version: str, body: kopf.Body) -> Manifest:
    """What the index keeps of a child: the fields the operator reads (`kube.indexed`), not the whole object."""
    return indexed({**dict(body), "apiVersion": api_version, "kind": kind})


def _owner(labels: Mapping[str, str]) -> str | None:
    return labels.get(INSTANCE_LABEL)


def _wake_owner(namespace: str | None, labels: Mapping[str, str], memo: Any) -> None:
    owner = _owner(labels)
    runtime: Runtime | None = memo.get("runtime")
    if owner and namespace and runtime is not None:
        runtime.wake(namespace, owner)


def _child_index(group: str, version: str, plural: str, kind: str) -> None:
    api_version = f"{group}/{version}" if group else version

    # Labels select what is watched; the controller owner reference decides whose child it is
    # (an object that merely carries our labels is never adopted, nor deleted).
    @kopf.index(group, version, plural, labels=MANAGED, id=f"{plural}_index")
    async def index(namespace: str | None, body: kopf.Body, **_: Any) -> Any:
        snapshot = _snapshot(kind, api_version, body)
        owner_uid = controller_uid(snapshot)
        return {(namespace, owner_uid): snapshot} if owner_uid else None

    @kopf.on.event(group, version, plural, labels=MANAGED, id=f"{plural}_wake")
    async def wake(namespace: str | None, labels: Mapping[str, str], memo: Any, **_: Any) -> None:
        _wake_owner(namespace, labels, memo)


CHILD_KINDS = (
    ("apps", "v1", "deployments", "Deployment"),
    ("", "v1", "services", "Service"),
    ("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler"),
    ("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget"),
    ("", "v1", "configmaps", "ConfigMap"),  # the stable edge's routing config (edge_routing.py)
)
for _group, _version, _plural, _kind in CHILD_KINDS:
    _child_index(_group, _version, _plural, _kind)


@kopf.index("", "v1", "pods", labels=MANAGED, id="pods_index")
async def pods_index(namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any) -> Any:
    """Each model pod's `PodState` (a few fields, not the object), by FraudModel."""
    owner = _owner(labels)
    return {(namespace, owner): summarize(body)} if owner else None


@kopf.on.event("", "v1", "pods", labels=MANAGED, id="pods_wake")
async def pod_changed(namespace: str | None, labels: Mapping[str, str], memo: Any, **_: Any) -> None:
    _wake_owner(namespace, labels, memo)


def live_pods(indexes: Mapping[str, Any], namespace: str, name: str) -> list[PodState]:
    return list(indexes["pods_index"].get((namespace, name), []))


def live_children(indexes: Mapping[str, Any], namespace: str, owner_uid: str) -> dict[tuple[str, str], Manifest]:
    """The children the FraudModel with `owner_uid` controls, by (kind, name)."""
    live: dict[tuple[str, str], Manifest] = {}
    for _, _, plural, _ in CHILD_KINDS:
        for obj in indexes[f"{plural}_index"].get((namespace, owner_uid), []):
            live[(obj["kind"], obj["metadata"]["name"])] = obj
    return live


# ---------------------------------------------------------------- the FraudModel loop


@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL)
async def fraudmodel_changed(namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    runtime: Runtime | None = memo.get("runtime")
    if runtime is not None and namespace:
        runtime.wake(namespace, name)


@kopf.daemon(api.GROUP, api.VERSION, api.PLURAL, cancellation_timeout=10.0)
async def fraudmodel_loop(
    namespace: str | None, name: str, body: kopf.Body, memo: Any, stopped: kopf.DaemonStopped, **kwargs: Any
) -> None:
    runtime: Runtime = memo["runtime"]
    namespace = namespace or "default"
    wakeup = runtime.wakeups.setdefault((namespace, name), asyncio.Event())

    def emit(event: Event) -> None:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)

    try:
        while not stopped:
            wakeup.clear()
            try:
                live = live_children(kwargs, namespace, body["metadata"]["uid"])
                pods = live_pods(kwargs, namespace, name)
                outcome = await reconcile(runtime.context, body, live, datetime.now(UTC), emit, pods)
                if outcome.status is not None:
                    await _caught_up(body, outcome.status, stopped)
            except Exception:  # one FraudModel's failure never stops the others, nor its own loop
                runtime.context.metrics.errors.inc()
                runtime.context.metrics.reconciles.labels("error").inc()
                log.exception("reconcile of %s/%s failed; retrying at the next interval", namespace, name)
            await _sleep(wakeup, stopped, runtime.config.reconcile_interval)
    finally:
        runtime.wakeups.pop((namespace, name), None)
        runtime.context.metrics.forget(namespace, name)


async def _caught_up(body: kopf.Body, written: dict[str, Any], stopped: kopf.DaemonStopped) -> None:
    """Wait (briefly) for the watch stream to deliver our own status write, so the next reconcile sees it."""
    deadline = asyncio.get_running_loop().time() + CATCH_UP_SECONDS
    while not status_caught_up(body, written) and not stopped:
        if asyncio.get_running_loop().time() > deadline:
            log.warning("status write not seen on the watch stream within %ss", CATCH_UP_SECONDS)
            return
        await asyncio.sleep(0.02)


async def _sleep(wakeup: asyncio.Event, stopped: kopf.DaemonStopped, seconds: float) -> None:
    """Until woken, stopped, or `seconds` pass."""
    waiters = [asyncio.ensure_future(wakeup.wait()), asyncio.ensure_future(stopped.wait(seconds))]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
