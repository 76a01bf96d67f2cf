"""Asking a pod why it is not ready: the readiness endpoint's own answer (I/O).

The kubelet drops the body of a failing HTTP probe (kubernetes#99425), so the reason a
bento gives for refusing to serve (`{"reason": "ModelVersionMismatch", "message": ...}`)
never reaches the pod's Events. For a pod that runs but has not been ready past the grace
period, the operator sends the same GET itself; `pods.said` keeps a usable reason.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import httpx

from fraudmodel_operator.pods import PodState, said

BODY_LIMIT = 4096  # bytes of a readiness body read


class HttpReadiness:
    """Reads readiness bodies with an injected client (the operator's, or a test's)."""

    def __init__(self, http: httpx.AsyncClient, timeout: float = 2.0) -> None:
        self.http = http
        self.timeout = timeout

    async def ask(self, pod: PodState) -> tuple[str, str] | None:
        if pod.readiness_url is None:
            return None
        try:
            response = await self.http.get(pod.readiness_url, timeout=self.timeout)
        except httpx.HTTPError:
            return None  # unreachable from here (out of cluster, a NetworkPolicy): the generic message stays
        if response.is_success:
            return None
        try:
            body = json.loads(response.content[:BODY_LIMIT])
        except ValueError:
            return None
        return said(body)

    async def explain(self, pods: Sequence[PodState]) -> dict[str, tuple[str, str]]:
        """What each pod's readiness endpoint says, by pod name (pods that say nothing usable are left out)."""
        answers = await asyncio.gather(*(self.ask(pod) for pod in pods))
        return {pod.name: answer for pod, answer in zip(pods, answers, strict=True) if answer is not None}
