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


def plan_canary_ingress(fm: FraudModel, config: NginxRouting, stable_ingress: Manifest, canary: int) -> Manifest:
    """The user's Ingress rules, pointed at the canary Service, marked as an nginx canary with a weight."""
    spec: dict[str, Any] = copy.deepcopy(stable_ingress.get("spec", {}))
    spec.pop("tls", None)  # TLS is terminated by the primary Ingress
    canary_service = child_name(fm.metadata.name, "canary")
    for rule in spec.get("rules", []):
        for path in (rule.get("http") or {}).get("paths", []):
            path["backend"] = {"service": {"name": canary_service, "port": {"number": 80}}}
    if "defaultBackend" in spec:
        spec["defaultBackend"] = {"service": {"name": canary_service, "port": {"number": 80}}}
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
