"""The service's own Prometheus metrics, beside BentoML's.

``prometheus_client`` is imported only when the metrics are first created, in
the worker process, after BentoML has set ``PROMETHEUS_MULTIPROC_DIR``: so
every worker writes to the shared multiprocess files and ``/metrics`` shows the
sum over workers.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .evaluation import SCORE_BUCKETS

__all__ = ["REJECT_REASONS", "ServiceMetrics", "service_metrics"]

REJECT_REASONS = (
    "missing_field",
    "wrong_type",
    "not_finite",
    "out_of_range",
    "unknown_field",
    "batch_too_large",
    "malformed_json",
    "unsupported_media_type",
)


@dataclass(frozen=True)
class _Families:
    score: Any
    decisions: Any
    rejected: Any
    predictions: Any
    shed: Any


@functools.cache
def _families() -> _Families:
    import prometheus_client as prom

    labels = ["model_version", "track"]
    return _Families(
        score=prom.Histogram(
            "fraud_model_score",
            "Fraud scores returned, by model version and track (buckets every 0.05 for PSI).",
            labels,
            buckets=SCORE_BUCKETS,
        ),
        decisions=prom.Counter(
            "fraud_model_decisions",
            "Decisions returned (flag or allow), by model version and track.",
            [*labels, "decision"],
        ),
        rejected=prom.Counter(
            "fraud_model_rejected_inputs",
            "Requests rejected at the edge for invalid input, by reason.",
            [*labels, "reason"],
        ),
        predictions=prom.Counter("fraud_model_predictions", "Transactions scored.", labels),
        shed=prom.Counter(
            "fraud_model_shed_requests",
            "Requests shed with 503 + Retry-After because the service was overloaded (not model errors).",
            labels,
        ),
    )


class ServiceMetrics:
    """The metric children of one (model_version, track), created up front so
    every series exists (at zero) from the first scrape."""

    def __init__(self, version: str, track: str) -> None:
        f = _families()
        self.score = f.score.labels(version, track)
        self.flag = f.decisions.labels(version, track, "flag")
        self.allow = f.decisions.labels(version, track, "allow")
        self.predictions = f.predictions.labels(version, track)
        self.shed = f.shed.labels(version, track)
        self._rejected = {r: f.rejected.labels(version, track, r) for r in REJECT_REASONS}

    def observe(self, scores: Iterable[float], threshold: float) -> None:
        flagged = n = 0
        for s in scores:
            self.score.observe(s)
            n += 1
            flagged += s >= threshold
        if flagged:
            self.flag.inc(flagged)
        if n - flagged:
            self.allow.inc(n - flagged)
        self.predictions.inc(n)

    def rejected(self, reason: str) -> None:
        self._rejected[reason].inc()


@functools.cache
def service_metrics(version: str, track: str) -> ServiceMetrics:
    return ServiceMetrics(version, track)
