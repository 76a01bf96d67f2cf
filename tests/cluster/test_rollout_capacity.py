"""Traffic never outruns capacity: a rollout and a rollback on the real control plane, recorded write by write.

Every version of the FraudModel's HTTPRoute, Services and Deployments is watched; the events of all
kinds are merged in the API server's own order (etcd revision: `resourceVersion`) and replayed, and
after each one the invariants of the write-order policy (docs/operator.md, "Write order") must hold:

- the canary's weight never exceeds the share of the track's full size that its ready pods make,
  nor the stable's weight the stable's;
- no route names a Service that does not exist;
- the shared Service selects the stable pods only (a mesh or ingress router routes to the canary).

With the default replica-ratio router the shared Service is the route, so the invariants are about
pods: the pods ready behind the shared Service never fall below the full size while a rollout
advances (a rollback takes the canary out at once and lets the stable grow back: the exposure-first
window, allowed only then); the stable shrinks only for canary pods that are ready and selected; a
canary is scaled to zero or deleted only once the Service no longer selects it. The same run has the
API server refuse the canary's scale-up for a while (a ValidatingAdmissionPolicy): nothing may move then.

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


def selects_canary(service: dict[str, Any] | None) -> bool:
    return service is not None and "serving.riskml.io/track" not in service["spec"]["selector"]


def replicas(deployment: dict[str, Any] | None) -> int | None:
    return None if deployment is None else int(deployment["spec"].get("replicas", 1))


@dataclass
class RatioReplay:
    """The replica-ratio invariants over a timeline, and the writes it saw, in order."""

    broken: list[str] = field(default_factory=list)
    writes: list[tuple[int, str]] = field(default_factory=list)  # (rv, "canary replicas 2" | "Service selects ...")
    exposure_first: list[int] = field(default_factory=list)  # rvs inside a rollback's exposure-first window


def replay_ratio(
    timeline: list[tuple[int, str, str, dict[str, Any]]], name: str, start: int, rollback: int
) -> RatioReplay:
    """From `start` (the stable ready at full size): what broke the invariants, if anything. After
    `rollback` (the rv of the spec that will be rolled back), a Service that no longer selects the
    canary while the stable grows back is the allowed exposure-first window."""
    state: dict[tuple[str, str], dict[str, Any]] = {}
    out = RatioReplay()
    seen: dict[str, object] = {}
    for rv, kind_of_event, kind, obj in timeline:
        key = (kind, obj["metadata"]["name"])
        if kind_of_event == "DELETED":
            state.pop(key, None)
        else:
            state[key] = obj
        shared = state.get(("Service", name))
        stable, canary = (state.get(("Deployment", f"{name}-{t}")) for t in ("stable", "canary"))
        for what, value in (
            ("Service selects", "canary" if selects_canary(shared) else "stable only"),
            ("stable replicas", replicas(stable)),
            ("canary replicas", "deleted" if canary is None and "canary replicas" in seen else replicas(canary)),
        ):
            if value is not None and seen.get(what) != value:
                seen[what] = value
                out.writes.append((rv, f"{what} {value}"))
        if rv < start or stable is None:
            continue
        selected = selects_canary(shared)
        serving = ready(stable) + (ready(canary) if selected else 0)
        stable_size = replicas(stable) or 0
        # Rolled back: the canary leaves the Service first, then the stable grows back (ordering.RANKS).
        exposure_first = rv > rollback and not selected
        if serving < REPLICAS:
            if exposure_first:
                out.exposure_first.append(rv)
            else:
                out.broken.append(f"rv {rv}: {serving} ready pods behind the shared Service, {REPLICAS} needed")
        if stable_size < REPLICAS and not exposure_first and (not selected or ready(canary) < REPLICAS - stable_size):
            selected_ready = ready(canary) if selected else 0
            out.broken.append(f"rv {rv}: stable at {stable_size} pods with {selected_ready} ready canary pods selected")
        if selected and (canary is None or replicas(canary) == 0):
            out.broken.append(f"rv {rv}: the shared Service selects a canary that is gone or scaled to zero")
    return out


def refuse_canary_scale_up(cluster: Cluster, namespace: str, name: str) -> str:
    """A ValidatingAdmissionPolicy that refuses more than one pod for the canary Deployment in `namespace`
    (an admission rule or quota the operator cannot know about); returns the binding's name."""
    policy = f"one-canary-pod-{namespace}"
    cluster.apply(
        yaml.safe_dump_all(
            [
                {
                    "apiVersion": "admissionregistration.k8s.io/v1",
                    "kind": "ValidatingAdmissionPolicy",
                    "metadata": {"name": policy},
                    "spec": {
                        "failurePolicy": "Fail",
                        "matchConstraints": {
                            "resourceRules": [
                                {
                                    "apiGroups": ["apps"],
                                    "apiVersions": ["v1"],
                                    "operations": ["CREATE", "UPDATE"],
                                    "resources": ["deployments"],
                                }
                            ]
                        },
                        "validations": [
                            {
                                "expression": f"object.metadata.name != '{name}-canary' || object.spec.replicas <= 1",
                                "message": "policy: the canary may run one pod",
                            }
                        ],
                    },
                },
                {
                    "apiVersion": "admissionregistration.k8s.io/v1",
                    "kind": "ValidatingAdmissionPolicyBinding",
                    "metadata": {"name": policy},
                    "spec": {
                        "policyName": policy,
                        "validationActions": ["Deny"],
                        "matchResources": {
                            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
                        },
                    },
                },
            ]
        )
    )
    probe = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": f"{name}-canary", "namespace": namespace},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"probe": "x"}},
            "template": {"metadata": {"labels": {"probe": "x"}}, "spec": {"containers": [{"name": "x", "image": "x"}]}},
        },
    }

    def refused() -> bool:
        dry = cluster.kubectl("create", "--dry-run=server", "-f", "-", stdin=json.dumps(probe), check=False)
        return "the canary may run one pod" in dry.stderr

    cluster.wait_until("the admission policy in force", refused, timeout=60)
    return policy


def resource_version(cluster: Cluster, namespace: str) -> int:
    """The API server's revision now (a list's resourceVersion): every event recorded so far is at or
    below it (an object's own resourceVersion is only its last write)."""
    # kubectl's own `get -o json` wraps items in a List without one: ask the API server directly.
    raw = cluster.kubectl("get", "--raw", f"/apis/apps/v1/namespaces/{namespace}/deployments").stdout
    return int(json.loads(raw)["metadata"]["resourceVersion"])


def fraudmodel(version: str, prometheus: str, name: str = "cap", router: dict[str, Any] | None = None) -> str:
    body = {
        "apiVersion": "serving.riskml.io/v1alpha1",
        "kind": "FraudModel",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": "fraud-detector", "version": version, "image": f"fraud-detector:{version}"},
            "serving": {"replicas": REPLICAS},
            "rollout": {
                "steps": [25, 50, 75],
                "interval": "2s",
                "progressDeadline": "2m",
                "trafficRouting": router if router is not None else {"gatewayAPI": {"httpRoute": "cap-route"}},
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


def test_replica_ratio_rollout_and_rollback_keep_the_pods_for_the_traffic(
    cluster: Cluster, operator: Operator, namespace: str, prometheus: FakePrometheus, recorder: Recorder
) -> None:
    """The default router: what is written in which order, and that no step routes beyond ready pods,
    including while the API server refuses the canary's scale-up for the 50% step."""
    name = "ratio"
    ratio: dict[str, Any] = {"replicaRatio": {}}
    prometheus.answer = metrics({"stable": 0.03, "canary": 0.03})
    cluster.apply(fraudmodel("v1", prometheus.url, name, ratio), namespace)
    wait_ready(cluster, namespace, name, operator)
    start = resource_version(cluster, namespace)

    policy = refuse_canary_scale_up(cluster, namespace, name)
    try:
        cluster.apply(fraudmodel("v2", prometheus.url, name, ratio), namespace)

        def held() -> dict[str, Any] | None:
            current = status(cluster, namespace, name)
            reasons = {c["type"]: c["reason"] for c in current.get("conditions") or []}
            canary = current.get("canary") or {}
            if reasons.get("Degraded") == "ApplyFailed" and canary.get("weight") == 50:
                return current
            return None

        blocked = cluster.wait_until(
            "the 50% step held by the refused scale-up", held, timeout=120, diagnose=operator.tail
        )
        degraded = next(c for c in blocked["conditions"] if c["type"] == "Degraded")
        assert f"Deployment {name}-canary" in degraded["message"], degraded
        assert "the canary may run one pod" in degraded["message"], degraded
        assert blocked["canary"]["effectiveWeight"] == 25, "one canary pod of four: the 25% step's split is kept"
        assert cluster.get_json("deployment", f"{name}-stable", "-n", namespace)["spec"]["replicas"] == 3
    finally:
        cluster.kubectl("delete", "validatingadmissionpolicybinding,validatingadmissionpolicy", policy, check=False)

    cluster.wait_until(
        "v2 promoted and its canary gone",
        lambda: (
            status(cluster, namespace, name).get("phase") == "Ready"
            and status(cluster, namespace, name).get("stable", {}).get("version") == "v2"
            and not cluster.kubectl("get", "deployment", f"{name}-canary", "-n", namespace, check=False).stdout
        ),
        timeout=180,
        diagnose=operator.tail,
    )
    rollback = resource_version(cluster, namespace)
    prometheus.answer = metrics({"stable": 0.03, "canary": 0.15})
    cluster.apply(fraudmodel("v3", prometheus.url, name, ratio), namespace)
    cluster.wait_until(
        "v3 rolled back and scaled to zero",
        lambda: (
            (cluster.get_json("deployment", f"{name}-canary", "-n", namespace).get("spec") or {}).get("replicas") == 0
            if status(cluster, namespace, name).get("phase") == "RolledBack"
            else None
        ),
        timeout=180,
        diagnose=operator.tail,
    )
    cluster.wait_until(
        "the stable back at full size",
        lambda: ready(cluster.get_json("deployment", f"{name}-stable", "-n", namespace)) == REPLICAS,
        timeout=60,
    )
    timeline = [e for e in recorder.timeline() if e[3]["metadata"]["name"].startswith(name)]
    replay = replay_ratio(timeline, name, start, rollback)
    log = [w for rv, w in replay.writes if rv > start]
    rollout = [w for rv, w in replay.writes if start < rv <= rollback]
    assert replay.broken == [], log
    assert rollout == [
        "canary replicas 1",
        "Service selects canary",
        "stable replicas 3",
        "canary replicas 2",  # only once the admission policy was lifted
        "stable replicas 2",
        "canary replicas 3",
        "stable replicas 1",
        "stable replicas 4",  # promotion: the new stable at full size while the canary still serves
        "Service selects stable only",
        "canary replicas deleted",
    ], log
    after = [w for rv, w in replay.writes if rv > rollback]
    assert after[-1] == "canary replicas 0", log
    if "Service selects canary" in after:  # rolled back once routed: traffic first, then capacity, then scale-down
        assert after.index("Service selects stable only") < after.index("stable replicas 4") < len(after) - 1, log
