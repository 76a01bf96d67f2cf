"""The serving benchmark's pure parts: what each server expects and answers on the wire,
whether the scores agree, a server's CPU time from /proc, and the table.

Standard library only, so the operator's unit tests can check them cheaply
(tests/unit/test_serving_benchmark.py) without any of the servers installed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FEATURE_DATATYPES",
    "PROTOCOLS",
    "CpuSample",
    "Mismatch",
    "ProcStat",
    "Protocol",
    "Row",
    "compare_scores",
    "cpu_per_request_us",
    "parse_proc_stat",
    "render",
    "server_cpu",
    "server_processes",
]

MODEL_NAME = "fraud_detector"

# The Open Inference Protocol datatype of each feature of fraud_detector.schema.FEATURES
# (float -> FP64, int -> INT64, bool -> BOOL). A test keeps it equal to the schema.
FEATURE_DATATYPES: dict[str, str] = {
    "amount": "FP64",
    "txn_count_1h": "INT64",
    "txn_count_24h": "INT64",
    "amount_sum_24h": "FP64",
    "account_age_days": "INT64",
    "device_accounts_7d": "INT64",
    "ip_accounts_24h": "INT64",
    "geo_mismatch": "BOOL",
    "distance_from_home_km": "FP64",
    "promo_redemptions_30d": "INT64",
    "chargebacks_180d": "INT64",
    "failed_logins_24h": "INT64",
    "is_new_device": "BOOL",
    "card_present": "BOOL",
    "hour_of_day": "INT64",
}
ID_INPUT = "transaction_id"


@dataclass(frozen=True)
class Protocol:
    """How one kind of server is asked to score one transaction, and where its score is."""

    name: str
    path: str
    encode: Callable[[Mapping[str, Any]], dict[str, Any]]
    decode: Callable[[Any], float]

    def body(self, transaction: Mapping[str, Any]) -> str:
        return json.dumps(self.encode(transaction))

    def score(self, answer: Any) -> float:
        """The score in a server's JSON answer; ValueError naming what is missing."""
        try:
            value = self.decode(answer)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ValueError(f"{self.name}: no score in the answer {json.dumps(answer)[:300]}: {exc!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{self.name}: score {value!r} is not a number")
        return float(value)


def _open_inference_request(txn: Mapping[str, Any]) -> dict[str, Any]:
    """One transaction as an Open Inference Protocol (V2) request: one named input per
    feature (its own datatype) and the transaction id as BYTES."""
    inputs = [{"name": ID_INPUT, "shape": [1], "datatype": "BYTES", "data": [txn[ID_INPUT]]}]
    inputs += [{"name": n, "shape": [1], "datatype": dt, "data": [txn[n]]} for n, dt in FEATURE_DATATYPES.items()]
    return {"inputs": inputs}


def _open_inference_score(answer: Any) -> Any:
    (out,) = [o for o in answer["outputs"] if o["name"] == "score"]
    return out["data"][0]


PROTOCOLS: dict[str, Protocol] = {
    # The bento, the FastAPI baseline and LitServe: the transaction is the body.
    "predict": Protocol("predict", "/predict", dict, lambda a: a["score"]),
    # KServe's V1 protocol: {"instances": [...]} -> {"predictions": [...]}.
    "kserve-v1": Protocol(
        "kserve-v1",
        f"/v1/models/{MODEL_NAME}:predict",
        lambda t: {"instances": [dict(t)]},
        lambda a: a["predictions"][0]["score"],
    ),
    # MLServer's (and KServe's V2) Open Inference Protocol.
    "open-inference": Protocol(
        "open-inference", f"/v2/models/{MODEL_NAME}/infer", _open_inference_request, _open_inference_score
    ),
}


@dataclass(frozen=True)
class Mismatch:
    target: str
    index: int
    want: float
    got: float


def compare_scores(target: str, want: Sequence[float], got: Sequence[float], tolerance: float = 1e-6) -> list[Mismatch]:
    """Every transaction whose served score differs from the model's own by more than
    ``tolerance`` (a missing or non-finite score is a mismatch)."""
    if len(want) != len(got):
        raise ValueError(f"{target}: {len(got)} scores for {len(want)} transactions")
    return [
        Mismatch(target, i, w, g)
        for i, (w, g) in enumerate(zip(want, got, strict=True))
        if not math.isfinite(g) or abs(w - g) > tolerance
    ]


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds (user + system) of a server's live processes, and how many there were."""

    seconds: float
    processes: int


@dataclass(frozen=True)
class ProcStat:
    """The fields of one /proc/<pid>/stat line that the benchmark reads."""

    pid: int
    ppid: int
    session: int
    ticks: int  # user + system CPU time, in clock ticks
    started: int  # clock ticks after boot: with pid, tells a process from a later one that reuses its pid


def parse_proc_stat(text: str) -> ProcStat:
    """One /proc/<pid>/stat line.

    The command name (field 2) is in parentheses and may itself hold spaces and
    parentheses, so fields are counted from the last ')'.
    """
    rest = text[text.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state): ppid is field 4, session 6, utime 14, stime 15, starttime 22.
    return ProcStat(
        int(text.split(" ", 1)[0]), int(rest[1]), int(rest[3]), int(rest[11]) + int(rest[12]), int(rest[19])
    )


def server_processes(stats: Iterable[ProcStat], root: int) -> list[ProcStat]:
    """The processes of a server started as ``root`` in its own session: everything in that
    session, and every descendant of ``root`` (BentoML's process manager starts each worker
    in a session of its own; inference workers and API servers stay in the first)."""
    procs = list(stats)
    children: dict[int, list[int]] = {}
    for p in procs:
        children.setdefault(p.ppid, []).append(p.pid)
    tree = {root}
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in tree:
                tree.add(child)
                todo.append(child)
    return [p for p in procs if p.pid in tree or p.session == root]


def server_cpu(stats: Iterable[ProcStat], root: int, ticks_per_second: int) -> CpuSample:
    """CPU time and number of the live processes of the server started as ``root``."""
    procs = server_processes(stats, root)
    return CpuSample(sum(p.ticks for p in procs) / ticks_per_second, len(procs))


def cpu_per_request_us(before: CpuSample, after: CpuSample, requests: int) -> float:
    """Server CPU microseconds per answered request between two samples.

    A process that exited in between takes its time with it, so a sample that lost
    processes is refused rather than read as a cheap run.
    """
    if after.processes < before.processes:
        raise ValueError(f"server processes went from {before.processes} to {after.processes} during a measurement")
    if requests <= 0:
        return math.nan
    return (after.seconds - before.seconds) / requests * 1e6


@dataclass
class Row:
    target: str
    connections: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    ok: int
    shed: int
    other: int
    errors: int
    cpu_us: float = math.nan  # server CPU per answered request
    processes: int = 0


def _ratio(value: float, base: float) -> str:
    if not (math.isfinite(value) and math.isfinite(base)) or base <= 0:
        return ""
    return f"{value / base:.2f}x"


def render(rows: Sequence[Row], baseline: str) -> str:
    """A markdown table; each served row also as ratios to ``baseline`` at the same
    connection count (measured side by side in the same run)."""
    base = {r.connections: r for r in rows if r.target == baseline}
    lines = [
        f"| target | procs | conns | req/s | p50 ms | p90 ms | p99 ms | CPU µs/req | 503 shed | other non-2xx "
        f"| req/s vs {baseline} | p99 vs {baseline} | CPU/req vs {baseline} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        b = base.get(r.connections)
        served = b is not None and not r.target.startswith("inprocess")
        cpu = f"{r.cpu_us:.0f}" if math.isfinite(r.cpu_us) else ""
        lines.append(
            f"| {r.target} | {r.processes or ''} | {r.connections} | {r.rps:.0f} | {r.p50_ms:.2f} | {r.p90_ms:.2f} "
            f"| {r.p99_ms:.2f} | {cpu} | {r.shed} | {r.other + r.errors} "
            f"| {_ratio(r.rps, b.rps) if served and b else ''} | {_ratio(r.p99_ms, b.p99_ms) if served and b else ''} "
            f"| {_ratio(r.cpu_us, b.cpu_us) if served and b else ''} |"
        )
    return "\n".join(lines)
