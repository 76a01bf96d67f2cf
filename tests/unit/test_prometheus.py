"""The Prometheus provider over an injected transport: vectors, scalars, errors, NaN."""

from __future__ import annotations

import httpx
import pytest

from fraudmodel_operator.analysis import ProviderError
from fraudmodel_operator.prometheus import PrometheusProvider


def provider(handler: httpx.MockTransport) -> PrometheusProvider:
    return PrometheusProvider(httpx.AsyncClient(transport=handler), "http://prom:9090", timeout=1)


def answer(body: dict[str, object], status: int = 200) -> httpx.MockTransport:
    return httpx.MockTransport(lambda request: httpx.Response(status, json=body))


async def test_vector_with_labels() -> None:
    body = {
        "status": "success",
        "data": {"resultType": "vector", "result": [{"metric": {"le": "0.5"}, "value": [1, "12"]}]},
    }
    assert await provider(answer(body)).query("q") == [({"le": "0.5"}, 12.0)]


async def test_nan_is_no_data() -> None:
    body = {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, "NaN"]}]}}
    assert await provider(answer(body)).query("q") == []


async def test_query_error_names_the_reason() -> None:
    body = {"status": "error", "errorType": "bad_data", "error": "parse error at char 3"}
    with pytest.raises(ProviderError, match="parse error at char 3"):
        await provider(answer(body, 400)).query("sum(")


async def test_unreachable_is_a_provider_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(ProviderError, match="unreachable"):
        await provider(httpx.MockTransport(refuse)).query("q")
    assert not await provider(httpx.MockTransport(refuse)).is_online()


async def test_query_is_sent_as_a_parameter() -> None:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"status": "success", "data": {"resultType": "vector", "result": []}})

    await provider(httpx.MockTransport(record)).query('sum(x{a="b"})')
    assert seen[0].url.path == "/api/v1/query"
    assert seen[0].url.params["query"] == 'sum(x{a="b"})'
