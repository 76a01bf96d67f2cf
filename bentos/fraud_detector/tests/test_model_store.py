"""What training leaves in the model store: immutable versions, the gate's verdict, a model card,
and enough metadata to rebuild the model."""

from __future__ import annotations

import hashlib

import pytest
import yaml

from fraud_detector.card import CARD_FILE

from .conftest import BAD, GOOD, REFUSED, Store

pytestmark = pytest.mark.server  # uses the store trained by the real CLI


def _model_dir(store: Store, version: str):  # type: ignore[no-untyped-def]
    return store.home / "models" / "fraud_detector" / version


def _meta(store: Store, version: str) -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((_model_dir(store, version) / "model.yaml").read_text())


def test_a_version_is_never_replaced(store: Store) -> None:
    before = (_model_dir(store, GOOD) / "model.yaml").read_text()
    done = store.run("-m", "fraud_detector.train", "--version", GOOD, "--seed", "99", "--resamples", "20")
    assert done.returncode == 3, done.stdout + done.stderr
    assert "versions are immutable" in done.stderr
    assert (_model_dir(store, GOOD) / "model.yaml").read_text() == before
    assert "--force" not in store.run("-m", "fraud_detector.train", "--help").stdout


def test_metadata_is_enough_to_rebuild_and_audit(store: Store) -> None:
    info = _meta(store, GOOD)
    meta, labels = info["metadata"], info["labels"]
    assert labels["promotable"] == "true"
    hp = meta["hyperparameters"]
    assert {"epochs", "batch_size", "learning_rate", "weight_decay", "hidden", "seed", "split"} <= set(hp)
    assert len(meta["code"]["revision"]) in (40, 7) or meta["code"]["revision"] == "unknown"
    weights = (_model_dir(store, GOOD) / "model.pt").read_bytes()
    assert meta["weights_sha256"] == hashlib.sha256(weights).hexdigest()
    assert len(meta["training_data"]["fingerprint"]) == 64
    assert meta["threshold"]["policy"] == "cost"
    assert 0.0 < meta["threshold"]["value"] < 1.0
    evaluation = meta["evaluation"]["metrics"]
    for name in (
        "roc_auc",
        "pr_auc",
        "amount_weighted_recall",
        "recall_chargeback",
        "ece",
        "calibration_ratio",
    ):
        est = evaluation[name]
        assert est["low"] <= est["value"] <= est["high"], name
    card = (_model_dir(store, GOOD) / CARD_FILE).read_text()
    assert f"# Model card: fraud_detector:{GOOD}" in card
    assert meta["weights_sha256"] in card


def test_gate_verdicts(store: Store) -> None:
    refused = _meta(store, REFUSED)
    assert refused["labels"]["promotable"] == "false"
    failures = refused["metadata"]["release"]["failures"]
    assert any("roc_auc=" in f and "below the floor" in f for f in failures), failures
    assert "**NOT promotable**" in (_model_dir(store, REFUSED) / CARD_FILE).read_text()
    # the miscalibrated model ranks as well as v1: it passes the gate, and is caught by the canary instead
    bad = _meta(store, BAD)["metadata"]["release"]
    assert bad["promotable"] is True
    assert bad["champion"] == f"fraud_detector:{GOOD}"
    assert _meta(store, BAD)["metadata"]["evaluation"]["metrics"]["calibration_ratio"]["value"] > 3
