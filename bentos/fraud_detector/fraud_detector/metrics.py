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

__all__ = [
    "FEATURE_BUCKETS",
    "MONITORED_FEATURES",
    "REJECT_REASONS",
    "ServiceMetrics",
    "cumulative_shares",
    "score_buckets",
    "service_metrics",
]

# Score histogram edges: log-spaced from 1e-5 to 1, five per decade. A fraud model's
# scores pile up far below its threshold (99% of them under 0.05 at a 1% flag rate),
# where 0.05-wide linear buckets put ~98% in the first bucket: drift in the bulk and
# in the tail was invisible, and the dashboard's score quantiles meaningless.
SCORE_DECADES = 5
SCORE_STEPS_PER_DECADE = 5
# Resolution inside the flagged region, where log edges thin out (0.63 -> 1).
HIGH_SCORE_EDGES = (0.9, 0.99)

# The features watched for drift after promotion: a small fixed set that moves when the
# population does (bigger baskets, younger accounts, more travel, shared IPs). Each is
# published live (fraud_model_feature) and as the training reference
# (fraud_model_reference_feature_bucket), on the same buckets.
MONITORED_FEATURES = ("amount", "account_age_days", "distance_from_home_km", "ip_accounts_24h")
# 1-2-5 steps from 1 to 50,000 (the features are non-negative and heavy-tailed), and 0.
FEATURE_BUCKETS: tuple[float, ...] = (0.0, *(m * 10**e for e in range(5) for m in (1, 2, 5)))

REJECT_REASONS = (
    "missing_field",
    "wrong_type",
    "not_finite",
    "out_of_range",
    "unknown_field",
    "batch_too_large",
    "malformed_json",
    "nesting_too_deep",
    "unsupported_media_type",
)


@dataclass(frozen=True)
class _Families:
    score: Any
    decisions: Any
    rejected: Any
    predictions: Any
    shed: Any
    feature: Any
    reference_score: Any
    reference_feature: Any
    routing_info: Any
    routing_errors: Any
    reference_samples: Any
    reference_flag_rate: Any
    mirrored: Any
    mirror_queue: Any
    paired: Any
    paired_amount: Any
    paired_delta: Any


def score_buckets(threshold: float) -> tuple[float, ...]:
    """The score histogram's upper bounds: log-spaced 1e-5..1 (five per decade), 0.9 and 0.99,
    and the decision threshold itself, so that `score <= threshold` vs `> threshold` is read
    off one bucket edge (flags are `score >= threshold`: they differ only at ties).

    Edges are rounded to three significant digits so `le` labels stay short and identical
    across versions of this code; the operator compares only edges both tracks export.
    """
    steps = SCORE_DECADES * SCORE_STEPS_PER_DECADE
    edges = {float(f"{10 ** (-SCORE_DECADES + i / SCORE_STEPS_PER_DECADE):.3g}") for i in range(steps + 1)}
    edges.update(HIGH_SCORE_EDGES)
    if 0.0 < threshold < 1.0:
        edges.add(float(f"{threshold:.6g}"))
    return tuple(sorted(edges))


@functools.cache
def _families(buckets: tuple[float, ...]) -> _Families:
    """The metric families of this process. One bucket layout per process (prometheus_client
    refuses to register a family twice), which holds: a process serves one threshold."""
    import prometheus_client as prom

    labels = ["model_version", "track"]
    return _Families(
        score=prom.Histogram(
            "fraud_model_score",
            "Fraud scores returned, by model version and track (log-spaced buckets 1e-5..1, "
            "the decision threshold is an edge).",
            labels,
            buckets=buckets,
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
        feature=prom.Histogram(
            "fraud_model_feature",
            "Values of the monitored input features of scored transactions, by feature.",
            [*labels, "feature"],
            buckets=FEATURE_BUCKETS,
        ),
        # Gauges, the same in every worker: "max" exports one series without a pid label.
        reference_score=prom.Gauge(
            "fraud_model_reference_score_bucket",
            "Share of the model's reference scores (its test split at training) at or below le, "
            "on the buckets of fraud_model_score: the distribution live scores are compared with.",
            [*labels, "le"],
            multiprocess_mode="max",
        ),
        reference_feature=prom.Gauge(
            "fraud_model_reference_feature_bucket",
            "Share of the model's reference rows (its test split) with the feature at or below le, "
            "on the buckets of fraud_model_feature.",
            [*labels, "feature", "le"],
            multiprocess_mode="max",
        ),
        # One series per worker (pid): which routing config each worker acts on.
        routing_info=prom.Gauge(
            "fraud_model_edge_routing_info",
            "1 for the revision of the routing config (the FraudModel's <name>-routing ConfigMap) "
            "this worker's edge acts on, 0 for revisions it acted on before.",
            [*labels, "revision"],
            multiprocess_mode="liveall",
        ),
        routing_errors=prom.Counter(
            "fraud_model_edge_routing_errors",
            "Routing config files the edge could not use (it then routes nothing).",
            labels,
        ),
        # What the operator needs to judge the distance from the reference: the sample's size (its
        # sampling noise) and the flag rate it gives at the served threshold (docs/operator.md,
        # "Monitoring after promotion").
        reference_samples=prom.Gauge(
            "fraud_model_reference_samples",
            "Rows in the model's reference sample (the reference distributions are shares of it).",
            labels,
            multiprocess_mode="max",
        ),
        reference_flag_rate=prom.Gauge(
            "fraud_model_reference_flag_rate",
            "Share of the model's reference scores at or above the served decision threshold.",
            labels,
            multiprocess_mode="max",
        ),
        mirrored=prom.Counter(
            "fraud_model_mirror_transactions",
            "Scored transactions the stable edge mirrored to a shadow track, by outcome: sent, dropped "
            "(the bounded queue was full: never waited for) or failed (the shadow did not take them).",
            [*labels, "outcome"],
        ),
        mirror_queue=prom.Gauge(
            "fraud_model_mirror_queue",
            "Transactions waiting to be mirrored, summed over workers.",
            labels,
            multiprocess_mode="livesum",
        ),
        paired=prom.Counter(
            "fraud_model_paired_decisions",
            "Mirrored transactions scored by this (shadow) track, by the stable's decision and its own: "
            "the agreement table of a shadow phase.",
            [*labels, "stable_decision", "shadow_decision"],
        ),
        paired_amount=prom.Counter(
            "fraud_model_paired_amount",
            "Amounts of the paired transactions, by the stable's decision and this track's.",
            [*labels, "stable_decision", "shadow_decision"],
        ),
        paired_delta=prom.Histogram(
            "fraud_model_paired_abs_score_delta",
            "|this track's score - the stable's score| on the same transaction.",
            labels,
            buckets=(0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0),
        ),
    )


def _le(bound: float) -> str:
    """An `le` label as prometheus_client writes a histogram's."""
    return "+Inf" if bound == float("inf") else repr(float(bound))


def cumulative_shares(values: Iterable[float], buckets: tuple[float, ...]) -> list[float]:
    """Share of ``values`` at or below each bucket bound, and 1.0 for +Inf (like a histogram)."""
    import numpy as np

    v = np.sort(np.asarray(list(values), dtype=np.float64))
    if v.size == 0:
        return [0.0] * (len(buckets) + 1)
    return [float(np.searchsorted(v, b, side="right")) / v.size for b in buckets] + [1.0]


class ServiceMetrics:
    """The metric children of one (model_version, track), created up front so
    every series exists (at zero) from the first scrape."""

    def __init__(self, version: str, track: str, threshold: float = 0.5) -> None:
        self.buckets = score_buckets(threshold)
        self.threshold = threshold
        f = self._families = _families(self.buckets)
        self.labels = (version, track)
        self._features = [f.feature.labels(version, track, name) for name in MONITORED_FEATURES]
        self.score = f.score.labels(version, track)
        self.flag = f.decisions.labels(version, track, "flag")
        self.allow = f.decisions.labels(version, track, "allow")
        self.predictions = f.predictions.labels(version, track)
        self.shed = f.shed.labels(version, track)
        self._rejected = {r: f.rejected.labels(version, track, r) for r in REJECT_REASONS}
        self._routing_revision: str | None = None
        f.routing_errors.labels(version, track)
        if track == "stable":
            for outcome in ("sent", "dropped", "failed"):
                f.mirrored.labels(version, track, outcome)
        if track == "shadow":  # every cell of the agreement table exists from the first scrape
            for stable in ("flag", "allow"):
                for own in ("flag", "allow"):
                    f.paired.labels(version, track, stable, own)
                    f.paired_amount.labels(version, track, stable, own)

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

    def observe_features(self, columns: Iterable[Iterable[float]]) -> None:
        """Values of MONITORED_FEATURES, one iterable per feature in that order."""
        for child, values in zip(self._features, columns, strict=True):
            for v in values:
                child.observe(v)

    def publish_reference(self, scores: Iterable[float], features: dict[str, Iterable[float]]) -> None:
        """Set the reference distributions (from the model's saved reference sample)."""
        f = self._families
        scores = list(scores)
        if scores:
            f.reference_samples.labels(*self.labels).set(len(scores))
            flagged = sum(1 for s in scores if s >= self.threshold)
            f.reference_flag_rate.labels(*self.labels).set(flagged / len(scores))
        bounds = (*self.buckets, float("inf"))
        for bound, share in zip(bounds, cumulative_shares(scores, self.buckets), strict=True):
            f.reference_score.labels(*self.labels, _le(bound)).set(share)
        feature_bounds = (*FEATURE_BUCKETS, float("inf"))
        for name in MONITORED_FEATURES:
            if name not in features:
                continue
            shares = cumulative_shares(features[name], FEATURE_BUCKETS)
            for bound, share in zip(feature_bounds, shares, strict=True):
                f.reference_feature.labels(*self.labels, name, _le(bound)).set(share)

    def rejected(self, reason: str) -> None:
        self._rejected[reason].inc()

    def mirrored(self, outcome: str, n: int) -> None:
        if n:
            self._families.mirrored.labels(*self.labels, outcome).inc(n)

    def mirror_queue(self, depth: int) -> None:
        self._families.mirror_queue.labels(*self.labels).set(depth)

    def paired(self, cells: Iterable[tuple[str, str, float, float]]) -> None:
        """Record pairs: (stable decision, this track's decision, amount, |score delta|)."""
        f = self._families
        for stable, own, amount, delta in cells:
            f.paired.labels(*self.labels, stable, own).inc()
            f.paired_amount.labels(*self.labels, stable, own).inc(amount)
            f.paired_delta.labels(*self.labels).observe(delta)

    def routing_changed(self, revision: str, error: str | None) -> None:
        """The edge now acts on routing config `revision` ("" for none)."""
        f = self._families
        if self._routing_revision is not None:
            f.routing_info.labels(*self.labels, self._routing_revision).set(0)
        f.routing_info.labels(*self.labels, revision).set(1)
        self._routing_revision = revision
        if error:
            f.routing_errors.labels(*self.labels).inc()


@functools.cache
def service_metrics(version: str, track: str, threshold: float = 0.5) -> ServiceMetrics:
    return ServiceMetrics(version, track, threshold)
