"""Gateway API: weights on the backendRefs of one HTTPRoute rule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fraudmodel_operator.api import FraudModel, GatewayAPIRouting
from fraudmodel_operator.kube import Kube, Manifest
from fraudmodel_operator.planner import child_name, common_labels
from fraudmodel_operator.routers.base import apply_if_changed, without_canary

API_VERSION = "gateway.networking.k8s.io/v1"


def plan_httproute(fm: FraudModel, config: GatewayAPIRouting, stable: int, canary: int) -> Manifest:
    """The HTTPRoute fields the operator owns: parentRefs and the weighted backends of its rule."""
    name = fm.metadata.name
    backends: list[dict[str, Any]] = [{"name": child_name(name, "stable"), "port": 80, "weight": stable}]
    if canary > 0 or fm.status.canary is not None:
        backends.append({"name": child_name(name, "canary"), "port": 80, "weight": canary})
    spec: dict[str, Any] = {"rules": [{"backendRefs": backends}]}
    if config.parent_refs:
        spec["parentRefs"] = [
            ref.model_dump(mode="json", by_alias=True, exclude_none=True) for ref in config.parent_refs
        ]
    return {
        "apiVersion": API_VERSION,
        "kind": "HTTPRoute",
        "metadata": {"name": config.http_route, "namespace": fm.metadata.namespace, "labels": common_labels(fm)},
        "spec": spec,
    }


def weights_of(route: Manifest | None, fm_name: str) -> tuple[int, int] | None:
    if not route:
        return None
    refs = {
        r.get("name"): int(r.get("weight", 1))
        for rule in route["spec"].get("rules", [])
        for r in rule.get("backendRefs", [])
    }
    if child_name(fm_name, "stable") not in refs:
        return None
    return refs[child_name(fm_name, "stable")], refs.get(child_name(fm_name, "canary"), 0)


@dataclass
class GatewayAPIRouter:
    kube: Kube
    config: GatewayAPIRouting

    async def reconcile(self, fm: FraudModel) -> None:
        weights = await self.get_weights(fm) or (100, 0)
        await self.set_weights(fm, *weights)

    async def set_weights(self, fm: FraudModel, stable: int, canary: int) -> None:
        await apply_if_changed(self.kube, fm, plan_httproute(fm, self.config, stable, canary))

    async def get_weights(self, fm: FraudModel) -> tuple[int, int] | None:
        live = await self.kube.get(API_VERSION, "HTTPRoute", fm.metadata.namespace, self.config.http_route)
        return weights_of(live, fm.metadata.name)

    async def finalize(self, fm: FraudModel) -> None:
        await self.set_weights(without_canary(fm), 100, 0)
