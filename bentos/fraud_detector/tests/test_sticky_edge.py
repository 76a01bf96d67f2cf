"""The stable edge's sticky split, driven through the real middleware (ASGI) with a fake canary.

The canary fake answers like a canary /predict_batch (version "v2"), or fails in each way the
fallback policy names; the stable scores with version "v1". Real servers: tests/integration.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import httpx
import pytest

from fraud_detector.data import payloads
from fraud_detector.edge import EdgeMiddleware
from fraud_detector.metrics import service_metrics
from fraud_detector.routing import parse_routing
from fraud_detector.schema import Prediction, Transaction
from fraud_detector.settings import Settings
from fraud_detector.sticky import on_canary
from fraud_detector.sticky_edge import FALLBACK_REASONS, Breaker, CanaryFailure

SALT = "rev-test"
BODIES = payloads(400, seed=11)


def _prediction(t: Transaction, version: str) -> Prediction:
    return Prediction(
        transaction_id=t.transaction_id,
        score=0.1,
        decision="allow",
        threshold=0.5,
        model="m",
        version=version,
    )


async def _stable_score(transactions: Sequence[Transaction]) -> list[Prediction]:
    return [_prediction(t, "v1") for t in transactions]


class FakeCanary:
    """Answers as the canary would, or fails with `failure` (a FALLBACK_REASONS key) / an HTTP status."""

    def __init__(self, failure: str | None = None, status: int = 200) -> None:
        self.failure = failure
        self.status = status
        self.calls: list[list[dict[str, Any]]] = []
        self.headers: list[dict[str, str]] = []

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        assert url == "http://canary:80"
        items = json.loads(body)["transactions"]
        self.calls.append(items)
        self.headers.append(headers)
        if self.failure is not None:
            raise CanaryFailure(self.failure)
        if self.status != 200:
            return self.status, b'{"error": "x"}'
        answers = [_prediction(Transaction.model_validate(i), "v2").model_dump() for i in items]
        return 200, json.dumps(answers).encode()


async def _not_found(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("direct scoring never reaches BentoML's app")


def _edge(canary: FakeCanary, weight: float, source: str = "field:account_id", track: str = "stable") -> Any:
    raw = {"url": "http://canary:80", "weight": weight, "source": source, "salt": SALT}
    config = parse_routing(json.dumps({"revision": "cfg-1", "sticky": raw}))
    settings = Settings(track=track)
    metrics = service_metrics("v1", track)
    return EdgeMiddleware(
        _not_found,
        settings=settings,
        metrics=lambda: metrics,
        scorer=lambda: _stable_score,
        routing=lambda: config,
        canary_client=canary,
    )


def _post(app: Any, path: str, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://stable") as client:
            return await client.post(path, json=body, headers=headers or {})

    return asyncio.run(go())


def _account(i: int) -> str:
    return f"acct-{i:05d}"


def _counter(name: str, **labels: str) -> float:
    import prometheus_client

    value = prometheus_client.REGISTRY.get_sample_value(name, labels)
    return value or 0.0


def test_every_request_of_an_account_gets_its_tracks_answer() -> None:
    canary = FakeCanary()
    app = _edge(canary, 30)
    seen: dict[str, set[str]] = {}
    for i, body in enumerate(BODIES):
        account = _account(i % 40)  # 40 accounts, 10 requests each
        response = _post(app, "/predict", {**body, "account_id": account})
        assert response.headers["x-fraudmodel-routing"] == "cfg-1"  # the config that assigned it
        answer = response.json()
        seen.setdefault(account, set()).add(answer["version"])
        assert answer["transaction_id"] == body["transaction_id"]
    for account, versions in seen.items():
        assert versions == {"v2" if on_canary(account, SALT, 30) else "v1"}, account
    assert {"v1"} in seen.values() and {"v2"} in seen.values()


def test_a_batch_is_split_by_account_and_answered_in_order() -> None:
    canary = FakeCanary()
    app = _edge(canary, 50)
    items = [{**b, "account_id": _account(i)} for i, b in enumerate(BODIES[:60])]
    answers = _post(app, "/predict_batch", {"transactions": items}).json()
    assert [a["transaction_id"] for a in answers] == [i["transaction_id"] for i in items]
    expected = ["v2" if on_canary(i["account_id"], SALT, 50) else "v1" for i in items]
    assert [a["version"] for a in answers] == expected
    assert len(canary.calls) == 1  # the canary's part in one request
    assert len(canary.calls[0]) == expected.count("v2")
    assert canary.headers[0]["x-fraudmodel-forwarded-by"] == "stable"


def test_a_header_key_routes_the_whole_request() -> None:
    canary = FakeCanary()
    app = _edge(canary, 40, source="header:X-Account-Id")
    on = next(_account(i) for i in range(100) if on_canary(_account(i), SALT, 40))
    off = next(_account(i) for i in range(100) if not on_canary(_account(i), SALT, 40))
    batch = {"transactions": BODIES[:5]}
    assert {a["version"] for a in _post(app, "/predict_batch", batch, {"X-Account-Id": on}).json()} == {"v2"}
    assert {a["version"] for a in _post(app, "/predict_batch", batch, {"x-account-id": off}).json()} == {"v1"}


def test_no_key_stays_on_stable_and_is_counted() -> None:
    canary = FakeCanary()
    app = _edge(canary, 100)
    before = _counter(
        "fraud_model_sticky_transactions_total", model_version="v1", track="stable", route="unkeyed"
    )
    assert _post(app, "/predict", BODIES[0]).json()["version"] == "v1"
    after = _counter(
        "fraud_model_sticky_transactions_total", model_version="v1", track="stable", route="unkeyed"
    )
    assert after == before + 1
    assert canary.calls == []


def test_the_canary_track_never_forwards() -> None:
    canary = FakeCanary()
    app = _edge(canary, 100, track="canary")
    assert _post(app, "/predict", {**BODIES[0], "account_id": "a"}).json()["version"] == "v1"
    assert canary.calls == []


@pytest.mark.parametrize(
    ("failure", "status", "reason"),
    [
        ("unreachable", 200, "unreachable"),
        ("timeout", 200, "timeout"),
        (None, 503, "shed"),
        (None, 500, "error"),
        (None, 422, "refused"),
    ],
    ids=["unreachable", "timeout", "shed", "error", "refused"],
)
def test_when_the_canary_does_not_answer_the_stable_does(
    failure: str | None, status: int, reason: str
) -> None:
    canary = FakeCanary(failure, status)
    app = _edge(canary, 100)
    labels = {"model_version": "v1", "track": "stable", "reason": reason}
    before = _counter("fraud_model_sticky_fallbacks_total", **labels)
    response = _post(app, "/predict", {**BODIES[0], "account_id": "acct-1"})
    assert response.status_code == 200
    assert response.json()["version"] == "v1"
    assert len(canary.calls) == 1
    assert _counter("fraud_model_sticky_fallbacks_total", **labels) == before + 1


def test_a_dead_canary_is_skipped_after_consecutive_failures_then_probed() -> None:
    now = [0.0]
    breaker = Breaker(failures=3, open_s=5.0, clock=lambda: now[0])
    for _ in range(3):
        assert breaker.allows()
        breaker.record(False)
    assert not breaker.allows()  # open: no forwarding
    now[0] = 5.0
    assert breaker.allows()  # half-open: one probe
    breaker.record(False)
    assert not breaker.allows()  # failed probe: open again at once
    now[0] = 10.0
    breaker.record(True)
    assert breaker.allows()


def test_an_open_circuit_answers_from_stable_without_calling_the_canary() -> None:
    canary = FakeCanary("unreachable")
    app = _edge(canary, 100)
    labels = {"model_version": "v1", "track": "stable", "reason": "circuit_open"}
    before = _counter("fraud_model_sticky_fallbacks_total", **labels)
    for i in range(8):
        assert _post(app, "/predict", {**BODIES[i], "account_id": "acct-1"}).json()["version"] == "v1"
    assert len(canary.calls) == 5  # BREAKER_FAILURES, then the circuit is open
    assert _counter("fraud_model_sticky_fallbacks_total", **labels) == before + 3


def test_every_fallback_reason_is_documented() -> None:
    assert set(FALLBACK_REASONS) == {"unreachable", "timeout", "shed", "error", "refused", "circuit_open"}
    assert all(FALLBACK_REASONS.values())


@pytest.mark.parametrize(
    ("sticky", "problem"),
    [
        ({"url": "http://c:80", "weight": 30, "source": "field:email"}, "one of account_id, card_id"),
        ({"url": "c:80", "weight": 30, "source": "field:account_id"}, "http"),
        ({"url": "http://c:80", "weight": 130, "source": "field:account_id"}, "sticky.weight"),
    ],
    ids=["unknown-field", "no-scheme", "weight-over-100"],
)
def test_a_sticky_target_the_edge_cannot_use_is_refused_when_the_config_is_read(
    sticky: dict[str, Any], problem: str
) -> None:
    """routing.RoutingFile then routes nothing (the safe state) and counts the error."""
    with pytest.raises(ValueError, match=problem):
        parse_routing(json.dumps({"revision": "r", "sticky": sticky}))


def test_only_requests_answered_alone_are_timed_as_the_stables_latency() -> None:
    """The analysis compares the stable's own latency: requests with a forwarded part are left out."""
    canary = FakeCanary()
    app = _edge(canary, 50)
    labels = {"model_version": "v1", "track": "stable"}
    on = next(_account(i) for i in range(100) if on_canary(_account(i), SALT, 50))
    off = next(_account(i) for i in range(100) if not on_canary(_account(i), SALT, 50))
    before = _counter("fraud_model_sticky_local_duration_seconds_count", **labels)
    _post(app, "/predict", {**BODIES[0], "account_id": off})
    assert _counter("fraud_model_sticky_local_duration_seconds_count", **labels) == before + 1
    _post(app, "/predict", {**BODIES[0], "account_id": on})
    assert _counter("fraud_model_sticky_local_duration_seconds_count", **labels) == before + 1


def test_with_adaptive_batching_the_stables_part_goes_through_bentomls_batch_api() -> None:
    """No direct scorer (adaptive batching on): the stable's transactions are scored by the app's
    /predict_batch, the canary's still go to the canary."""
    calls: list[int] = []

    async def batch_api(scope: Any, receive: Any, send: Any) -> None:
        assert scope["path"] == "/predict_batch"
        items = json.loads((await receive())["body"])["transactions"]
        calls.append(len(items))
        body = json.dumps(
            [_prediction(Transaction.model_validate(i), "v1").model_dump() for i in items]
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    canary = FakeCanary()
    raw = {"url": "http://canary:80", "weight": 50, "source": "field:account_id", "salt": SALT}
    config = parse_routing(json.dumps({"revision": "cfg-2", "sticky": raw}))
    metrics = service_metrics("v1", "stable")
    app = EdgeMiddleware(
        batch_api,
        settings=Settings(track="stable"),
        metrics=lambda: metrics,
        scorer=lambda: None,
        routing=lambda: config,
        canary_client=canary,
    )
    items = [{**b, "account_id": _account(i)} for i, b in enumerate(BODIES[:40])]
    answers = _post(app, "/predict_batch", {"transactions": items}).json()
    expected = ["v2" if on_canary(i["account_id"], SALT, 50) else "v1" for i in items]
    assert [a["version"] for a in answers] == expected
    assert calls == [expected.count("v1")]
