"""Runtime settings, read once from the environment the operator sets."""

from __future__ import annotations

import gc
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["GC_THRESHOLDS", "TRACKS", "Settings", "tune_gc"]

TRACKS = ("stable", "canary", "shadow")

# The collector's thresholds a serving worker runs with (see tune_gc).
GC_THRESHOLDS = (10_000, 10, 10)


def tune_gc() -> None:
    """Garbage collection was the p99: with torch and BentoML loaded, full collections
    paused requests for 20-100 ms (measured with gc.callbacks). What is loaded when this
    runs lives as long as the process, so it is frozen out of the collector; and a larger
    young generation lets each request's short-lived cycles die young instead of being
    promoted into the expensive full collections. p99 at 8 connections: ~90 ms -> ~15 ms.
    The serving benchmark runs its FastAPI control with and without this."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _int(env: Mapping[str, str], key: str, default: int, minimum: int) -> int:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{key}={raw!r} is not an integer") from None
    if value < minimum:
        raise ValueError(f"{key}={value} must be >= {minimum}")
    return value


def _share(env: Mapping[str, str], key: str) -> float:
    raw = env.get(key) or "0"
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{key}={raw!r} is not a number") from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{key}={raw!r} must be within [0, 1]")
    return value


def _flag(env: Mapping[str, str], key: str) -> bool:
    raw = (env.get(key) or "0").lower()
    if raw not in ("0", "1", "true", "false"):
        raise ValueError(f"{key}={raw!r} must be 0/1/true/false")
    return raw in ("1", "true")


@dataclass(frozen=True)
class Settings:
    """What the service is, and how it behaves at the edge.

    Invalid values refuse to start the service with a message naming the
    variable: a typo in a threshold must not silently become 0.5.
    """

    model_name: str = "fraud_detector"
    # Which model to load (fraud_detector.loading): an exported model at a URI, else a
    # tag in the model store, else the model the bento was built with.
    model_uri: str | None = None
    model_tag: str | None = None
    # What the FraudModel declares; the loaded model must match (else not ready).
    version: str | None = None  # None: whatever version was loaded
    feature_schema: str | None = None
    track: str = "stable"
    # None: the threshold chosen at training and stored in the model's metadata.
    threshold: float | None = None
    workers: int = 1
    # Most transactions in one /predict_batch request, and in one model call of
    # the adaptive batcher. One number on purpose: BentoML splits a request
    # larger than its max_batch_size into chunks that each must start within
    # the latency budget, so a big request could be shed half-way.
    max_batch_size: int = 1_000
    # BentoML's adaptive batching. Off by default: for this model (tens of
    # microseconds a call) merging requests saves less than the dispatcher
    # costs, and its latency-budget shedding answered 503s at loads the
    # service could serve (figures in docs/benchmarks.md). On for heavier models.
    adaptive_batching: bool = False
    max_latency_ms: int = 20  # adaptive batching: latency budget before the dispatcher sheds
    max_body_bytes: int = 1 << 20
    # Per worker; beyond it requests are shed at once with 503 + Retry-After.
    # A bound on memory (bodies are read whole) and bursts, about 15 ms of work
    # at the ~7 000 req/s one worker serves; latency is guarded by max_queue_ms.
    max_inflight: int = 100
    # Per request: longest wait in the worker's event loop before its turn;
    # a request that waited longer is shed rather than served late.
    max_queue_ms: int = 20
    retry_after_seconds: int = 1
    # BentoML's OpenTelemetry tracing of /predict and /predict_batch. BentoML
    # samples nothing by default (sample rate 0) yet still builds a span for
    # every request: a fifth of a request's CPU time in a profile. Off, those
    # routes are left out of tracing; on, set BentoML's tracing exporter and
    # sample rate in its own configuration.
    tracing: bool = False
    # Fault injection, for rollout tests and game days only (off unless set): a share of
    # scoring calls fails with a 500, and every scoring call is delayed. The operator
    # reserves FRAUDMODEL_FAULT_* in a FraudModel's env, so a FraudModel cannot turn them on.
    fault_error_rate: float = 0.0
    fault_delay_ms: int = 0
    # The stable edge's routing config (fraud_detector.routing), mounted from the FraudModel's
    # `<name>-routing` ConfigMap into the stable pods only; None: the edge routes nothing.
    routing_file: str | None = None
    # stickyBy: how long the stable edge waits for the canary's answer before it answers from
    # the stable itself (fraud_detector.sticky_edge); the live path's worst extra latency.
    sticky_timeout_ms: int = 250
    # Mirroring to a shadow track (stable pods): transactions queued per worker before new ones are
    # dropped (never waited for), transactions per request to the shadow, and its timeout.
    mirror_queue: int = 2_000
    mirror_batch: int = 64
    mirror_timeout_ms: int = 2_000

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        e = os.environ if env is None else env
        threshold_raw = e.get("FRAUDMODEL_THRESHOLD") or None
        threshold = None
        if threshold_raw is not None:
            try:
                threshold = float(threshold_raw)
            except ValueError:
                raise ValueError(f"FRAUDMODEL_THRESHOLD={threshold_raw!r} is not a number") from None
            if not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
                raise ValueError(f"FRAUDMODEL_THRESHOLD={threshold_raw!r} must be within [0, 1]")
        track = e.get("FRAUDMODEL_TRACK", "stable") or "stable"
        if track not in TRACKS:
            raise ValueError(f"FRAUDMODEL_TRACK={track!r} must be one of {', '.join(TRACKS)}")
        return cls(
            adaptive_batching=_flag(e, "FRAUDMODEL_ADAPTIVE_BATCHING"),
            tracing=_flag(e, "FRAUDMODEL_TRACING"),
            model_name=e.get("FRAUDMODEL_NAME") or "fraud_detector",
            model_uri=e.get("FRAUDMODEL_MODEL_URI") or None,
            model_tag=e.get("FRAUDMODEL_MODEL_TAG") or None,
            version=e.get("FRAUDMODEL_VERSION") or None,
            feature_schema=e.get("FRAUDMODEL_FEATURE_SCHEMA") or None,
            track=track,
            threshold=threshold,
            workers=_int(e, "FRAUDMODEL_WORKERS", cls.workers, 1),
            max_batch_size=_int(e, "FRAUDMODEL_MAX_BATCH_SIZE", cls.max_batch_size, 1),
            max_latency_ms=_int(e, "FRAUDMODEL_MAX_LATENCY_MS", cls.max_latency_ms, 1),
            max_body_bytes=_int(e, "FRAUDMODEL_MAX_BODY_BYTES", cls.max_body_bytes, 1024),
            max_inflight=_int(e, "FRAUDMODEL_MAX_INFLIGHT", cls.max_inflight, 1),
            max_queue_ms=_int(e, "FRAUDMODEL_MAX_QUEUE_MS", cls.max_queue_ms, 1),
            retry_after_seconds=_int(e, "FRAUDMODEL_RETRY_AFTER_SECONDS", cls.retry_after_seconds, 1),
            fault_error_rate=_share(e, "FRAUDMODEL_FAULT_ERROR_RATE"),
            fault_delay_ms=_int(e, "FRAUDMODEL_FAULT_DELAY_MS", 0, 0),
            routing_file=e.get("FRAUDMODEL_ROUTING_FILE") or None,
            sticky_timeout_ms=_int(e, "FRAUDMODEL_STICKY_TIMEOUT_MS", cls.sticky_timeout_ms, 1),
            mirror_queue=_int(e, "FRAUDMODEL_MIRROR_QUEUE", cls.mirror_queue, 1),
            mirror_batch=_int(e, "FRAUDMODEL_MIRROR_BATCH", cls.mirror_batch, 1),
            mirror_timeout_ms=_int(e, "FRAUDMODEL_MIRROR_TIMEOUT_MS", cls.mirror_timeout_ms, 1),
        )
