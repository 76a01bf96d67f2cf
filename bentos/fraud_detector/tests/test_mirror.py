"""Mirroring, in-process: the stable side's bounded queue (sampled, dropped and counted when full,
never waited on), batching and failure counting; the shadow side's pair parsing."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Sequence

import pytest

from fraud_detector.data import payloads
from fraud_detector.mirror import Mirror, pair_cells, parse_mirror_body
from fraud_detector.routing import ShadowTarget
from fraud_detector.schema import Prediction, Transaction

TXNS = [Transaction.model_validate(p) for p in payloads(10, seed=3)]
TARGET = ShadowTarget(url="http://bot-shadow.risk.svc:80", sample=1.0, version="v2")


def predictions(txns: Sequence[Transaction], score: float = 0.9) -> list[Prediction]:
    return [
        Prediction(
            transaction_id=t.transaction_id,
            score=score,
            decision="flag" if score >= 0.5 else "allow",
            threshold=0.5,
            model="m",
            version="v1",
        )
        for t in txns
    ]


class Counts:
    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()
        self.depth = -1

    def mirrored(self, outcome: str, n: int) -> None:
        self.outcomes[outcome] += n

    def mirror_queue(self, depth: int) -> None:
        self.depth = depth


def make(capacity: int = 100, batch: int = 4, rng: float = 0.0, post=None) -> tuple[Mirror, Counts]:  # type: ignore[no-untyped-def]
    counts = Counts()
    return Mirror(
        capacity=capacity, batch=batch, timeout_s=1.0, counters=lambda: counts, rng=lambda: rng, post=post
    ), counts


def test_pairs_are_sent_in_batches_with_the_stables_answers() -> None:
    bodies: list[dict[str, object]] = []

    async def post(url: str, body: bytes) -> int:
        assert url == "http://bot-shadow.risk.svc:80/mirror"
        bodies.append(json.loads(body))
        return 202

    async def run() -> Counts:
        mirror, counts = make(post=post)
        mirror.offer(TARGET, "req-1", TXNS, predictions(TXNS))
        while mirror.queue or counts.depth != 0:
            await asyncio.sleep(0)
        return counts

    counts = asyncio.run(run())
    assert counts.outcomes == {"sent": 10}
    assert [len(b["pairs"]) for b in bodies] == [4, 4, 2]  # type: ignore[arg-type]
    pair = bodies[0]["pairs"][0]  # type: ignore[index]
    assert pair["request_id"] == "req-1"
    assert pair["stable"] == {"score": 0.9, "decision": "flag", "version": "v1"}
    parsed = parse_mirror_body(json.dumps(bodies[0]).encode()).pairs
    assert parsed[0].transaction == TXNS[0], "the shadow scores exactly what the stable scored"


def test_a_full_queue_drops_and_counts_without_waiting() -> None:
    async def never(url: str, body: bytes) -> int:
        await asyncio.Event().wait()  # a shadow that never answers
        return 202

    async def run() -> tuple[int, Counts]:
        mirror, counts = make(capacity=5, post=never)
        for i in range(3):
            mirror.offer(TARGET, f"r{i}", TXNS[:4], predictions(TXNS[:4]))  # returns at once: no await
        return len(mirror.queue), counts

    queued, counts = asyncio.run(run())
    assert counts.outcomes == {"dropped": 8}, "a request that does not fit is dropped whole, and counted"
    assert queued == 4


def test_only_the_sampled_share_is_queued_and_failures_are_counted() -> None:
    async def down(url: str, body: bytes) -> int:
        raise ConnectionError("refused")

    async def run(rng: float) -> Counts:
        mirror, counts = make(rng=rng, post=down)
        mirror.offer(
            ShadowTarget(url="http://x", sample=0.25, version="v2"), "", TXNS[:2], predictions(TXNS[:2])
        )
        for _ in range(10):
            await asyncio.sleep(0)
        return counts

    assert asyncio.run(run(0.5)).outcomes == {}, "not in the sampled quarter"
    assert asyncio.run(run(0.1)).outcomes == {"failed": 2}


def test_pair_cells_and_a_broken_body_is_refused_naming_the_field() -> None:
    pairs = parse_mirror_body(
        json.dumps(
            {
                "pairs": [
                    {
                        "request_id": "r",
                        "transaction": TXNS[0].model_dump(mode="json"),
                        "stable": {"score": 0.2, "decision": "allow", "version": "v1"},
                    }
                ]
            }
        ).encode()
    ).pairs
    (cell,) = pair_cells(pairs, predictions(TXNS[:1], 0.7))
    assert cell[:3] == ("allow", "flag", TXNS[0].amount)
    assert cell[3] == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"stable\.decision"):
        parse_mirror_body(
            json.dumps(
                {
                    "pairs": [
                        {
                            "request_id": "r",
                            "transaction": TXNS[0].model_dump(mode="json"),
                            "stable": {"score": 0.2, "decision": "maybe", "version": "v1"},
                        }
                    ]
                }
            ).encode()
        )
