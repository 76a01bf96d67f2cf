"""Istio: route weights of a VirtualService's primary HTTP route."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fraudmodel_operator.api import FraudModel, IstioRouting
from fraudmodel_operator.kube import Kube, Manifest
from fraudmodel_operator.planner import child_name, common_labels
from fraudmodel_operator.routers.base import apply_if_changed, without_canary

API_VERSION = "networking.istio.io/v1"
ROUTE = "primary"


def _host(fm: FraudModel, track: str) -> str:
    return f"{child_name(fm.metadata.name, track)}.{fm.metadata.namespace}.svc.cluster.local"  # type: ignore[arg-type]


def plan_virtualservice(fm: FraudModel, config: IstioRouting, stable: int, canary: int) -> Manifest:
    hosts = list(config.hosts) or [f"{fm.metadata.name}.{fm.metadata.namespace}.svc.cluster.local"]
    route: list[dict[str, Any]] = [{"destination": {"host": _host(fm, "stable")}, "weight": stable}]
    if canary > 0 or fm.status.canary is not None:
        route.append({"destination": {"host": _host(fm, "canary")}, "weight": canary})
    spec: dict[str, Any] = {"hosts": hosts, "http": [{"name": ROUTE, "route": route}]}
    if config.gateways:
        spec["gateways"] = list(config.gateways)
    return {
        "apiVersion": API_VERSION,
        "kind": "VirtualService",
        "metadata": {"name": config.virtual_service, "namespace": fm.metadata.namespace, "labels": common_labels(fm)},
        "spec": spec,
    }


def weights_of(vs: Manifest | None, fm: FraudModel) -> tuple[int, int] | None:
    if not vs:
        return None
    for http in vs["spec"].get("http", []):
        if http.get("name") == ROUTE:
            by_host = {r["destination"]["host"]: int(r.get("weight", 0)) for r in http.get("route", [])}
            if _host(fm, "stable") in by_host:
                return by_host[_host(fm, "stable")], by_host.get(_host(fm, "canary"), 0)
    return None


@dataclass
class IstioRouter:
    kube: Kube
    config: IstioRouting

    async def reconcile(self, fm: FraudModel) -> None:
        weights = await self.get_weights(fm) or (100, 0)
        await self.set_weights(fm, *weights)

    async def set_weights(self, fm: FraudModel, stable: int, canary: int) -> None:
        await apply_if_changed(self.kube, fm, plan_virtualservice(fm, self.config, stable, canary))

    async def get_weights(self, fm: FraudModel) -> tuple[int, int] | None:
        live = await self.kube.get(API_VERSION, "VirtualService", fm.metadata.namespace, self.config.virtual_service)
        return weights_of(live, fm)

    async def finalize(self, fm: FraudModel) -> None:
        await self.set_weights(without_canary(fm), 100, 0)
