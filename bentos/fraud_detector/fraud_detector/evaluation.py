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
    """PR-AUC as average precision: the sum over distinct score thresholds of
    precision times the recall gained (tied scores form one threshold, so a model
    that saturates at 1.0 gets no credit from the order of its ties)."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if not y.any():
        raise ValueError("average precision needs positives")
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), y.size - 1]  # end of each run of equal scores
    tp = np.cumsum(y_sorted)[last]
    precision = tp / (last + 1)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


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


# ---------------------------------------------------------------- release evaluation


@dataclass(frozen=True)
class Estimate:
    """A metric on the test split with its 95 % bootstrap interval."""

    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"value": round(self.value, 6), "low": round(self.low, 6), "high": round(self.high, 6)}

    def render(self, digits: int = 3) -> str:
        return f"{self.value:.{digits}f} ({self.low:.{digits}f}-{self.high:.{digits}f})"


@dataclass(frozen=True)
class CostModel:
    """What a decision costs: a missed fraud its amount, a false alarm a fixed review cost."""

    review_cost: float = 5.0

    def total(self, labels: Array, scores: Array, amounts: Array, threshold: float) -> float:
        y = np.asarray(labels).astype(bool)
        flagged = np.asarray(scores) >= threshold
        missed = float(np.asarray(amounts, dtype=np.float64)[y & ~flagged].sum())
        return missed + self.review_cost * float((~y & flagged).sum())


def calibration_table(labels: Array, scores: Array, bins: int = 10) -> list[dict[str, float]]:
    """Equal-count score bins: mean predicted vs observed fraud rate (rare events would
    leave every equal-width bin but the first empty)."""
    y = np.asarray(labels, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(s, kind="mergesort")
    rows = []
    for part in np.array_split(order, bins):
        if part.size:
            rows.append(
                {
                    "score_low": float(s[part].min()),
                    "score_high": float(s[part].max()),
                    "predicted": float(s[part].mean()),
                    "observed": float(y[part].mean()),
                    "rows": int(part.size),
                }
            )
    return rows


def expected_calibration_error(labels: Array, scores: Array, bins: int = 10) -> float:
    """Row-weighted mean |predicted - observed| over equal-count bins."""
    table = calibration_table(labels, scores, bins)
    n = sum(r["rows"] for r in table)
    return float(sum(r["rows"] * abs(r["predicted"] - r["observed"]) for r in table) / max(1, n))


def point_metrics(
    labels: Array,
    scores: Array,
    amounts: Array,
    patterns: Array,
    threshold: float,
    cost: CostModel,
) -> dict[str, float]:
    """Every release metric at ``threshold`` (one resample's worth, for the bootstrap)."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    a = np.asarray(amounts, dtype=np.float64)
    flagged = s >= threshold
    out = {
        "roc_auc": roc_auc(y, s),
        "pr_auc": average_precision(y, s),
        "recall": float(flagged[y].mean()),
        "precision": float(y[flagged].mean()) if flagged.any() else 0.0,
        "amount_weighted_recall": float(a[y & flagged].sum() / max(a[y].sum(), 1e-12)),
        "flag_rate": float(flagged.mean()),
        "cost_per_1k": 1000.0 * cost.total(y, s, a, threshold) / max(1, y.size),
        "brier": float(np.mean((s - y) ** 2)),
        "ece": expected_calibration_error(y, s),
        "calibration_ratio": float(s.mean() / max(y.mean(), 1e-12)),
    }
    for name in sorted(set(np.asarray(patterns).tolist()) - {"legit", "unknown"}):
        mask = np.asarray(patterns) == name
        out[f"recall_{name}"] = float(flagged[mask].mean()) if mask.any() else float("nan")
    return out


def _stratified_resamples(labels: Array, resamples: int, seed: int) -> list[npt.NDArray[np.intp]]:
    y = np.asarray(labels).astype(bool)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    rng = np.random.default_rng(seed)
    return [np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)]) for _ in range(resamples)]


def evaluate_with_ci(
    labels: Array,
    scores: Array,
    amounts: Array,
    patterns: Array,
    threshold: float,
    cost: CostModel,
    *,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Estimate]:
    """Release metrics with 95 % percentile intervals from a stratified bootstrap
    (positives and negatives resampled separately: the fraud count stays fixed)."""
    y, s, a, p = np.asarray(labels), np.asarray(scores), np.asarray(amounts), np.asarray(patterns)
    point = point_metrics(y, s, a, p, threshold, cost)
    draws = [
        point_metrics(y[i], s[i], a[i], p[i], threshold, cost)
        for i in _stratified_resamples(y, resamples, seed)
    ]
    out = {}
    for name, value in point.items():
        values = np.array([d[name] for d in draws], dtype=np.float64)
        low, high = np.nanpercentile(values, [2.5, 97.5])
        out[name] = Estimate(value, float(low), float(high))
    return out


def paired_difference(
    labels: Array,
    challenger: Array,
    champion: Array,
    metric: str = "pr_auc",
    *,
    resamples: int = 1000,
    seed: int = 0,
) -> Estimate:
    """challenger - champion on the same rows, with a paired bootstrap interval."""
    fn = {"pr_auc": average_precision, "roc_auc": roc_auc}[metric]
    y, a, b = np.asarray(labels), np.asarray(challenger), np.asarray(champion)
    diffs = np.array([fn(y[i], a[i]) - fn(y[i], b[i]) for i in _stratified_resamples(y, resamples, seed)])
    low, high = np.percentile(diffs, [2.5, 97.5])
    return Estimate(fn(y, a) - fn(y, b), float(low), float(high))
