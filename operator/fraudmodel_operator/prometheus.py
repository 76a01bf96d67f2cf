"""The Prometheus metric provider: instant queries over the HTTP API with an injected client."""

from __future__ import annotations

import math
from dataclasses import dataclass

import httpx

from fraudmodel_operator.analysis import ProviderError, Vector


@dataclass
class PrometheusProvider:
    """Queries `address` with `client` (injected, so tests can swap the transport)."""

    client: httpx.AsyncClient
    address: str
    timeout: float = 5.0

    async def query(self, promql: str) -> Vector:
        try:
            response = await self.client.get(
                f"{self.address.rstrip('/')}/api/v1/query", params={"query": promql}, timeout=self.timeout
            )
        except httpx.TimeoutException as exc:
            raise ProviderError(f"Prometheus at {self.address} timed out after {self.timeout}s") from exc
        except httpx.HTTPError as exc:
            raise ProviderError(f"Prometheus at {self.address} unreachable: {exc}") from exc
        try:
            body = response.json()
        except ValueError as exc:
            raise ProviderError(f"Prometheus answered HTTP {response.status_code} without JSON") from exc
        if response.status_code != 200 or body.get("status") != "success":
            raise ProviderError(f"Prometheus rejected the query ({body.get('errorType')}): {body.get('error')}")
        data = body["data"]
        if data["resultType"] == "scalar":
            return _finite([({}, float(data["result"][1]))])
        if data["resultType"] != "vector":
            raise ProviderError(f"expected an instant vector, got {data['resultType']}")
        return _finite([(item["metric"], float(item["value"][1])) for item in data["result"]])

    async def is_online(self) -> bool:
        try:
            response = await self.client.get(f"{self.address.rstrip('/')}/-/ready", timeout=self.timeout)
        except httpx.HTTPError:
            return False
        return response.status_code == 200


def _finite(vector: Vector) -> Vector:
    """Drop NaN samples (e.g. 0/0 rates): no data is not a value."""
    return [(labels, value) for labels, value in vector if not math.isnan(value)]
