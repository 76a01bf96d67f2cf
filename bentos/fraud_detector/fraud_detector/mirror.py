"""Mirroring scored requests to a shadow track, with the stable's own answers, so the shadow side
records *paired* outcomes (both models on the same transaction).

Stable side (:class:`Mirror`): after the client has its answer, a sampled request's transactions
and the stable's predictions go into a bounded in-memory queue (one ``deque.append``: nothing on the
live path waits on the shadow). A background task per worker sends them in batches to the shadow's
``POST /mirror``. When the queue is full the new items are **dropped, never waited for**, and counted
(``fraud_model_mirror_transactions_total{outcome="dropped"}``); so are sends that fail.

Shadow side (:func:`record_pairs`): scores the mirrored transactions with its own model (the
answers go nowhere) and counts each pair by (stable decision, shadow decision), with the amounts and
the score differences, for the operator's paired gates.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .routing import ShadowTarget
from .schema import Prediction, Transaction

__all__ = ["MIRROR", "Mirror", "MirrorBody", "Pair", "StableAnswer", "parse_mirror_body"]

logger = logging.getLogger(__name__)
MIRROR = "/mirror"
MIRROR_HEADER = b"x-fraudmodel-mirror"


class StableAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    score: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)
    decision: str = Field(pattern="^(flag|allow)$")
    version: str = Field(min_length=1, max_length=128)


class Pair(BaseModel):
    """One mirrored transaction and what the stable answered for it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: str = Field(min_length=1, max_length=128)
    transaction: Transaction
    stable: StableAnswer


class MirrorBody(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    pairs: list[Pair] = Field(max_length=10_000)


def parse_mirror_body(body: bytes) -> MirrorBody:
    """The pairs in a mirror request; ValueError naming the first problem."""
    try:
        return MirrorBody.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "$"
        raise ValueError(f"{where}: {first['msg']}") from None


@dataclass(frozen=True)
class _Item:
    request_id: str
    transaction: Transaction
    prediction: Prediction


Post = Callable[[str, bytes], Any]  # (url, body) -> awaitable status code


class Mirror:
    """The stable side: a bounded queue per worker, drained by one background sender."""

    def __init__(
        self,
        *,
        capacity: int,
        batch: int,
        timeout_s: float,
        counters: Callable[[], Any],
        rng: Callable[[], float] = random.random,
        post: Post | None = None,
    ) -> None:
        self.capacity = capacity
        self.batch = batch
        self.timeout_s = timeout_s
        self.counters = counters  # -> metrics with .mirrored(outcome, n) and .mirror_queue(depth)
        self.rng = rng
        self.queue: deque[_Item] = deque()
        self.target: ShadowTarget | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._post = post
        self._client: Any = None

    def offer(
        self,
        target: ShadowTarget,
        request_id: str,
        transactions: Sequence[Transaction],
        predictions: Sequence[Prediction],
    ) -> None:
        """Queue a sampled request's pairs (call after the client has its answer). Never waits."""
        if target.sample <= 0.0 or (target.sample < 1.0 and self.rng() >= target.sample):
            return
        self.target = target
        if len(self.queue) + len(transactions) > self.capacity:  # the shadow lags: drop, never wait
            self.counters().mirrored("dropped", len(transactions))
            return
        for t, p in zip(transactions, predictions, strict=True):
            self.queue.append(_Item(request_id or t.transaction_id, t, p))
        self._ensure_sender()
        self._wake.set()

    def _ensure_sender(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.queue:
                items = [self.queue.popleft() for _ in range(min(self.batch, len(self.queue)))]
                target = self.target
                if target is None:
                    self.counters().mirrored("dropped", len(items))
                    continue
                await self._send(target, items)
            self.counters().mirror_queue(len(self.queue))

    def body(self, items: Sequence[_Item]) -> bytes:
        pairs = [
            {
                "request_id": i.request_id,
                "transaction": i.transaction.model_dump(mode="json"),
                "stable": {
                    "score": i.prediction.score,
                    "decision": i.prediction.decision,
                    "version": i.prediction.version,
                },
            }
            for i in items
        ]
        return json.dumps({"pairs": pairs}, separators=(",", ":")).encode()

    async def _send(self, target: ShadowTarget, items: Sequence[_Item]) -> None:
        url = target.url.rstrip("/") + MIRROR
        try:
            status = await (self._post or self._http_post)(url, self.body(items))
        except Exception as exc:  # the shadow is down, slow or gone: counted, never raised
            logger.debug("mirroring %d pairs to %s failed: %s", len(items), url, exc)
            status = None
        self.counters().mirrored(
            "sent" if status is not None and 200 <= status < 300 else "failed", len(items)
        )

    async def _http_post(self, url: str, body: bytes) -> int:
        import httpx

        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout_s)
        response = await self._client.post(
            url, content=body, headers={"content-type": "application/json", MIRROR_HEADER.decode(): "1"}
        )
        return int(response.status_code)


def pair_cells(
    pairs: Sequence[Pair], predictions: Sequence[Prediction]
) -> list[tuple[str, str, float, float]]:
    """(stable decision, shadow decision, amount, |score delta|) of each pair."""
    return [
        (pair.stable.decision, p.decision, pair.transaction.amount, abs(p.score - pair.stable.score))
        for pair, p in zip(pairs, predictions, strict=True)
    ]
