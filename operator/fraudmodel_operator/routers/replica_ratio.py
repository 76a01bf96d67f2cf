"""Replica ratio: the shared Service selects both tracks; the planner sizes them by weight."""

from __future__ import annotations

from dataclasses import dataclass

from fraudmodel_operator.api import FraudModel
from fraudmodel_operator.kube import Kube
from fraudmodel_operator.planner import child_name


@dataclass
class ReplicaRatioRouter:
    kube: Kube

    async def reconcile(self, fm: FraudModel) -> None:
        """Nothing to set up: the shared Service is a planned child."""

    async def set_weights(self, fm: FraudModel, stable: int, canary: int) -> None:
        """Nothing to write: replica counts carry the weight (see planner.plan_tracks)."""

    async def get_weights(self, fm: FraudModel) -> tuple[int, int] | None:
        ns = fm.metadata.namespace
        pods = []
        for track in ("stable", "canary"):
            live = await self.kube.get("apps/v1", "Deployment", ns, child_name(fm.metadata.name, track))
            pods.append(int(((live or {}).get("status") or {}).get("readyReplicas") or 0))
        total = sum(pods)
        if total == 0:
            return None
        canary = round(100 * pods[1] / total)
        return 100 - canary, canary

    async def finalize(self, fm: FraudModel) -> None:
        """Nothing to remove."""
