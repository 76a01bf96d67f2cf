"""Realistic traffic for a running service, at a fixed rate (open loop).

    python -m fraud_detector.traffic --url http://127.0.0.1:3000 --rps 50 --seconds 30

Bodies come from the same generator as the training data (a different seed),
so the score distribution seen by the service is the one the model was
evaluated on; ``--shift`` sends drifted traffic, ``--invalid-rate`` mixes in a
share of invalid requests. Prints one JSON summary line (status counts,
latency percentiles). Bounded in count and time: it stops by itself.

Importable: :func:`run` for tests, :func:`fraud_detector.data.payloads` for bodies.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from .data import payloads

__all__ = ["Summary", "run"]


@dataclass
class Summary:
    sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    decisions: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0  # connection errors, timeouts

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        xs = sorted(self.latencies_ms)
        return xs[min(len(xs) - 1, int(q * len(xs)))]

    def as_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "decisions": dict(self.decisions),
            "transport_errors": self.errors,
            "p50_ms": round(self.percentile(0.50), 2) if self.latencies_ms else None,
            "p99_ms": round(self.percentile(0.99), 2) if self.latencies_ms else None,
        }


def _corrupt(body: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    bad = dict(body)
    kind = rng.choice(["missing", "type", "range"])
    if kind == "missing":
        bad.pop("amount")
    elif kind == "type":
        bad["txn_count_1h"] = "many"
    else:
        bad["hour_of_day"] = 25
    return bad


async def run(
    url: str,
    *,
    rps: float,
    seconds: float,
    seed: int = 99,
    shift: float = 0.0,
    invalid_rate: float = 0.0,
    max_inflight: int = 64,
    request_timeout: float = 5.0,
) -> Summary:
    """Send ``rps`` single-transaction requests per second for ``seconds``."""
    total = max(1, int(rps * seconds))
    bodies = payloads(min(total, 20_000), seed, shift=shift)
    rng = random.Random(seed)
    summary = Summary()
    sem = asyncio.Semaphore(max_inflight)
    endpoint = url.rstrip("/") + "/predict"

    async def one(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
        async with sem:
            started = time.perf_counter()
            try:
                resp = await client.post(endpoint, json=body)
            except httpx.HTTPError:
                summary.errors += 1
                return
            summary.latencies_ms.append((time.perf_counter() - started) * 1000)
            summary.statuses[resp.status_code] += 1
            if resp.status_code == 200:
                summary.decisions[resp.json()["decision"]] += 1

    limits = httpx.Limits(max_connections=max_inflight, max_keepalive_connections=max_inflight)
    async with httpx.AsyncClient(timeout=request_timeout, limits=limits) as client:
        tasks = []
        start = time.perf_counter()
        for i in range(total):
            due = start + i / rps
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            body = bodies[i % len(bodies)]
            if invalid_rate and rng.random() < invalid_rate:
                body = _corrupt(body, rng)
            summary.sent += 1
            tasks.append(asyncio.create_task(one(client, body)))
        await asyncio.gather(*tasks)
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fraud_detector.traffic", description=__doc__.split("\n")[0])
    p.add_argument("--url", required=True, help="base URL of the service, e.g. http://127.0.0.1:3000")
    p.add_argument("--rps", type=float, default=20.0)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=99)
    p.add_argument("--shift", type=float, default=0.0, help="drift of the traffic, 0..1")
    p.add_argument("--invalid-rate", type=float, default=0.0, help="share of invalid requests, 0..1")
    args = p.parse_args(argv)
    if args.rps <= 0 or args.seconds <= 0:
        p.error("--rps and --seconds must be positive")
    summary = asyncio.run(
        run(
            args.url,
            rps=args.rps,
            seconds=args.seconds,
            seed=args.seed,
            shift=args.shift,
            invalid_rate=args.invalid_rate,
        )
    )
    print(json.dumps(summary.as_dict()))
    return 0 if summary.errors == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
