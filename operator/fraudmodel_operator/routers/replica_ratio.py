"""Replica ratio: the shared Service selects the canary's pods beside the stable's while the canary is
routed; the planner sizes both tracks by weight. The shared Service is a planned child, so this router
writes nothing itself; it reads back the split that ready pods really make. With stickyBy the stable
pods' edge splits by key instead, at the weight of the routing config (also a planned child), which is
what it reads back then."""

from __future__ import annotations

from dataclasses import dataclass

from fraudmodel_operator.api import FraudModel
from fraudmodel_operator.edge_routing import configmap_name, routing_of
from fraudmodel_operator.kube import Kube, Manifest
from fraudmodel_operator.planner import TRACK_LABEL, child_name


def weights_of(shared: Manifest | None, stable: Manifest | None, canary: Manifest | None) -> tuple[int, int] | None:
    """The `(stable, canary)` split of ready pods behind the shared Service (None: nothing serves)."""
    if shared is None:
        return None
    selects_canary = TRACK_LABEL not in ((shared.get("spec") or {}).get("selector") or {})
    ready = [int(((d or {}).get("status") or {}).get("readyReplicas") or 0) for d in (stable, canary)]
    if not selects_canary:
        ready[1] = 0
    total = sum(ready)
    if total == 0:
        return None
    share = round(100 * ready[1] / total)
    return 100 - share, share


def sticky_weights(configmap: Manifest | None) -> tuple[int, int] | None:
    """The `(stable, canary)` split of the stable edge's routing config (None: no config yet)."""
    if configmap is None:
        return None
    sticky = routing_of(configmap).sticky
    canary = sticky.weight if sticky is not None else 0
    return 100 - canary, canary


@dataclass
class ReplicaRatioRouter:
    kube: Kube

    async def reconcile(self, fm: FraudModel) -> None:
        """Nothing to set up: the shared Service is a planned child."""

    async def set_weights(self, fm: FraudModel, stable: int, canary: int) -> None:
        """Nothing to write: the shared Service's selector and the replica counts carry the weight."""

    async def get_weights(self, fm: FraudModel) -> tuple[int, int] | None:
        ns, name = fm.metadata.namespace, fm.metadata.name
        if fm.spec.rollout.sticky_by is not None:
            # stickyBy: the stable pods' edge splits, at the weight of the routing config it mounts.
            return sticky_weights(await self.kube.get("v1", "ConfigMap", ns, configmap_name(name)))
        shared = await self.kube.get("v1", "Service", ns, child_name(name))
        deployments = [
            await self.kube.get("apps/v1", "Deployment", ns, child_name(name, t)) for t in ("stable", "canary")
        ]
        return weights_of(shared, *deployments)

    async def finalize(self, fm: FraudModel) -> None:
        """Nothing to remove: the shared Service returns to the stable pods through the plan."""
