"""Model quality and distribution metrics, in numpy (no scikit-learn needed)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "SCORE_BUCKETS",
    "Metrics",
    "average_precision",
    "evaluate",
    "psi",
    "recall_at_fpr",
    "roc_auc",
]

# The upper bounds of the service's score histogram (and of PSI here): every 0.05.
SCORE_BUCKETS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 21))

Array = npt.NDArray[Any]


def roc_auc(labels: Array, scores: Array) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties)."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC-AUC needs both classes")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty_like(s)
    sorted_s = s[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def average_precision(labels: Array, scores: Array) -> float:
    """PR-AUC as average precision (the step-wise area, as commonly reported)."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if not y.any():
        raise ValueError("average precision needs positives")
    order = np.argsort(-s, kind="mergesort")
    y_sorted = y[order]
    tp = np.cumsum(y_sorted)
    precision = tp / np.arange(1, y.size + 1)
    return float(precision[y_sorted].sum() / y.sum())


def recall_at_fpr(labels: Array, scores: Array, fpr: float = 0.01) -> float:
    """Recall at the threshold that lets through at most ``fpr`` of negatives."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    threshold = np.quantile(s[~y], 1.0 - fpr, method="higher")
    return float((s[y] > threshold).mean())


def psi(expected: Array, actual: Array, buckets: tuple[float, ...] = SCORE_BUCKETS) -> float:
    """Population stability index of ``actual`` vs ``expected`` over score buckets."""
    edges = np.array([-np.inf, *buckets[:-1], np.inf])
    e = np.histogram(np.asarray(expected, dtype=np.float64), bins=edges)[0].astype(np.float64)
    a = np.histogram(np.asarray(actual, dtype=np.float64), bins=edges)[0].astype(np.float64)
    eps = 1e-4
    e = np.clip(e / e.sum(), eps, None)
    a = np.clip(a / a.sum(), eps, None)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass(frozen=True)
class Metrics:
    roc_auc: float
    pr_auc: float
    recall_at_1pct_fpr: float
    flag_rate: float  # share of transactions at or above the decision threshold
    base_rate: float
    rows: int

    def as_dict(self) -> dict[str, float]:
        return {k: round(float(v), 6) for k, v in asdict(self).items()}


def evaluate(labels: Array, scores: Array, threshold: float = 0.5) -> Metrics:
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    return Metrics(
        roc_auc=roc_auc(y, s),
        pr_auc=average_precision(y, s),
        recall_at_1pct_fpr=recall_at_fpr(y, s, 0.01),
        flag_rate=float((s >= threshold).mean()),
        base_rate=float(np.asarray(y).mean()),
        rows=int(y.size),
    )
