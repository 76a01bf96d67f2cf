"""Training end to end (in-process, no store): quality and the regressed variants."""

from __future__ import annotations

import functools

import numpy as np
import torch

from fraud_detector.evaluation import psi
from fraud_detector.train import TrainConfig, TrainResult, reference_traffic, train


@functools.cache
def _trained(regressed: str | None = None) -> TrainResult:
    return train(TrainConfig(version="t", regressed=regressed, resamples=100))  # type: ignore[arg-type]


@functools.cache
def _reference_scores(regressed: str | None = None) -> np.ndarray:
    return _trained(regressed).model.predict_proba(reference_traffic().matrix())


def test_trains_fast_and_beats_trivial_baselines() -> None:
    r = _trained()
    assert r.seconds < 60
    m = r.holdout
    # a constant score has ROC-AUC 0.5 and PR-AUC equal to the fraud rate
    assert m.roc_auc > 0.93
    assert m.pr_auc > 10 * m.base_rate
    assert m.recall_at_1pct_fpr > 0.6
    # calibrated enough: flags about as often as fraud happens
    assert 0.3 * m.base_rate < m.flag_rate < 3 * m.base_rate


def test_training_is_deterministic_by_seed() -> None:
    a = train(TrainConfig(version="a", rows=5_000, epochs=2, resamples=20))
    b = train(TrainConfig(version="b", rows=5_000, epochs=2, resamples=20))
    assert a.fingerprint == b.fingerprint
    for (k, va), (_, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert torch.equal(va, vb), k


def test_miscalibrated_model_moves_scores_and_flag_rate() -> None:
    good, bad = _reference_scores(), _reference_scores("miscalibrated")
    assert psi(good, bad) > 0.2
    assert (bad >= 0.5).mean() > 3 * (good >= 0.5).mean()


def test_label_noise_model_moves_scores_but_not_flag_rate() -> None:
    good, bad = _reference_scores(), _reference_scores("label_noise")
    assert psi(good, bad) > 0.2
    assert (bad >= 0.5).mean() < 2 * (good >= 0.5).mean()
