from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch

from fraud_detector import model as model_io
from fraud_detector.data import generate
from fraud_detector.evaluation import SCORE_BUCKETS, average_precision, evaluate, psi, recall_at_fpr, roc_auc
from fraud_detector.metrics import score_buckets
from fraud_detector.model import FraudNet
from fraud_detector.schema import FEATURE_NAMES


def _net() -> FraudNet:
    torch.manual_seed(0)
    net = FraudNet()
    net.fit_normalisation(generate(2_000, seed=1).matrix())
    net.eval()
    return net


def test_normalisation_is_part_of_the_saved_state(tmp_path: Path) -> None:
    net = _net()
    assert {"mean", "std", "log_mask"} <= set(net.state_dict())
    x = generate(100, seed=2).matrix()
    model_io.save(net, tmp_path)
    again = model_io.load(tmp_path)
    np.testing.assert_allclose(net.predict_proba(x), again.predict_proba(x), rtol=0, atol=0)


def test_scores_are_probabilities_one_per_row() -> None:
    x = generate(500, seed=3).matrix()
    s = _net().predict_proba(x)
    assert s.shape == (500,)
    assert ((s >= 0) & (s <= 1)).all()


def test_loading_a_model_for_other_features_is_refused(tmp_path: Path) -> None:
    model_io.save(_net(), tmp_path)
    cfg = json.loads((tmp_path / model_io.CONFIG_FILE).read_text())
    cfg["features"] = [*FEATURE_NAMES[:-1], "shoe_size"]
    (tmp_path / model_io.CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="shoe_size"):
        model_io.load(tmp_path)


@pytest.mark.parametrize(
    ("labels", "scores", "auc"),
    [
        ([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], 1.0),
        ([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1], 0.0),
        ([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5], 0.5),
        ([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], 0.75),
    ],
    ids=["perfect", "inverted", "ties", "one-swap"],
)
def test_roc_auc(labels: list[int], scores: list[float], auc: float) -> None:
    assert roc_auc(np.array(labels), np.array(scores)) == pytest.approx(auc)


def test_average_precision_and_recall_at_fpr() -> None:
    y = np.array([1, 0, 1, 0, 0])
    s = np.array([0.9, 0.8, 0.7, 0.2, 0.1])
    assert average_precision(y, s) == pytest.approx((1 + 2 / 3) / 2)
    assert (
        recall_at_fpr(np.array([0] * 100 + [1] * 10), np.r_[np.linspace(0, 0.5, 100), np.full(10, 0.9)])
        == 1.0
    )


def test_psi_zero_for_same_and_large_for_moved() -> None:
    rng = np.random.default_rng(0)
    a = rng.beta(1, 20, 10_000)
    assert psi(a, a) == pytest.approx(0.0)
    assert psi(a, rng.beta(1, 20, 10_000)) < 0.02
    assert psi(a, rng.beta(2, 5, 10_000)) > 0.2


def test_buckets_every_005_to_1() -> None:
    assert tuple(round(0.05 * i, 2) for i in range(1, 21)) == SCORE_BUCKETS
    assert SCORE_BUCKETS[-1] == 1.0


def test_evaluate_flag_rate() -> None:
    m = evaluate(np.array([0, 0, 0, 1]), np.array([0.1, 0.6, 0.2, 0.9]), threshold=0.5)
    assert (m.flag_rate, m.base_rate, m.rows) == (0.5, 0.25, 4)


@pytest.mark.parametrize(
    "threshold", [0.5, 0.37, 0.01, 0.0, 1.0], ids=["default", "between-edges", "on-edge", "0", "1"]
)
def test_score_buckets_log_spaced_with_the_threshold_as_an_edge(threshold: float) -> None:
    edges = score_buckets(threshold)
    assert edges == tuple(sorted(set(edges)))
    assert edges[0] == 1e-5
    assert edges[-1] == 1.0
    if 0 < threshold < 1:
        assert threshold in edges
    # five edges per decade below the threshold: a 1% flag rate's bulk (1e-4..0.05) gets ~14 buckets
    assert sum(1e-4 <= e <= 0.05 for e in edges) >= 13
    ratios = [b / a for a, b in pairwise(edges) if b <= 0.1]
    assert max(ratios) <= 1.6, ratios


def test_score_buckets_see_a_fraud_models_scores() -> None:
    """~98% of scores fell in the first of the old linear buckets; now no bucket holds more than a fifth."""
    rng = np.random.default_rng(3)
    scores = np.exp(rng.normal(np.log(2e-3), 1.5, 100_000))  # a fraud model: most scores far below 0.5
    bucket = np.searchsorted(np.array(score_buckets(0.5)), np.clip(scores, 0, 1), side="left")  # le semantics
    counts = np.bincount(bucket)
    assert counts.max() / counts.sum() < 0.2
