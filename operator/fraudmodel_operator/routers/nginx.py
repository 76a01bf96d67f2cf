"""ingress-nginx: a canary copy of the user's Ingress carrying `canary-weight`."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from fraudmodel_operator.api import FraudModel, NginxRouting
from fraudmodel_operator.kube import Kube, Manifest, NotServable
from fraudmodel_operator.planner import child_name, common_labels
from fraudmodel_operator.routers.base import apply_if_changed

API_VERSION = "networking.k8s.io/v1"
CANARY = "nginx.ingress.kubernetes.io/canary"
WEIGHT = "nginx.ingress.kubernetes.io/canary-weight"


def canary_ingress_name(config: NginxRouting) -> str:
    return f"{config.ingress}-canary"


def _own_backend(backend: Any, fm_name: str) -> bool:
    """Whether an Ingress backend is this FraudModel's shared or stable Service."""
    service = (backend or {}).get("service") or {}
    return service.get("name") in (child_name(fm_name), child_name(fm_name, "stable"))


def plan_canary_ingress(fm: FraudModel, config: NginxRouting, stable_ingress: Manifest, canary: int) -> Manifest:
    """The user's Ingress rules that lead to this FraudModel, pointed at the canary Service, marked as an
    nginx canary with a weight. Paths to other Services are left out: they must never get canary traffic."""
    source: dict[str, Any] = copy.deepcopy(stable_ingress.get("spec", {}))
    name = fm.metadata.name
    canary_backend = {"service": {"name": child_name(name, "canary"), "port": {"number": 80}}}
    spec: dict[str, Any] = {k: v for k, v in source.items() if k not in ("tls", "rules", "defaultBackend")}
    rules = []
    for rule in source.get("rules", []):
        paths = [p for p in (rule.get("http") or {}).get("paths", []) if _own_backend(p.get("backend"), name)]
        if paths:
            rules.append({**rule, "http": {"paths": [{**p, "backend": canary_backend} for p in paths]}})
    if rules:
        spec["rules"] = rules
    if _own_backend(source.get("defaultBackend"), name):
        spec["defaultBackend"] = canary_backend
    if not rules and "defaultBackend" not in spec:
        raise NotServable(
            f"Ingress {config.ingress!r} (spec.rollout.trafficRouting.nginx) has no path to Service "
            f"{child_name(name)!r} or {child_name(name, 'stable')!r}"
        )
    return {
        "apiVersion": API_VERSION,
        "kind": "Ingress",
        "metadata": {
            "name": canary_ingress_name(config),
            "namespace": fm.metadata.namespace,
            "labels": common_labels(fm, "canary"),
            "annotations": {CANARY: "true", WEIGHT: str(canary)},
        },
        "spec": spec,
    }


def weight_of(ingress: Manifest | None) -> int | None:
    if not ingress:
        return None
    annotations = ingress.get("metadata", {}).get("annotations") or {}
    return int(annotations[WEIGHT]) if annotations.get(CANARY) == "true" and WEIGHT in annotations else None


@dataclass
class NginxRouter:
    kube: Kube
    config: NginxRouting

    async def _stable_ingress(self, fm: FraudModel) -> Manifest:
        live = await self.kube.get(API_VERSION, "Ingress", fm.metadata.namespace, self.config.ingress)
        if live is None:
            raise NotServable(f"Ingress {self.config.ingress!r} (spec.rollout.trafficRouting.nginx) does not exist")
        return live

    async def reconcile(self, fm: FraudModel) -> None:
        await self._stable_ingress(fm)

    async def set_weights(self, fm: FraudModel, stable: int, canary: int) -> None:
        if fm.status.canary is None and canary == 0:
            await self.finalize(fm)
            return
        await apply_if_changed(
            self.kube, fm, plan_canary_ingress(fm, self.config, await self._stable_ingress(fm), canary)
        )

    async def get_weights(self, fm: FraudModel) -> tuple[int, int] | None:
        live = await self.kube.get(API_VERSION, "Ingress", fm.metadata.namespace, canary_ingress_name(self.config))
        weight = weight_of(live)
        return None if weight is None else (100 - weight, weight)

    async def finalize(self, fm: FraudModel) -> None:
        ns = fm.metadata.namespace
        if await self.kube.get(API_VERSION, "Ingress", ns, canary_ingress_name(self.config)) is not None:
            await self.kube.delete(API_VERSION, "Ingress", ns, canary_ingress_name(self.config))
