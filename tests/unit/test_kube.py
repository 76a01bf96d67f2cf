"""The Kubernetes adapter: merge patches, value comparison, the applied hash, ownership, and what a
refused request becomes."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from kubernetes.client import Configuration

from fraudmodel_operator.kube import (
    APPLIED_HASH,
    KubeClient,
    NotServable,
    WriteRefused,
    controller_uid,
    indexed,
    merge_patch,
    up_to_date,
    with_owner,
)
from tests.unit.factories import fraudmodel


@pytest.mark.parametrize(
    ("old", "new", "patch"),
    [
        ({"a": 1}, {"a": 1}, None),
        ({"a": 1}, {"a": 2}, {"a": 2}),
        ({"a": 1, "b": 2}, {"a": 1}, {"b": None}),
        ({"a": {"x": 1, "y": 2}}, {"a": {"x": 1}}, {"a": {"y": None}}),
        ({}, {"a": {"x": 1}}, {"a": {"x": 1}}),
        ({"l": [1, 2]}, {"l": [1]}, {"l": [1]}),
    ],
    ids=["equal", "changed", "removed", "nested-removed", "added", "list-replaced"],
)
def test_merge_patch(old: dict[str, Any], new: dict[str, Any], patch: dict[str, Any] | None) -> None:
    assert merge_patch(old, new) == patch


@pytest.mark.parametrize(
    ("desired", "live", "same"),
    [
        ({"spec": {"replicas": 2}}, {"spec": {"replicas": 2, "x": 1}}, True),
        ({"spec": {"cpu": "1"}}, {"spec": {"cpu": 1}}, True),
        ({"spec": {"flag": False}}, {"spec": {"flag": 0}}, False),
        ({"spec": {"l": [{"a": 1}]}}, {"spec": {"l": [{"a": 1, "b": 2}]}}, True),
        ({"spec": {"l": [{"a": 1}]}}, {"spec": {"l": [{"a": 1}, {"a": 2}]}}, False),
        (
            {"spec": {"resources": {"limits": {"cpu": "1000m"}}}},
            {"spec": {"resources": {"limits": {"cpu": "1"}}}},
            True,
        ),
        ({"spec": {"requests": {"cpu": "0.5"}}}, {"spec": {"requests": {"cpu": "500m"}}}, True),
        ({"spec": {"requests": {"memory": "1024Mi"}}}, {"spec": {"requests": {"memory": "1Gi"}}}, True),
        ({"spec": {"requests": {"cpu": "1"}}}, {"spec": {"requests": {"cpu": "1001m"}}}, False),
        ({"spec": {"target": {"averageValue": "40.0"}}}, {"spec": {"target": {"averageValue": "40"}}}, True),
        ({"spec": {"emptyDir": {"sizeLimit": "1024Mi"}}}, {"spec": {"emptyDir": {"sizeLimit": "1Gi"}}}, True),
        ({"metadata": {"labels": {"version": "1.0"}}}, {"metadata": {"labels": {"version": "1"}}}, False),
        (
            {"spec": {"env": [{"name": "T", "value": "0.5"}]}},
            {"spec": {"env": [{"name": "T", "value": "500m"}]}},
            False,
        ),
    ],
    ids=[
        "server-added-field",
        "number-vs-string",
        "bool-is-not-int",
        "list-item-defaults",
        "list-length",
        "canonical-millicores",
        "canonical-fraction",
        "canonical-binary",
        "other-quantity",
        "hpa-target",
        "size-limit",
        "label-is-not-a-quantity",
        "env-is-not-a-quantity",
    ],
)
def test_up_to_date(desired: dict[str, Any], live: dict[str, Any], same: bool) -> None:
    assert up_to_date({"apiVersion": "v1", "kind": "X", **desired}, live) is same


def test_with_owner_adopts_and_stamps_the_hash_of_what_it_applies() -> None:
    fm = fraudmodel()
    manifest = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bot", "namespace": "risk"}, "spec": {}}
    adopted = with_owner(manifest, fm)
    assert controller_uid(adopted) == "u1"
    stamp = adopted["metadata"]["annotations"][APPLIED_HASH]
    assert with_owner(manifest, fm)["metadata"]["annotations"][APPLIED_HASH] == stamp, "deterministic"
    assert with_owner(adopted, fm)["metadata"]["annotations"][APPLIED_HASH] == stamp, "the hash excludes itself"
    changed = with_owner({**manifest, "spec": {"type": "ClusterIP"}}, fm)
    assert changed["metadata"]["annotations"][APPLIED_HASH] != stamp
    assert "annotations" not in manifest["metadata"], "the planned manifest is not modified"


def test_a_live_object_applied_by_an_older_operator_is_applied_again() -> None:
    """Children applied before the hash existed have no stamp: one apply brings them in line."""
    fm = fraudmodel()
    manifest = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bot", "namespace": "risk"}, "spec": {}}
    live = with_owner(manifest, fm)
    del live["metadata"]["annotations"]
    assert not up_to_date(with_owner(manifest, fm), live)


def test_the_index_keeps_what_the_reconcile_reads_and_drops_what_the_server_keeps() -> None:
    fm = fraudmodel()
    manifest = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "bot-stable", "namespace": "risk", "labels": {"app": "bot"}},
        "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "m", "image": "m:v1"}]}}},
    }
    desired = with_owner(manifest, fm)
    live = {
        **desired,
        "metadata": {
            **desired["metadata"],
            "uid": "d1",
            "generation": 3,
            "resourceVersion": "812",
            "creationTimestamp": "2026-12-01T00:00:00Z",
            "managedFields": [{"manager": "fraudmodel-operator", "operation": "Apply", "fieldsV1": {"f:spec": {}}}],
            "annotations": {
                **desired["metadata"]["annotations"],
                "deployment.kubernetes.io/revision": "1",
                "kubectl.kubernetes.io/last-applied-configuration": "{...}",
            },
        },
        "spec": {**desired["spec"], "revisionHistoryLimit": 10},
        "status": {
            "observedGeneration": 3,
            "replicas": 2,
            "updatedReplicas": 2,
            "readyReplicas": 2,
            "availableReplicas": 2,
            "conditions": [{"type": "Available", "status": "True"}],
        },
    }
    slim = indexed(live)
    assert "managedFields" not in slim["metadata"]
    assert "resourceVersion" not in slim["metadata"]
    assert "kubectl.kubernetes.io/last-applied-configuration" not in slim["metadata"]["annotations"]
    assert "conditions" not in slim["status"]
    assert slim["status"]["readyReplicas"] == 2
    assert slim["metadata"]["generation"] == 3
    assert up_to_date(desired, slim), "everything the operator compares is kept"
    assert controller_uid(slim) == "u1"
    drifted = {**live, "spec": {**live["spec"], "replicas": 1}}
    assert not up_to_date(desired, indexed(drifted)), "a change to a field we set is still seen"
    assert live["metadata"]["managedFields"], "the watched object is not modified"


def test_the_index_keeps_every_top_level_field_of_a_kind_without_spec() -> None:
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "bot-routing", "namespace": "risk"}}
    desired = with_owner({**config, "data": {"routing.json": '{"weight": 10}'}}, fraudmodel())
    live = {**desired, "metadata": {**desired["metadata"], "managedFields": [{"manager": "x"}]}}
    assert up_to_date(desired, indexed(live))
    assert not up_to_date(desired, indexed({**live, "data": {"routing.json": '{"weight": 0}'}}))


def ref(uid: str, controller: bool = True, kind: str = "FraudModel") -> dict[str, Any]:
    return {
        "apiVersion": "serving.riskml.io/v1alpha1",
        "kind": kind,
        "name": "bot",
        "uid": uid,
        "controller": controller,
    }


@pytest.mark.parametrize(
    ("refs", "uid"),
    [
        ([ref("u1")], "u1"),
        ([ref("u2")], "u2"),
        ([], None),
        ([ref("u1", controller=False)], None),
        ([{**ref("u1"), "kind": "ReplicaSet", "apiVersion": "apps/v1"}], None),
        ([ref("u1", controller=False), ref("u3")], "u3"),
    ],
    ids=["ours", "another-fraudmodel", "orphan", "not-controller", "another-kind", "controller-of-two"],
)
def test_ownership_is_the_controller_uid_not_labels(refs: list[dict[str, Any]], uid: str | None) -> None:
    obj = {
        "metadata": {"name": "bot-stable", "labels": {"serving.riskml.io/fraudmodel": "bot"}, "ownerReferences": refs}
    }
    assert controller_uid(obj) == uid


@dataclass
class Answer:
    code: int
    body: dict[str, Any] | str
    content_type: str = "application/json"


@dataclass
class ApiServer:
    """An API server on loopback that answers every request with `answer` and records what it got."""

    answer: Answer = field(default_factory=lambda: Answer(200, {}))
    requests: list[dict[str, Any]] = field(default_factory=list)

    def status(self, code: int, message: str) -> None:
        self.answer = Answer(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
                                    "reason": "Invalid", "code": code})  # fmt: skip


@pytest.fixture
def server() -> Iterator[tuple[ApiServer, KubeClient]]:
    state = ApiServer()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            url = urlparse(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            state.requests.append(
                {
                    "method": self.command,
                    "path": url.path,
                    "query": {k: v[0] for k, v in parse_qs(url.query).items()},
                    "content_type": self.headers.get("Content-Type"),
                    "body": json.loads(body) if body else None,
                }
            )
            raw = state.answer.body if isinstance(state.answer.body, str) else json.dumps(state.answer.body)
            self.send_response(state.answer.code)
            self.send_header("Content-Type", state.answer.content_type)
            self.send_header("Content-Length", str(len(raw.encode())))
            self.end_headers()
            self.wfile.write(raw.encode())

        do_GET = do_PATCH = do_DELETE = _serve

        def log_message(self, *_: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    kube = KubeClient.connect(Configuration(host=f"http://127.0.0.1:{httpd.server_address[1]}"))
    try:
        yield state, kube
    finally:
        kube.close()
        httpd.shutdown()
        httpd.server_close()
        thread.join()


DEPLOYMENT = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "9bot-stable", "namespace": "n"}}


async def test_apply_is_a_forced_server_side_apply_under_the_operators_field_manager(
    server: tuple[ApiServer, KubeClient],
) -> None:
    api, kube = server
    await kube.apply(DEPLOYMENT)
    await kube.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bot", "namespace": "n"}})
    assert api.requests == [
        {
            "method": "PATCH",
            "path": "/apis/apps/v1/namespaces/n/deployments/9bot-stable",
            "query": {"fieldManager": "fraudmodel-operator", "force": "true"},
            "content_type": "application/apply-patch+yaml",
            "body": DEPLOYMENT,
        },
        {
            "method": "PATCH",
            "path": "/api/v1/namespaces/n/services/bot",
            "query": {"fieldManager": "fraudmodel-operator", "force": "true"},
            "content_type": "application/apply-patch+yaml",
            "body": {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bot", "namespace": "n"}},
        },
    ]
    assert kube.requests == {"apply": 2}


async def test_status_is_a_merge_patch_of_the_status_subresource(server: tuple[ApiServer, KubeClient]) -> None:
    api, kube = server
    await kube.patch_status("risk", "bot", {"phase": "Ready", "message": None})
    assert api.requests == [
        {
            "method": "PATCH",
            "path": "/apis/serving.riskml.io/v1alpha1/namespaces/risk/fraudmodels/bot/status",
            "query": {},
            "content_type": "application/merge-patch+json",
            "body": {"status": {"phase": "Ready", "message": None}},
        }
    ]


async def test_get_returns_the_object_as_served_and_delete_names_it(server: tuple[ApiServer, KubeClient]) -> None:
    api, kube = server
    live = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "vs"}, "spec": {}}
    api.answer = Answer(200, live)
    assert await kube.get("networking.istio.io/v1", "VirtualService", "n", "vs") == live
    await kube.delete("networking.k8s.io/v1", "Ingress", "n", "bot-canary")
    assert [(r["method"], r["path"]) for r in api.requests] == [
        ("GET", "/apis/networking.istio.io/v1/namespaces/n/virtualservices/vs"),
        ("DELETE", "/apis/networking.k8s.io/v1/namespaces/n/ingresses/bot-canary"),
    ]
    assert kube.requests == {"get": 1, "delete": 1}


async def test_a_refused_apply_names_the_object_and_quotes_the_api_server(server: tuple[ApiServer, KubeClient]) -> None:
    api, kube = server
    api.status(422, 'Deployment.apps "9bot-stable" is invalid: metadata.name: Invalid value')
    with pytest.raises(WriteRefused) as refused:
        await kube.apply(DEPLOYMENT)
    assert (refused.value.kind, refused.value.name) == ("Deployment", "9bot-stable")
    assert (
        str(refused.value)
        == 'Deployment 9bot-stable: Deployment.apps "9bot-stable" is invalid: metadata.name: Invalid value'
    )
    with pytest.raises(WriteRefused, match="delete refused"):
        await kube.delete("apps/v1", "Deployment", "n", "9bot-stable")


async def test_a_forbidden_read_is_not_servable_and_a_missing_object_is_none(
    server: tuple[ApiServer, KubeClient],
) -> None:
    api, kube = server
    api.status(403, "forbidden")
    with pytest.raises(NotServable, match="may not read"):
        await kube.get("apps/v1", "Deployment", "n", "x")
    api.status(404, "not found")
    assert await kube.get("apps/v1", "Deployment", "n", "x") is None
    await kube.delete("apps/v1", "Deployment", "n", "x")  # already gone: done


async def test_a_kind_the_cluster_does_not_serve_is_not_servable_also_behind_a_plain_proxy(
    server: tuple[ApiServer, KubeClient],
) -> None:
    """A missing CRD answers 404 (a Status from the API server, or plain text from a proxy in front)."""
    api, kube = server
    route = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "r", "namespace": "n"},
    }
    for answer in (Answer(404, {"kind": "Status", "code": 404}), Answer(404, "404 page not found", "text/plain")):
        api.answer = answer
        with pytest.raises(NotServable, match="install its CRD"):
            await kube.apply(route)
    api.answer = Answer(500, "upstream connect error", "text/plain")
    with pytest.raises(WriteRefused, match="HTTP 500"):
        await kube.apply(route)


async def test_a_kind_the_operator_does_not_write_fails_before_any_request(
    server: tuple[ApiServer, KubeClient],
) -> None:
    api, kube = server
    with pytest.raises(NotServable, match="not a kind the operator writes"):
        await kube.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "n"}})
    assert api.requests == []
