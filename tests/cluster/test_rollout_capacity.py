"""Traffic never outruns capacity: a rollout and a rollback on the real control plane, recorded write by write.

Every version of the FraudModel's HTTPRoute, Services and Deployments is watched; the events of all
kinds are merged in the API server's own order (etcd revision: `resourceVersion`) and replayed, and
after each one the invariants of the write-order policy (docs/operator.md, "Write order") must hold:

- the canary's weight never exceeds the share of the track's full size that its ready pods make,
  nor the stable's weight the stable's;
- no route names a Service that does not exist;
- the shared Service selects the stable pods only (a mesh or ingress router routes to the canary).

The metrics come from a stub of the Prometheus HTTP API answering with the component tier's canned
measurements (healthy, or a canary flagging five times more), so the steps run on analysis.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import yaml
from kubernetes import watch
from kubernetes.client import ApiClient, Configuration
from kubernetes.config import load_kube_config
from kubernetes.dynamic import DynamicClient
from tests.cluster.conftest import Cluster, Operator
from tests.cluster.test_operator import status, wait_ready
from tests.component.test_rollout import metrics

from fraudmodel_operator.kube import KnownKinds

pytestmark = pytest.mark.cluster

REPLICAS = 4
HTTPROUTE_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {
        "name": "httproutes.gateway.networking.k8s.io",
        # *.k8s.io groups must name their API review, as Gateway API's own CRDs do
        "annotations": {"api-approved.kubernetes.io": "https://github.com/kubernetes-sigs/gateway-api/pull/1538"},
    },
    "spec": {
        "group": "gateway.networking.k8s.io",
        "names": {"kind": "HTTPRoute", "plural": "httproutes", "singular": "httproute", "listKind": "HTTPRouteList"},
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
            }
        ],
    },
}
WATCHED = (("gateway.networking.k8s.io/v1", "HTTPRoute"), ("v1", "Service"), ("apps/v1", "Deployment"))


class FakePrometheus:
    """The Prometheus HTTP API on loopback, answering instant queries from `answer(promql)`."""

    def __init__(self) -> None:
        self.answer: Callable[[str], list[tuple[dict[str, str], float]]] = lambda _q: []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlparse(self.path)
                if url.path == "/-/ready":
                    body: dict[str, Any] = {}
                else:
                    query = parse_qs(url.query)["query"][0]
                    result = [{"metric": m, "value": [0, str(v)]} for m, v in owner.answer(query)]
                    body = {"status": "success", "data": {"resultType": "vector", "result": result}}
                raw = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Recorder:
    """Watches the kinds a rollout writes and keeps every event with its resourceVersion."""

    client: DynamicClient
    namespace: str
    events: list[tuple[int, str, str, dict[str, Any]]] = field(default_factory=list)  # (rv, type, kind, object)
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)
    stopped: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        for api_version, kind in WATCHED:
            thread = threading.Thread(target=self._watch, args=(api_version, kind), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _watch(self, api_version: str, kind: str) -> None:
        resource = self.client.resources.get(api_version=api_version, kind=kind)
        while not self.stopped.is_set():
            watcher = watch.Watch()
            try:
                for event in self.client.watch(resource, namespace=self.namespace, timeout=5, watcher=watcher):
                    raw = event["raw_object"]
                    rv = int(raw["metadata"]["resourceVersion"])
                    with self.lock:
                        self.events.append((rv, event["type"], kind, raw))
                    if self.stopped.is_set():
                        watcher.stop()
                        return
            except Exception:  # a watch ends now and then; resume (duplicates are harmless to the replay)
                if self.stopped.is_set():
                    return

    def stop(self) -> None:
        """Ends the watches (each within its 5 s server timeout) and closes their connections."""
        self.stopped.set()
        for thread in self.threads:
            thread.join(timeout=30)
        self.client.client.close()

    def timeline(self) -> list[tuple[int, str, str, dict[str, Any]]]:
        with self.lock:
            return sorted(set_of(self.events), key=lambda e: e[0])


def set_of(events: list[tuple[int, str, str, dict[str, Any]]]) -> list[tuple[int, str, str, dict[str, Any]]]:
    seen, out = set(), []
    for event in events:
        key = (event[0], event[1], event[2], event[3]["metadata"]["name"])
        if key not in seen:
            seen.add(key)
            out.append(event)
    return out


def ready(deployment: dict[str, Any] | None) -> int:
    return int(((deployment or {}).get("status") or {}).get("readyReplicas") or 0)


def replay(timeline: list[tuple[int, str, str, dict[str, Any]]], name: str) -> list[str]:
    """The invariants after every event, in the API server's order; what broke them, if anything."""
    state: dict[tuple[str, str], dict[str, Any]] = {}
    broken: list[str] = []
    for rv, kind_of_event, kind, obj in timeline:
        key = (kind, obj["metadata"]["name"])
        if kind_of_event == "DELETED":
            state.pop(key, None)
        else:
            state[key] = obj
        route = state.get(("HTTPRoute", f"{name}-route"))
        if route is not None:
            weights = {r["name"]: int(r.get("weight", 1)) for r in route["spec"]["rules"][0]["backendRefs"]}
            for backend in weights:
                if ("Service", backend) not in state:
                    broken.append(f"rv {rv}: the route names Service {backend}, which does not exist")
            tracks = ("stable", "canary") if f"{name}-canary" in weights else ()  # capacity matters mid-rollout
            for track in tracks:
                weight = weights.get(f"{name}-{track}", 0)
                pods = ready(state.get(("Deployment", f"{name}-{track}")))
                if weight > 0 and weight > math.floor(100 * pods / REPLICAS):
                    broken.append(f"rv {rv}: {track} routed {weight}% with {pods}/{REPLICAS} ready pods")
        shared = state.get(("Service", name))
        if shared is not None and shared["spec"]["selector"].get("serving.riskml.io/track") != "stable":
            broken.append(f"rv {rv}: the shared Service selects {shared['spec']['selector']}")
    return broken


def fraudmodel(version: str, prometheus: str) -> str:
    body = {
        "apiVersion": "serving.riskml.io/v1alpha1",
        "kind": "FraudModel",
        "metadata": {"name": "cap"},
        "spec": {
            "model": {"name": "fraud-detector", "version": version, "image": f"fraud-detector:{version}"},
            "serving": {"replicas": REPLICAS},
            "rollout": {
                "steps": [25, 50, 75],
                "interval": "2s",
                "progressDeadline": "2m",
                "trafficRouting": {"gatewayAPI": {"httpRoute": "cap-route"}},
                "analysis": {"prometheus": {"address": prometheus}, "minSamples": 100, "failureLimit": 1},
                "onRollback": {"scaleDownDelay": "2s"},
            },
        },
    }
    return yaml.safe_dump(body)


@pytest.fixture
def prometheus() -> Iterator[FakePrometheus]:
    prom = FakePrometheus()
    try:
        yield prom
    finally:
        prom.stop()


@pytest.fixture(scope="module")
def httproutes(cluster: Cluster) -> None:
    """The cluster serves HTTPRoute (a schemaless stand-in for the Gateway API CRD)."""
    cluster.apply(json.dumps(HTTPROUTE_CRD))
    cluster.kubectl("wait", "--for=condition=Established", "crd/httproutes.gateway.networking.k8s.io")


@pytest.fixture
def recorder(cluster: Cluster, namespace: str, httproutes: None) -> Iterator[Recorder]:
    configuration = Configuration()
    load_kube_config(config_file=str(cluster.kubeconfig), client_configuration=configuration)
    rec = Recorder(DynamicClient(ApiClient(configuration), discoverer=KnownKinds), namespace)
    rec.start()
    try:
        yield rec
    finally:
        rec.stop()


def test_rollout_and_rollback_never_route_beyond_ready_capacity(
    cluster: Cluster, operator: Operator, namespace: str, prometheus: FakePrometheus, recorder: Recorder
) -> None:
    prometheus.answer = metrics({"stable": 0.03, "canary": 0.03})
    cluster.apply(fraudmodel("v1", prometheus.url), namespace)
    wait_ready(cluster, namespace, "cap", operator)

    cluster.apply(fraudmodel("v2", prometheus.url), namespace)
    cluster.wait_until(
        "v2 promoted and its canary gone",
        lambda: (
            status(cluster, namespace, "cap").get("phase") == "Ready"
            and status(cluster, namespace, "cap").get("stable", {}).get("version") == "v2"
            and not cluster.kubectl("get", "deployment", "cap-canary", "-n", namespace, check=False).stdout
        ),
        timeout=180,
        diagnose=operator.tail,
    )
    promoted = status(cluster, namespace, "cap")
    assert promoted["history"][0]["outcome"] == "Promoted"

    prometheus.answer = metrics({"stable": 0.03, "canary": 0.15})
    cluster.apply(fraudmodel("v3", prometheus.url), namespace)
    cluster.wait_until(
        "v3 rolled back and scaled to zero",
        lambda: (
            (cluster.get_json("deployment", "cap-canary", "-n", namespace).get("spec") or {}).get("replicas") == 0
            if status(cluster, namespace, "cap").get("phase") == "RolledBack"
            else None
        ),
        timeout=180,
        diagnose=operator.tail,
    )
    timeline = recorder.timeline()
    routes = [e for e in timeline if e[2] == "HTTPRoute"]
    weights = {
        next((r.get("weight", 1) for r in e[3]["spec"]["rules"][0]["backendRefs"] if r["name"] == "cap-canary"), 0)
        for e in routes
    }
    assert {25, 50, 75} <= weights, f"every step was routed: {sorted(weights)}"
    assert replay(timeline, "cap") == []
    deleted = [e for e in timeline if e[1] == "DELETED" and e[3]["metadata"]["name"] == "cap-canary"]
    assert {e[2] for e in deleted} == {"Service", "Deployment"}, "the promoted canary was deleted"


def test_a_child_the_api_server_refuses_is_reported_and_the_rest_applied(
    cluster: Cluster, operator: Operator, namespace: str, httproutes: None
) -> None:
    """A quota refuses the second Service: Degraded=ApplyFailed with the API server's words, a Warning
    Event, and the Deployment still applied (a refused write used to stop the reconcile, status unwritten)."""
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "one-service"},
        "spec": {"hard": {"services": "1"}},
    }
    cluster.apply(json.dumps(quota), namespace)
    cluster.apply(fraudmodel("v1", "http://127.0.0.1:9"), namespace)

    def degraded() -> dict[str, Any] | None:
        conditions = status(cluster, namespace, "cap").get("conditions") or []
        return next((c for c in conditions if c["type"] == "Degraded" and c["reason"] == "ApplyFailed"), None)

    condition = cluster.wait_until("Degraded=ApplyFailed", degraded, timeout=60, diagnose=operator.tail)
    assert "Service cap-stable" in condition["message"]
    assert "exceeded quota" in condition["message"]
    assert cluster.get_json("deployment", "cap-stable", "-n", namespace)["spec"]["replicas"] == REPLICAS
    events = cluster.get_json("events", "-n", namespace, "--field-selector", "involvedObject.name=cap")["items"]
    assert any(e["reason"] == "ApplyFailed" and e["type"] == "Warning" for e in events)
