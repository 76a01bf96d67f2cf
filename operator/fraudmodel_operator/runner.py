"""Start Kopf with the project's handlers."""

from __future__ import annotations

import random

import kopf

from fraudmodel_operator import handlers  # noqa: F401  (registers the handlers)
from fraudmodel_operator.settings import OperatorConfig


async def run(config: OperatorConfig) -> None:
    """Run until signalled. Peering elects one active replica; the others wait."""
    memo = kopf.Memo(config=config)
    await kopf.operator(
        clusterwide=not config.namespaces,
        namespaces=list(config.namespaces),
        standalone=config.standalone,
        peering_name=config.peering,
        # Equal priorities would pause every replica; a random one picks a single leader.
        priority=random.randint(1, 1_000_000),
        liveness_endpoint=f"http://0.0.0.0:{config.liveness_port}/healthz",
        memo=memo,
    )
