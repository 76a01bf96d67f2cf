"""The stable edge's routing config: a ConfigMap mounted into the stable pods (never their env, which
would restart them), whose writes are ordered like a router's."""

from __future__ import annotations

import json
from typing import Any

from fraudmodel_operator.api import FraudModelStatus
from fraudmodel_operator.edge_routing import (
    ROUTING_FILE_ENV,
    ROUTING_KEY,
    ROUTING_MOUNT,
    EdgeRouting,
    ShadowTarget,
    parse_document,
    plan_routing_configmap,
    routing_of,
    routing_rank,
)
from fraudmodel_operator.ordering import plan_writes
from fraudmodel_operator.planner import plan_children
from tests.unit.factories import canary, fraudmodel, track


def by_name(children: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(c["kind"], c["metadata"]["name"]): c for c in children}


SHADOW = ShadowTarget(url="http://bot-shadow.default.svc:80", sample=0.25, version="v2")


def _configmap(routing: EdgeRouting) -> dict[str, Any]:
    return plan_routing_configmap(fraudmodel(), routing, {"app.kubernetes.io/managed-by": "fraudmodel-operator"})


def test_only_the_stable_pods_mount_the_whole_configmap_and_are_told_where() -> None:
    status = FraudModelStatus(stable=track("v1", 90), canary=canary("v2", 10))
    children = by_name(plan_children(fraudmodel("v2", status=status, serving={"replicas": 2})))
    stable = children[("Deployment", "bot-stable")]["spec"]["template"]["spec"]
    volume = next(v for v in stable["volumes"] if v.get("configMap"))
    assert volume["configMap"] == {"name": "bot-routing", "optional": True}
    (container,) = stable["containers"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
    assert mount == {"name": volume["name"], "mountPath": ROUTING_MOUNT, "readOnly": True}
    assert "subPath" not in mount, "a subPath mount is never refreshed by the kubelet"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env[ROUTING_FILE_ENV] == f"{ROUTING_MOUNT}/{ROUTING_KEY}"
    canary_pod = children[("Deployment", "bot-canary")]["spec"]["template"]["spec"]
    assert not any(v.get("configMap") for v in canary_pod["volumes"])
    assert ROUTING_FILE_ENV not in {e["name"] for e in canary_pod["containers"][0]["env"]}
    configmap = children[("ConfigMap", "bot-routing")]
    assert configmap["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "fraudmodel-operator"
    assert routing_of(configmap) == EdgeRouting()


def test_document_round_trips_with_a_revision_that_changes_with_the_content() -> None:
    empty, shadow = EdgeRouting().document(), EdgeRouting(shadow=SHADOW).document()
    assert empty["revision"] != shadow["revision"]
    assert EdgeRouting(shadow=SHADOW).document() == shadow, "deterministic: no needless write"
    assert parse_document(json.dumps(shadow)) == EdgeRouting(shadow=SHADOW)
    assert shadow["shadow"] == {"url": SHADOW.url, "sample": 0.25, "version": "v2"}


def test_a_missing_or_broken_document_reads_as_no_routing() -> None:
    assert parse_document(None) == EdgeRouting()
    assert parse_document("{not json") == EdgeRouting()
    assert parse_document('{"shadow": {"url": "x", "sample": 7, "version": "v2"}}') == EdgeRouting()
    assert routing_of(None) == EdgeRouting()


def test_more_traffic_somewhere_is_exposed_after_capacity_less_goes_first() -> None:
    none, quarter = _configmap(EdgeRouting()), _configmap(EdgeRouting(shadow=SHADOW))
    half = _configmap(EdgeRouting(shadow=SHADOW.model_copy(update={"sample": 0.5})))
    assert routing_rank(quarter, None) == "expose"
    assert routing_rank(quarter, none) == "expose"
    assert routing_rank(half, quarter) == "expose"
    assert routing_rank(quarter, half) == "reduce"
    assert routing_rank(none, quarter) == "reduce"
    assert routing_rank(none, None) == "reduce"


def test_the_routing_configmap_is_written_in_its_rank() -> None:
    """A config that stops mirroring goes before everything else of the reconcile."""
    fm = fraudmodel(status=FraudModelStatus(stable=track("v1")))
    desired = plan_children(fm)
    live = {(m["kind"], m["metadata"]["name"]): m for m in desired}
    live[("ConfigMap", "bot-routing")] = _configmap(EdgeRouting(shadow=SHADOW))
    i = next(i for i, m in enumerate(desired) if m["kind"] == "Deployment")
    desired[i] = {**desired[i], "spec": {**desired[i]["spec"], "minReadySeconds": 5}}  # a capacity write too
    applies = [w for w in plan_writes(fm, fm, desired, live, 0, 0).writes if w.verb == "apply"]
    assert [(w.kind, w.name, w.rank) for w in applies] == [
        ("ConfigMap", "bot-routing", "reduce"),
        ("Deployment", "bot-stable", "capacity"),
    ]
