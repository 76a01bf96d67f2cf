"""Each router writes only the fields it owns and reads back the weights it wrote."""

from __future__ import annotations

from typing import Any

import pytest

from fraudmodel_operator.api import FraudModelStatus, GatewayAPIRouting, IstioRouting, NginxRouting
from fraudmodel_operator.kube import Manifest, NotServable, up_to_date, with_owner
from fraudmodel_operator.routers import GatewayAPIRouter, IstioRouter, NginxRouter, ReplicaRatioRouter, router_for
from fraudmodel_operator.routers.gateway_api import plan_httproute
from fraudmodel_operator.routers.gateway_api import weights_of as route_weights
from fraudmodel_operator.routers.istio import plan_virtualservice
from fraudmodel_operator.routers.istio import weights_of as vs_weights
from fraudmodel_operator.routers.nginx import CANARY, WEIGHT, plan_canary_ingress, weight_of
from tests.unit.factories import canary, fraudmodel, track

RUNNING = FraudModelStatus(stable=track("v1", 70), canary=canary("v2", 30))


class FakeKube:
    """Records writes; serves what was applied."""

    def __init__(self, objects: dict[tuple[str, str], Manifest] | None = None) -> None:
        self.objects = objects or {}
        self.applied: list[Manifest] = []
        self.deleted: list[tuple[str, str]] = []

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> Manifest | None:
        return self.objects.get((kind, name))

    async def apply(self, manifest: Manifest) -> None:
        self.applied.append(manifest)
        self.objects[(manifest["kind"], manifest["metadata"]["name"])] = manifest

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        self.deleted.append((kind, name))
        self.objects.pop((kind, name), None)

    async def patch_status(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        raise AssertionError("routers never patch status")


def test_httproute_owns_only_backends_and_parents() -> None:
    config = GatewayAPIRouting(http_route="bot-route", parent_refs=[{"name": "gw"}])
    route = plan_httproute(fraudmodel("v2", status=RUNNING), config, 70, 30)
    assert set(route["spec"]) == {"rules", "parentRefs"}
    assert route["spec"]["rules"] == [
        {
            "backendRefs": [
                {"name": "bot-stable", "port": 80, "weight": 70},
                {"name": "bot-canary", "port": 80, "weight": 30},
            ]
        }
    ]
    assert route_weights(route, "bot") == (70, 30)


def test_virtualservice_route_weights() -> None:
    vs = plan_virtualservice(fraudmodel("v2", status=RUNNING), IstioRouting(virtual_service="bot-vs"), 70, 30)
    route = vs["spec"]["http"][0]["route"]
    assert [(r["destination"]["host"], r["weight"]) for r in route] == [
        ("bot-stable.risk.svc.cluster.local", 70),
        ("bot-canary.risk.svc.cluster.local", 30),
    ]
    assert vs["spec"]["hosts"] == ["bot.risk.svc.cluster.local"]
    assert vs_weights(vs, fraudmodel("v2", status=RUNNING)) == (70, 30)


STABLE_INGRESS: Manifest = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "Ingress",
    "metadata": {"name": "bot", "namespace": "risk", "annotations": {"kubernetes.io/ingress.class": "nginx"}},
    "spec": {
        "tls": [{"hosts": ["bot.example.com"], "secretName": "tls"}],
        "rules": [
            {
                "host": "bot.example.com",
                "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "bot"}}}]},
            }
        ],
    },
}


def test_nginx_canary_ingress_copies_rules_and_sets_weight() -> None:
    ingress = plan_canary_ingress(fraudmodel("v2", status=RUNNING), NginxRouting(ingress="bot"), STABLE_INGRESS, 30)
    assert ingress["metadata"]["name"] == "bot-canary"
    assert ingress["metadata"]["annotations"] == {CANARY: "true", WEIGHT: "30"}
    path = ingress["spec"]["rules"][0]["http"]["paths"][0]
    assert path["backend"] == {"service": {"name": "bot-canary", "port": {"number": 80}}}
    assert "tls" not in ingress["spec"]
    assert STABLE_INGRESS["spec"]["rules"][0]["http"]["paths"][0]["backend"] == {"service": {"name": "bot"}}, (
        "no mutation"
    )
    assert weight_of(ingress) == 30


async def test_nginx_router_finalize_removes_the_canary_ingress() -> None:
    kube = FakeKube({("Ingress", "bot"): STABLE_INGRESS})
    fm = fraudmodel("v2", status=RUNNING, rollout={"trafficRouting": {"nginx": {"ingress": "bot"}}})
    router = router_for(fm, kube)
    assert isinstance(router, NginxRouter)
    await router.set_weights(fm, 70, 30)
    assert await router.get_weights(fm) == (70, 30)
    await router.finalize(fm)
    assert kube.deleted == [("Ingress", "bot-canary")]


async def test_nginx_router_without_the_users_ingress_is_not_servable() -> None:
    fm = fraudmodel("v2", status=RUNNING, rollout={"trafficRouting": {"nginx": {"ingress": "missing"}}})
    with pytest.raises(NotServable, match="missing"):
        await router_for(fm, FakeKube()).set_weights(fm, 70, 30)


async def test_weights_are_written_once_then_left_alone() -> None:
    kube = FakeKube()
    fm = fraudmodel("v2", status=RUNNING, rollout={"trafficRouting": {"gatewayAPI": {"httpRoute": "r"}}})
    router = router_for(fm, kube)
    assert isinstance(router, GatewayAPIRouter)
    await router.set_weights(fm, 70, 30)
    await router.set_weights(fm, 70, 30)
    assert len(kube.applied) == 1
    assert kube.applied[0]["metadata"]["ownerReferences"][0]["uid"] == "u1"
    await router.finalize(fm)
    assert await router.get_weights(fm) == (100, 0)


async def test_istio_router_round_trip() -> None:
    kube = FakeKube()
    fm = fraudmodel("v2", status=RUNNING, rollout={"trafficRouting": {"istio": {"virtualService": "vs"}}})
    router = router_for(fm, kube)
    assert isinstance(router, IstioRouter)
    assert await router.get_weights(fm) is None
    await router.reconcile(fm)
    assert await router.get_weights(fm) == (100, 0)
    await router.set_weights(fm, 40, 60)
    assert await router.get_weights(fm) == (40, 60)


@pytest.mark.parametrize(
    ("selector", "weights"),
    [({"serving.riskml.io/track": "stable"}, (100, 0)), ({}, (70, 30))],
    ids=["shared-service-selects-stable", "shared-service-selects-both"],
)
async def test_replica_ratio_reads_weights_from_ready_pods_behind_the_shared_service(
    selector: dict[str, str], weights: tuple[int, int]
) -> None:
    def deployment(ready: int) -> Manifest:
        return {"status": {"readyReplicas": ready}}

    kube = FakeKube(
        {
            ("Service", "bot"): {"spec": {"selector": {"app.kubernetes.io/instance": "bot", **selector}}},
            ("Deployment", "bot-stable"): deployment(7),
            ("Deployment", "bot-canary"): deployment(3),
        }
    )
    fm = fraudmodel("v2", status=RUNNING)
    router = router_for(fm, kube)
    assert isinstance(router, ReplicaRatioRouter)
    await router.set_weights(fm, 70, 30)
    assert kube.applied == [], "replica ratio writes nothing itself"
    assert await router.get_weights(fm) == weights


def test_nginx_canary_ingress_carries_only_the_fraudmodels_own_paths() -> None:
    """Other Services' paths of a shared Ingress must never get canary traffic."""
    shared: Manifest = {
        "spec": {
            "ingressClassName": "nginx",
            "rules": [
                {
                    "host": "api.example.com",
                    "http": {
                        "paths": [
                            {"path": "/score", "pathType": "Prefix", "backend": {"service": {"name": "bot"}}},
                            {"path": "/pay", "pathType": "Prefix", "backend": {"service": {"name": "payments"}}},
                        ]
                    },
                },
                {
                    "host": "other.example.com",
                    "http": {"paths": [{"path": "/", "backend": {"service": {"name": "x"}}}]},
                },
            ],
            "defaultBackend": {"service": {"name": "payments"}},
        }
    }
    ingress = plan_canary_ingress(fraudmodel("v2", status=RUNNING), NginxRouting(ingress="api"), shared, 30)
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert "defaultBackend" not in ingress["spec"]
    assert [r["host"] for r in ingress["spec"]["rules"]] == ["api.example.com"]
    paths = ingress["spec"]["rules"][0]["http"]["paths"]
    assert [(p["path"], p["backend"]["service"]["name"]) for p in paths] == [("/score", "bot-canary")]


def test_nginx_ingress_without_a_path_to_the_fraudmodel_is_not_servable() -> None:
    other: Manifest = {"spec": {"rules": [{"http": {"paths": [{"path": "/", "backend": {"service": {"name": "x"}}}]}}]}}
    with pytest.raises(NotServable, match="no path"):
        plan_canary_ingress(fraudmodel("v2", status=RUNNING), NginxRouting(ingress="api"), other, 30)


async def test_finalize_drops_the_canary_backend_even_mid_rollout() -> None:
    """A router switched mid-canary is finalised: no route may name a canary Service about to go."""
    kube = FakeKube()
    fm = fraudmodel("v2", status=RUNNING, rollout={"trafficRouting": {"gatewayAPI": {"httpRoute": "r"}}})
    router = router_for(fm, kube)
    await router.set_weights(fm, 70, 30)
    await router.finalize(fm)
    backends = kube.objects[("HTTPRoute", "r")]["spec"]["rules"][0]["backendRefs"]
    assert [b["name"] for b in backends] == ["bot-stable"]


def test_up_to_date_ignores_server_defaults_but_not_our_fields() -> None:
    fm = fraudmodel()
    desired = with_owner(
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}}, fm
    )
    live = {
        "metadata": {**desired["metadata"], "uid": "x", "resourceVersion": "9"},
        "spec": {"ports": [{"port": 80, "protocol": "TCP"}], "clusterIP": "10.0.0.1"},
    }
    assert up_to_date(desired, live)
    live["spec"]["ports"][0]["port"] = 81
    assert not up_to_date(desired, live)
    assert not up_to_date(desired, None)
