"""Monitoring after promotion, the bento's side: the reference distributions of the loaded model
and live histograms of a few input features, as Prometheus metrics on the same buckets."""

from __future__ import annotations

import re

import pytest
from prometheus_client import REGISTRY, generate_latest

from fraud_detector.metrics import (
    FEATURE_BUCKETS,
    MONITORED_FEATURES,
    ServiceMetrics,
    cumulative_shares,
    score_buckets,
)


@pytest.mark.parametrize(
    ("values", "buckets", "shares"),
    [
        ([0.1, 0.2, 0.3, 0.4], (0.2, 0.35), [0.5, 0.75, 1.0]),
        ([], (0.5,), [0.0, 0.0]),
        ([1.0, 1.0], (1.0,), [1.0, 1.0]),  # at the bound counts as below it (le)
    ],
    ids=["quartiles", "empty", "on-the-edge"],
)
def test_cumulative_shares(values: list[float], buckets: tuple[float, ...], shares: list[float]) -> None:
    assert cumulative_shares(values, buckets) == shares


def _samples(name: str, **labels: str) -> dict[str, float]:
    text = generate_latest(REGISTRY).decode()
    out = {}
    for line in text.splitlines():
        m = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if m:
            got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            if all(got.get(k) == v for k, v in labels.items()):
                out[got.get("le", "")] = float(m.group(2))
    return out


def test_reference_and_live_features_are_published_on_the_live_buckets() -> None:
    metrics = ServiceMetrics("vmon", "canary", 0.5)
    scores = [0.00002, 0.0003, 0.004, 0.02, 0.6]
    metrics.publish_reference(scores, {"amount": [5.0, 50.0, 500.0, 5000.0]})
    ref = _samples("fraud_model_reference_score_bucket", model_version="vmon")
    assert list(ref) == [repr(b) for b in score_buckets(0.5)] + ["+Inf"]
    assert ref["0.5"] == pytest.approx(0.8) and ref["+Inf"] == 1.0
    values = list(ref.values())
    assert _samples("fraud_model_reference_samples", model_version="vmon") == {"": 5.0}
    assert _samples("fraud_model_reference_flag_rate", model_version="vmon") == {"": pytest.approx(0.2)}
    assert values == sorted(values)
    amount = _samples("fraud_model_reference_feature_bucket", model_version="vmon", feature="amount")
    assert len(amount) == len(FEATURE_BUCKETS) + 1
    assert (amount["10.0"], amount["1000.0"], amount["+Inf"]) == (0.25, 0.75, 1.0)

    metrics.observe_features([[42.0], [3.0], [0.0], [1.0]])
    live = _samples("fraud_model_feature_bucket", model_version="vmon", feature="amount")
    assert set(live) == set(amount)  # the same buckets as the reference
    assert (live["20.0"], live["50.0"]) == (0.0, 1.0)
    assert len(MONITORED_FEATURES) == 4
