from __future__ import annotations

import numpy as np
import pytest

from fraud_detector.data import PATTERNS, generate, payloads
from fraud_detector.evaluation import psi
from fraud_detector.schema import FEATURE_NAMES, FEATURES, Transaction
from fraud_detector.validation import validate


def test_same_seed_same_data_and_fingerprint() -> None:
    a, b = generate(3_000, seed=11), generate(3_000, seed=11)
    assert a.fingerprint() == b.fingerprint()
    np.testing.assert_array_equal(a.matrix(), b.matrix())


def test_other_seed_other_data() -> None:
    assert generate(3_000, seed=11).fingerprint() != generate(3_000, seed=12).fingerprint()


def test_fraud_is_rare_and_every_pattern_occurs() -> None:
    d = generate(50_000, seed=3)
    assert 0.008 < d.labels.mean() < 0.025
    assert set(np.unique(d.patterns)) == set(PATTERNS)
    # labels and patterns agree
    assert ((d.patterns != "legit") == (d.labels == 1)).all()


def test_every_value_is_within_the_schema() -> None:
    d = generate(20_000, seed=5)
    assert validate(d).ok, validate(d).render()
    for spec in FEATURES:
        col = d.columns[spec.name].astype(np.float64)
        assert col.min() >= spec.minimum, spec.name
        assert col.max() <= spec.maximum, spec.name


@pytest.mark.parametrize(
    ("pattern", "feature", "direction"),
    [
        ("bot", "txn_count_1h", "higher"),
        ("bot", "failed_logins_24h", "higher"),
        ("chargeback", "amount", "higher"),
        ("chargeback", "distance_from_home_km", "higher"),
        ("promo_abuse", "promo_redemptions_30d", "higher"),
        ("promo_abuse", "account_age_days", "lower"),
    ],
    ids=lambda v: str(v),
)
def test_fraud_patterns_carry_their_signal(pattern: str, feature: str, direction: str) -> None:
    d = generate(50_000, seed=9)
    col = d.columns[feature].astype(np.float64)
    fraud, legit = np.median(col[d.patterns == pattern]), np.median(col[d.patterns == "legit"])
    assert fraud > legit if direction == "higher" else fraud < legit


def test_shift_produces_drift() -> None:
    base, drifted = generate(20_000, seed=1), generate(20_000, seed=1, shift=1.0)
    amount = FEATURE_NAMES.index("amount")
    assert psi(np.log1p(base.matrix()[:, amount]) / 12, np.log1p(drifted.matrix()[:, amount]) / 12) > 0.2


def test_payloads_are_valid_requests() -> None:
    bodies = payloads(200, seed=4)
    assert len({b["transaction_id"] for b in bodies}) == 200
    for body in bodies:
        Transaction.model_validate(body)


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"rows": 0}, "rows"), ({"shift": 2.0}, "shift")], ids=["no-rows", "shift"]
)
def test_bad_arguments_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate(**kwargs)  # type: ignore[arg-type]
