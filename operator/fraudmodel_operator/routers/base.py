"""The router Protocol and the shared apply-if-changed step."""

from __future__ import annotations

from typing import Protocol

from fraudmodel_operator.api import FraudModel
from fraudmodel_operator.kube import Kube, Manifest, up_to_date, with_owner


class TrafficRouter(Protocol):
    """Four verbs, as in Flagger: set up, set weights, read weights, tear down."""

    async def reconcile(self, fm: FraudModel) -> None:
        """Create or repair the routing objects (weights unchanged)."""

    async def set_weights(self, fm: FraudModel, stable: int, canary: int) -> None:
        """Send `stable`% and `canary`% of requests to each track."""

    async def get_weights(self, fm: FraudModel) -> tuple[int, int] | None:
        """The live `(stable, canary)` weights, or None when not set up."""

    async def finalize(self, fm: FraudModel) -> None:
        """All traffic to stable; remove what only the canary needed."""


async def apply_if_changed(kube: Kube, fm: FraudModel, manifest: Manifest) -> bool:
    """Server-side apply `manifest` (owned by `fm`) unless it is already live. True if written."""
    desired = with_owner(manifest, fm)
    meta = manifest["metadata"]
    live = await kube.get(manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"])
    if up_to_date(desired, live):
        return False
    await kube.apply(desired)
    return True


def without_canary(fm: FraudModel) -> FraudModel:
    """`fm` as its router sees it once finalised: no canary to name in any route."""
    return fm.model_copy(update={"status": fm.status.model_copy(update={"canary": None})})
