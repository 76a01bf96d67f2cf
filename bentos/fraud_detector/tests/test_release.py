"""The release policy (threshold, gate), the model card, and which models the service refuses."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fraud_detector.card import render_card
from fraud_detector.evaluation import (
    CostModel,
    Estimate,
    average_precision,
    evaluate_with_ci,
    paired_difference,
)
from fraud_detector.loading import Declared, assess, facts_of
from fraud_detector.release import THRESHOLD_GRID, assess_release, choose_threshold
from fraud_detector.schema import schema_as_dict

RNG = np.random.default_rng(5)
LABELS = (RNG.random(4_000) < 0.05).astype(np.int8)
SCORES = np.clip(0.02 + 0.6 * LABELS + RNG.normal(0, 0.15, LABELS.size), 0.0005, 0.999)
AMOUNTS = np.where(LABELS == 1, 400.0, 30.0)
PATTERNS = np.where(LABELS == 1, "bot", "legit")


def test_cost_policy_picks_the_cheapest_threshold_of_the_grid() -> None:
    choice = choose_threshold("cost", LABELS, SCORES, AMOUNTS, review_cost=5.0)
    cost = CostModel(5.0)
    best = min(cost.total(LABELS, SCORES, AMOUNTS, t) for t in THRESHOLD_GRID)
    assert choice.validation_cost == pytest.approx(best)
    assert cost.total(LABELS, SCORES, AMOUNTS, choice.value) < cost.total(LABELS, SCORES, AMOUNTS, 0.5)


def test_fpr_policy_keeps_false_alarms_under_the_target() -> None:
    choice = choose_threshold("fpr", LABELS, SCORES, AMOUNTS, max_fpr=0.01)
    fpr = float((SCORES[LABELS == 0] >= choice.value).mean())
    assert fpr <= 0.01
    assert choice.validation_fpr == pytest.approx(fpr)


def test_fixed_policy() -> None:
    assert choose_threshold("fixed", LABELS, SCORES, AMOUNTS, fixed=0.42).value == 0.42


def test_average_precision_gives_ties_no_credit_for_their_order() -> None:
    y = np.array([1, 0, 1, 0])
    tied = np.array([1.0, 1.0, 1.0, 1.0])
    assert average_precision(y, tied) == pytest.approx(0.5)  # the base rate, whatever the order
    assert average_precision(y[::-1], tied) == pytest.approx(0.5)


def test_intervals_contain_the_estimate_and_shrink_with_more_rows() -> None:
    small = evaluate_with_ci(
        LABELS[:800], SCORES[:800], AMOUNTS[:800], PATTERNS[:800], 0.3, CostModel(), resamples=200
    )
    large = evaluate_with_ci(LABELS, SCORES, AMOUNTS, PATTERNS, 0.3, CostModel(), resamples=200)
    for name in ("roc_auc", "pr_auc", "recall", "amount_weighted_recall", "recall_bot", "ece"):
        est = large[name]
        assert est.low <= est.value <= est.high, name
    assert large["pr_auc"].high - large["pr_auc"].low < small["pr_auc"].high - small["pr_auc"].low


def test_paired_difference_of_a_model_with_itself_is_zero() -> None:
    d = paired_difference(LABELS, SCORES, SCORES, resamples=50)
    assert (d.value, d.low, d.high) == (0.0, 0.0, 0.0)


GOOD = {"roc_auc": Estimate(0.97, 0.95, 0.99), "pr_auc": Estimate(0.88, 0.83, 0.93)}
GATE = [
    ("good, no champion", GOOD, None, True, ""),
    ("good, as good as champion", GOOD, Estimate(-0.01, -0.024, 0.004), True, ""),
    (
        "worse than champion beyond noise",
        GOOD,
        Estimate(-0.04, -0.07, -0.015),
        False,
        "roc_auc -0.040 vs champion fraud_detector:v1",
    ),
    ("worse but within noise", GOOD, Estimate(-0.03, -0.07, 0.01), True, ""),
    (
        "shuffled labels",
        {"roc_auc": Estimate(0.53, 0.49, 0.57), "pr_auc": Estimate(0.02, 0.01, 0.03)},
        None,
        False,
        "roc_auc=0.530 (95% CI 0.490-0.570) below the floor 0.9",
    ),
]


@pytest.mark.parametrize(
    ("name", "metrics", "versus", "promotable", "failure"), GATE, ids=[g[0] for g in GATE]
)
def test_release_gate(
    name: str, metrics: dict[str, Estimate], versus: Estimate | None, promotable: bool, failure: str
) -> None:
    decision = assess_release(metrics, "fraud_detector:v1" if versus else None, versus)
    assert decision.promotable is promotable
    if failure:
        assert any(failure in f for f in decision.failures), decision.failures


def _meta(**changes: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "version": "v1",
        "feature_schema": schema_as_dict(),
        "threshold": {"value": 0.28, "policy": "cost", "params": {"review_cost": 5.0}},
        "release": {"promotable": True, "failures": [], "checks": []},
    }
    meta.update(changes)
    return meta


CONTRACT = [
    ("declared and loaded agree", Declared("v1", "v1"), _meta(), None),
    ("nothing declared", Declared(), _meta(), None),
    ("other version", Declared("v2"), _meta(), "ModelVersionMismatch"),
    ("other declared schema", Declared("v1", "v2"), _meta(), "FeatureSchemaMismatch"),
    (
        "model of another schema",
        Declared("v1"),
        _meta(feature_schema={**schema_as_dict(), "version": "v2"}),
        "FeatureSchemaMismatch",
    ),
    (
        "gate failed",
        Declared("v1"),
        _meta(release={"promotable": False, "failures": ["pr_auc=0.1 below the floor 0.5"]}),
        "ModelNotPromotable",
    ),
    ("trained before the gate", Declared("v1"), {**_meta(), "release": None}, "ModelNotPromotable"),
]


@pytest.mark.parametrize(("name", "declared", "meta", "reason"), CONTRACT, ids=[c[0] for c in CONTRACT])
def test_serving_contract(name: str, declared: Declared, meta: dict[str, Any], reason: str | None) -> None:
    problem = assess(declared, facts_of("fraud_detector:v1", meta))
    assert (problem.reason if problem else None) == reason
    if problem is not None:
        assert "fraud_detector:v1" in problem.message


def test_threshold_and_version_come_from_the_metadata() -> None:
    facts = facts_of("fraud_detector:v1", _meta())
    assert (facts.version, facts.threshold, facts.threshold_policy) == ("v1", 0.28, "cost")
    assert facts_of("fraud_detector:v0", _meta(threshold=0.5)).threshold == 0.5  # older models: a number


def test_card_renders_every_section() -> None:
    meta = _meta(
        evaluation={
            "rows": 10,
            "frauds": 2,
            "resamples": 100,
            "metrics": {"pr_auc": Estimate(0.9, 0.8, 0.95).as_dict()},
            "calibration": [
                {"score_low": 0.0, "score_high": 0.1, "predicted": 0.01, "observed": 0.02, "rows": 10}
            ],
        },
        hyperparameters={"epochs": 8, "learning_rate": 0.003},
        code={"revision": "abc123", "dirty": True},
        weights_sha256="f" * 64,
        training_data={"fingerprint": "e" * 64, "rows": 50_000, "seed": 7, "source": "synthetic"},
    )
    card = render_card("fraud_detector:v1", meta)
    for text in (
        "# Model card: fraud_detector:v1",
        "**promotable**",
        "0.28, chosen by the `cost` policy (review_cost=5)",
        "| PR-AUC (average precision) | 0.900 | 0.800 - 0.950 |",
        "| learning_rate | 0.003 |",
        "`abc123` (uncommitted changes)",
        "f" * 64,
    ):
        assert text in card, text
