"""The stable edge's sticky split: the canary's keys are forwarded to the canary Service.

With ``spec.rollout.stickyBy`` the shared Service selects the stable pods only, and the
stable edge (:mod:`fraud_detector.edge`) decides per transaction, by its key
(:mod:`fraud_detector.sticky`), which track answers. The canary's transactions are sent to
the canary Service's ``/predict_batch`` in one request and the stable scores the rest; the
client gets one answer in the order it asked, each prediction carrying the ``version`` that
made it.

**When the canary does not answer** (policy, :data:`FALLBACK_REASONS`): the stable scores
those transactions itself and answers; the client never sees a canary failure, and every
such transaction is counted in ``fraud_model_sticky_fallbacks_total{reason}``. The canary's
own 5xx and sheds are also in its own metrics (the error and shed checks judge them);
transport failures are not, so the operator's ``stickyFallback`` check reads this counter.
After :data:`BREAKER_FAILURES` consecutive failures the edge stops trying for
:data:`BREAKER_OPEN_SECONDS` (reason ``circuit_open``), so a dead canary costs the live path
one timeout per window, not one per request.

Metrics of the split (on the stable pods): ``fraud_model_sticky_transactions_total{route}``
(canary, stable, unkeyed) and ``fraud_model_sticky_forward_duration_seconds`` (the extra
hop, as the stable edge sees it). The canary's effective share is
``(canary - fallbacks) / (canary + stable + unkeyed)``.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import TypeAdapter, ValidationError

from .schema import Prediction, Transaction
from .sticky import StickyRoute

__all__ = [
    "BREAKER_FAILURES",
    "BREAKER_OPEN_SECONDS",
    "FALLBACK_REASONS",
    "Breaker",
    "CanaryClient",
    "CanaryFailure",
    "HttpCanaryClient",
    "Split",
    "StickyMetrics",
    "key_of",
    "split_transactions",
    "sticky_metrics",
]

# Why a canary-keyed transaction was answered by the stable instead. Every reason has the same
# outcome (the stable answers): a rollout must never cost a customer an answer.
FALLBACK_REASONS: dict[str, str] = {
    "unreachable": "no connection to the canary Service (refused, reset, no DNS name, no endpoints)",
    "timeout": "the canary did not answer within FRAUDMODEL_STICKY_TIMEOUT_MS",
    "shed": "the canary shed the request (503)",
    "error": "the canary answered 5xx, or a body that is not its predictions",
    "refused": "the canary refused what the stable accepted (4xx: another feature schema?)",
    "circuit_open": "the canary failed BREAKER_FAILURES times in a row; not tried for BREAKER_OPEN_SECONDS",
}
BREAKER_FAILURES = 5
# BentoML's request-duration buckets as the service configures them (1 ms, 25% apart, to ~10 s).
LOCAL_BUCKETS = tuple(0.001 * 1.25**i for i in range(42))
BREAKER_OPEN_SECONDS = 5.0
FORWARDED_HEADER = "x-fraudmodel-forwarded-by"
_MANY_IN = TypeAdapter(list[Transaction])
_MANY_OUT = TypeAdapter(list[Prediction])


class CanaryFailure(Exception):
    """The canary gave no usable answer; `reason` is a key of FALLBACK_REASONS."""

    def __init__(self, reason: str, detail: str = "") -> None:
        assert reason in FALLBACK_REASONS, reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class CanaryClient(Protocol):
    """Posts a batch to the canary's /predict_batch; returns (status, body) or raises CanaryFailure."""

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]: ...


@dataclass
class HttpCanaryClient:
    """The real client: one pooled HTTP/1.1 client per worker (keep-alive to the canary Service)."""

    timeout_s: float
    _client: Any = None

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        import httpx

        if self._client is None:
            limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(self.timeout_s), limits=limits)
        try:
            response = await self._client.post(url + "/predict_batch", content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise CanaryFailure("timeout", type(exc).__name__) from None
        except httpx.TransportError as exc:
            raise CanaryFailure("unreachable", f"{type(exc).__name__}: {exc}") from None
        return response.status_code, response.content


@dataclass
class Breaker:
    """Stops forwarding after `failures` consecutive failures, for `open_s`; then one request probes."""

    failures: int = BREAKER_FAILURES
    open_s: float = BREAKER_OPEN_SECONDS
    clock: Callable[[], float] = time.monotonic
    _consecutive: int = 0
    _open_until: float = field(default=float("-inf"))

    def allows(self) -> bool:
        return self.clock() >= self._open_until

    def record(self, ok: bool) -> None:
        if ok:
            self._consecutive = 0
            return
        self._consecutive += 1
        if self._consecutive >= self.failures:
            self._open_until = self.clock() + self.open_s
            self._consecutive = self.failures - 1  # half-open: the next failure opens it again


class StickyMetrics:
    """The split's counters on the stable pods (the edge exports them only where it splits)."""

    def __init__(self, version: str, track: str) -> None:
        fam = _families()
        labels = (version, track)
        self.routes = {r: fam[0].labels(*labels, r) for r in ("canary", "stable", "unkeyed")}
        self.fallbacks = {r: fam[1].labels(*labels, r) for r in FALLBACK_REASONS}
        self.forward = fam[2].labels(*labels)
        self.local = fam[3].labels(*labels)


@functools.cache
def _families() -> tuple[Any, Any, Any, Any]:
    import prometheus_client as prom

    labels = ["model_version", "track"]
    return (
        prom.Counter(
            "fraud_model_sticky_transactions",
            "Transactions the stable edge assigned under stickyBy, by route: canary (forwarded), stable, "
            "unkeyed (no key: stable).",
            [*labels, "route"],
        ),
        prom.Counter(
            "fraud_model_sticky_fallbacks",
            "Canary-keyed transactions the stable answered because the canary did not, by reason.",
            [*labels, "reason"],
        ),
        prom.Histogram(
            "fraud_model_sticky_forward_duration_seconds",
            "Round trip of a forward to the canary Service as the stable edge sees it (the extra hop "
            "plus the canary's own time).",
            labels,
            buckets=tuple(0.001 * 1.25**i for i in range(32)),
        ),
        prom.Histogram(
            "fraud_model_sticky_local_duration_seconds",
            "Duration of the requests the stable edge answered alone under stickyBy (nothing forwarded), from "
            "validation to answer: the stable's latency the analysis compares (BentoML's own request duration "
            "also counts the forwarded requests, with the hop and the canary's time).",
            labels,
            buckets=LOCAL_BUCKETS,
        ),
    )


@functools.cache
def sticky_metrics(version: str, track: str) -> StickyMetrics:
    return StickyMetrics(version, track)


def key_of(route: StickyRoute, transaction: Transaction, headers: dict[str, str]) -> str | None:
    """The key a transaction is assigned by (None: no key, stays on stable)."""
    if route.source == "header":
        return headers.get(route.name)
    value = getattr(transaction, route.name, None)
    return value if isinstance(value, str) else None


def split_transactions(
    route: StickyRoute, transactions: Sequence[Transaction], headers: dict[str, str]
) -> tuple[list[int], list[int], int]:
    """(indexes for the canary, indexes for the stable, how many of those had no key)."""
    canary: list[int] = []
    stable: list[int] = []
    unkeyed = 0
    for i, t in enumerate(transactions):
        key = key_of(route, t, headers)
        if route.canary(key):
            canary.append(i)
        else:
            stable.append(i)
            unkeyed += not key
    return canary, stable, unkeyed


LocalScorer = Callable[[Sequence[Transaction]], Awaitable[list[Prediction]]]


def _parse_answer(status: int, body: bytes, expected: int) -> list[Prediction]:
    if status == 503:
        raise CanaryFailure("shed")
    if 400 <= status < 500:
        raise CanaryFailure("refused", f"HTTP {status}")
    if status != 200:
        raise CanaryFailure("error", f"HTTP {status}")
    try:
        predictions = _MANY_OUT.validate_json(body)
    except ValidationError as exc:
        raise CanaryFailure("error", f"not predictions: {exc.error_count()} errors") from None
    if len(predictions) != expected:
        raise CanaryFailure("error", f"{len(predictions)} predictions for {expected} transactions")
    return predictions


@dataclass
class Split:
    """One worker's sticky split: the client, the breaker and the metrics it counts in."""

    client: CanaryClient
    metrics: StickyMetrics
    breaker: Breaker = field(default_factory=Breaker)
    clock: Callable[[], float] = time.perf_counter

    async def _canary(
        self, route: StickyRoute, part: list[Transaction], request_id: str | None
    ) -> list[Prediction]:
        if not self.breaker.allows():
            raise CanaryFailure("circuit_open")
        body = b'{"transactions":' + _MANY_IN.dump_json(part, exclude_none=True) + b"}"
        headers = {"content-type": "application/json", FORWARDED_HEADER: "stable"}
        if request_id:
            headers["x-request-id"] = request_id
        started = self.clock()
        try:
            status, answer = await self.client.post(route.url, body, headers)
            predictions = _parse_answer(status, answer, len(part))
        except CanaryFailure:
            self.breaker.record(False)
            raise
        self.breaker.record(True)
        self.metrics.forward.observe(self.clock() - started)
        return predictions

    async def score(
        self,
        route: StickyRoute,
        transactions: Sequence[Transaction],
        headers: dict[str, str],
        local: LocalScorer,
        started: float | None = None,
    ) -> list[Prediction]:
        """Every transaction's prediction, in order: the canary's keys from the canary (or, when it
        does not answer, from `local`), the rest from `local`. Errors of `local` propagate. A request
        answered alone is timed from `started` (this split's clock) into the local histogram."""
        canary_idx, stable_idx, unkeyed = split_transactions(route, transactions, headers)
        m = self.metrics
        if unkeyed:
            m.routes["unkeyed"].inc(unkeyed)
        if len(stable_idx) - unkeyed:
            m.routes["stable"].inc(len(stable_idx) - unkeyed)
        if not canary_idx:
            predictions = await local(transactions)
            if started is not None:
                m.local.observe(self.clock() - started)
            return predictions
        m.routes["canary"].inc(len(canary_idx))
        canary_part = [transactions[i] for i in canary_idx]
        stable_part = [transactions[i] for i in stable_idx]

        async def from_canary() -> list[Prediction]:
            try:
                return await self._canary(route, canary_part, headers.get("x-request-id"))
            except CanaryFailure as failure:
                m.fallbacks[failure.reason].inc(len(canary_part))
                return await local(canary_part)

        async def from_stable() -> list[Prediction]:
            return await local(stable_part) if stable_part else []

        canary_answers, stable_answers = await asyncio.gather(from_canary(), from_stable())
        out: list[Prediction | None] = [None] * len(transactions)
        for i, p in zip(canary_idx, canary_answers, strict=True):
            out[i] = p
        for i, p in zip(stable_idx, stable_answers, strict=True):
            out[i] = p
        return [p for p in out if p is not None]
