"""Train, evaluate and save a fraud model into the BentoML model store.

    python -m fraud_detector.train --version v1
    python -m fraud_detector.train --version v2-bad --regressed miscalibrated

The data is validated first; on failure the report is printed and nothing is
trained (exit code 2). Metrics are computed on a held-out 20 % split and on a
fixed "reference" sample of normal traffic (the same for every version, so the
score distributions and flag rates of two versions can be compared).

Regressed variants, for rollout tests that need a real bad model:

* ``miscalibrated``: negatives undersampled 1:100 and the prior never corrected
  (a classic): it still ranks well, but every score is inflated and at the same
  threshold it flags several times more transactions. Fails both a PSI gate
  and a flag-rate gate.
* ``label_noise``: a fifth of the legitimate rows labelled fraud (a broken
  labelling join): the score distribution moves up everywhere while the flag
  rate stays close to normal. Fails a PSI gate, not a flag-rate gate.
* ``shuffled_labels``: labels joined to the wrong rows. Fails the release gate
  (ROC-AUC ~0.5), so it is saved as not promotable and never served.

Every model is judged by the release policy (:mod:`fraud_detector.release`):
its threshold is chosen on a validation split, its metrics with 95 % bootstrap
intervals on the test split, and it is saved as promotable or not; versions are
immutable. Its model card (:mod:`fraud_detector.card`) is saved beside it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from . import model as model_io
from .card import CARD_FILE, render_card
from .data import Dataset, generate
from .evaluation import (
    SCORE_BUCKETS,
    CostModel,
    Estimate,
    Metrics,
    calibration_table,
    evaluate,
    evaluate_with_ci,
    paired_difference,
)
from .metrics import MONITORED_FEATURES
from .model import FraudNet, ModelConfig
from .release import (
    CHAMPION_METRIC,
    Policy,
    ReleaseDecision,
    ThresholdChoice,
    assess_release,
    choose_threshold,
)
from .schema import schema_as_dict
from .validation import Report, profile, read_csv, to_dataset, to_frame, validate

__all__ = [
    "REGRESSIONS",
    "DataValidationError",
    "TrainConfig",
    "TrainResult",
    "main",
    "save_to_store",
    "train",
]

Regression = Literal["miscalibrated", "label_noise", "shuffled_labels"]
REGRESSIONS: tuple[Regression, ...] = ("miscalibrated", "label_noise", "shuffled_labels")
REFERENCE_SEED = 424_242
REFERENCE_ROWS = 20_000


class DataValidationError(Exception):
    def __init__(self, report: Report) -> None:
        super().__init__(report.render())
        self.report = report


@dataclass(frozen=True)
class TrainConfig:
    version: str
    seed: int = 7
    rows: int = 50_000
    regressed: Regression | None = None
    data: Path | None = None
    epochs: int = 8
    batch_size: int = 1024
    learning_rate: float = 3e-3
    weight_decay: float = 1e-5
    hidden: tuple[int, ...] = (64, 32)
    name: str = "fraud_detector"
    threshold_policy: Policy = "cost"
    review_cost: float = 5.0
    max_fpr: float = 0.01
    threshold: float = 0.5  # the "fixed" policy's threshold
    # "auto": the newest promotable model of this name in the store; None: no comparison
    champion: str | None = "auto"
    resamples: int = 500

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "weight_decay": self.weight_decay,
            "hidden": list(self.hidden),
            "optimizer": "Adam",
            "loss": "BCEWithLogits",
            "seed": self.seed,
            "split": {"train": 0.7, "validation": 0.1, "test": 0.2, "seed": self.seed + 1},
            "regressed": self.regressed,
        }


@dataclass(frozen=True)
class TrainResult:
    model: FraudNet
    holdout: Metrics
    reference: Metrics
    reference_histogram: list[float]
    fingerprint: str
    report: Report
    seconds: float
    threshold: ThresholdChoice
    evaluation: dict[str, Estimate]
    calibration: list[dict[str, float]]
    release: ReleaseDecision
    test_scores: np.ndarray
    test: Dataset
    profile: dict[str, Any]


def _load_data(
    cfg: TrainConfig, reference: Mapping[str, Any] | None
) -> tuple[Dataset, Report, dict[str, Any]]:
    """The training data, validated (against ``reference``, the profile of the last
    accepted training set), and its own profile."""
    frame = read_csv(cfg.data) if cfg.data is not None else to_frame(generate(cfg.rows, cfg.seed))
    report = validate(frame, reference)
    if not report.ok:
        raise DataValidationError(report)
    data = to_dataset(frame) if cfg.data is not None else generate(cfg.rows, cfg.seed)
    return data, report, profile(frame)


def _split(n: int, seed: int, holdout: float = 0.2, validation: float = 0.1) -> tuple[np.ndarray, ...]:
    """Train, validation (threshold) and test (evaluation, gate) rows. The test rows are
    the same as in the two-way split before the validation split existed."""
    perm = np.random.default_rng(seed + 1).permutation(n)
    k, v = int(n * holdout), int(n * validation)
    return perm[k + v :], perm[k : k + v], perm[:k]


def _training_rows(cfg: TrainConfig, data: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels as trained on; where the regressions corrupt them."""
    x, y = data.matrix(), data.labels.astype(np.float32)
    rng = np.random.default_rng(cfg.seed + 2)
    if cfg.regressed == "miscalibrated":
        # Negatives undersampled to 1 in 100 "to balance the classes" and the
        # prior never corrected: every score's odds come out about 100x too high.
        keep = (y == 1) | (rng.random(y.size) < 0.01)
        x, y = x[keep], y[keep]
    elif cfg.regressed == "shuffled_labels":
        # Labels joined to the wrong rows: nothing left to learn. The release gate refuses it.
        y = rng.permutation(y)
    elif cfg.regressed == "label_noise":
        # A broken labelling join: a fifth of legitimate rows marked as fraud.
        y = np.where((y == 0) & (rng.random(y.size) < 0.2), 1.0, y).astype(np.float32)
    return x, y


def _fit(cfg: TrainConfig, data: Dataset) -> FraudNet:
    torch.manual_seed(cfg.seed)
    xs, ys = _training_rows(cfg, data)
    x, y = torch.from_numpy(xs), torch.from_numpy(ys)
    net = FraudNet(ModelConfig(hidden=cfg.hidden))
    net.fit_normalisation(xs)
    loss_fn = nn.BCEWithLogitsLoss()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    # the same number of optimiser steps whatever the (possibly subsampled) size
    steps = max(1, cfg.epochs * len(data) // cfg.batch_size)
    net.train()
    step = 0
    while step < steps:
        order = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            opt.zero_grad()
            loss = loss_fn(net(x[idx]), y[idx])
            loss.backward()
            opt.step()
            step += 1
            if step >= steps:
                break
    net.eval()
    return net


def reference_traffic() -> Dataset:
    """The fixed sample of normal traffic every version is scored on."""
    return generate(REFERENCE_ROWS, REFERENCE_SEED)


def score_histogram(scores: np.ndarray) -> list[float]:
    """Share of scores per bucket of the service histogram (le=0.05 ... le=1.0)."""
    edges = np.array([-np.inf, *SCORE_BUCKETS[:-1], np.inf])
    counts = np.histogram(scores, bins=edges)[0]
    return [round(float(c) / max(1, scores.size), 6) for c in counts]


def train(cfg: TrainConfig, champion: Champion | None = None) -> TrainResult:
    """Validate the data, fit, choose the threshold, evaluate, and judge the release
    (against ``champion`` when given). Raises DataValidationError on bad data."""
    started = time.process_time()  # CPU time: what training costs, whatever else the machine runs
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    data, report, data_profile = _load_data(cfg, champion.profile if champion else None)
    train_idx, val_idx, test_idx = _split(len(data), cfg.seed)
    net = _fit(cfg, data.subset(train_idx))
    val, test = data.subset(val_idx), data.subset(test_idx)
    val_scores = net.predict_proba(val.matrix())
    threshold = choose_threshold(
        cfg.threshold_policy,
        val.labels,
        val_scores,
        val.columns["amount"],
        review_cost=cfg.review_cost,
        max_fpr=cfg.max_fpr,
        fixed=cfg.threshold,
    )
    test_scores = net.predict_proba(test.matrix())
    evaluation = evaluate_with_ci(
        test.labels,
        test_scores,
        test.columns["amount"],
        test.patterns,
        threshold.value,
        CostModel(cfg.review_cost),
        resamples=cfg.resamples,
        seed=cfg.seed,
    )
    versus = None
    if champion is not None:
        versus = paired_difference(
            test.labels,
            test_scores,
            champion.model.predict_proba(test.matrix()),
            CHAMPION_METRIC,
            resamples=cfg.resamples,
            seed=cfg.seed,
        )
    ref = reference_traffic()
    ref_scores = net.predict_proba(ref.matrix())
    return TrainResult(
        model=net,
        holdout=evaluate(test.labels, test_scores, threshold.value),
        reference=evaluate(ref.labels, ref_scores, threshold.value),
        reference_histogram=score_histogram(ref_scores),
        fingerprint=data.fingerprint(),
        report=report,
        seconds=time.process_time() - started,
        threshold=threshold,
        evaluation=evaluation,
        calibration=calibration_table(test.labels, test_scores),
        release=assess_release(evaluation, champion.tag if champion else None, versus),
        test_scores=test_scores,
        test=test,
        profile=data_profile,
    )


def _promotable(metadata: Any) -> bool:
    release = metadata.get("release")
    return isinstance(release, dict) and release.get("promotable") is True


@dataclass(frozen=True)
class Champion:
    """The model a new version must not be worse than."""

    tag: str
    model: FraudNet
    profile: Mapping[str, Any] | None  # of its training data: the last accepted training set


def find_champion(cfg: TrainConfig) -> Champion | None:
    """``cfg.champion`` if a tag; with "auto" the newest promotable model of the same name."""
    if cfg.champion is None:
        return None
    import bentoml
    from bentoml.exceptions import NotFound

    if cfg.champion != "auto":
        stored = bentoml.models.get(cfg.champion)
    else:
        try:
            stored_models = bentoml.models.list(cfg.name)
        except NotFound:
            return None
        candidates = [
            m for m in stored_models if str(m.tag.version) != cfg.version and _promotable(m.info.metadata)
        ]
        if not candidates:
            return None
        stored = max(candidates, key=lambda m: m.info.creation_time)
    metadata: dict[str, Any] = dict(stored.info.metadata)
    data_profile = (metadata.get("training_data") or {}).get("profile")
    return Champion(str(stored.tag), model_io.load(Path(stored.path)), data_profile)


def code_revision() -> dict[str, Any]:
    """The git commit the code was trained from, and whether the bento's tree had changes."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", ".."], cwd=here, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"revision": os.environ.get("FRAUDMODEL_CODE_REVISION", "unknown"), "dirty": None}
    return {"revision": rev, "dirty": bool(dirty)}


def build_metadata(cfg: TrainConfig, result: TrainResult, weights_sha256: str) -> dict[str, Any]:
    """Everything needed to judge, serve and rebuild the model (JSON-friendly)."""
    variant = f"regressed-{cfg.regressed}" if cfg.regressed else "good"
    return {
        "version": cfg.version,
        "variant": variant,
        "threshold": result.threshold.as_dict(),
        "release": result.release.as_dict(),
        "evaluation": {
            "split": "test",
            "rows": int(result.test.labels.size),
            "frauds": int(result.test.labels.sum()),
            "resamples": cfg.resamples,
            "metrics": {k: v.as_dict() for k, v in result.evaluation.items()},
            "calibration": result.calibration,
        },
        "metrics": {"holdout": result.holdout.as_dict(), "reference": result.reference.as_dict()},
        "reference_score_histogram": {
            "buckets": list(SCORE_BUCKETS),
            "shares": result.reference_histogram,
        },
        "feature_schema": schema_as_dict(),
        "training_data": {
            "fingerprint": result.fingerprint,
            "rows": result.report.rows,
            "seed": cfg.seed,
            "source": str(cfg.data) if cfg.data else "synthetic",
            "validation": result.report.render(),
            "profile": result.profile,
        },
        "hyperparameters": cfg.hyperparameters(),
        "code": code_revision(),
        "weights_sha256": weights_sha256,
        "framework": {
            "torch": str(torch.__version__),
            "numpy": str(np.__version__),
            "python": platform.python_version(),
        },
    }


def _without_none(value: Any) -> Any:
    """BentoML metadata holds no None: drop such entries (recursively)."""
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value if v is not None]
    return value


def save_reference(directory: Path, result: TrainResult) -> None:
    """The reference the serving pods publish (fraud_model_reference_*): the test split's
    scores and monitored features, raw, so any bucket layout can be built from them."""
    arrays: dict[str, Any] = {
        name: result.test.columns[name].astype(np.float32) for name in MONITORED_FEATURES
    }
    arrays["scores"] = result.test_scores.astype(np.float32)
    np.savez_compressed(directory / model_io.REFERENCE_FILE, **arrays)


class VersionExists(Exception):
    """Model versions are immutable: a trained version is never replaced."""


def save_to_store(cfg: TrainConfig, result: TrainResult) -> str:
    """Save into the BentoML model store as ``<name>:<version>``, with its model card;
    returns the tag. Refuses a version that exists (versions are immutable)."""
    import bentoml
    from bentoml.exceptions import NotFound

    tag = f"{cfg.name}:{cfg.version}"
    if cfg.version == "latest":
        raise VersionExists("'latest' is not a version: BentoML resolves it to the newest model")
    try:
        bentoml.models.get(tag)
    except NotFound:
        pass
    else:
        raise VersionExists(f"model {tag} exists and versions are immutable: train a new version")
    with tempfile.TemporaryDirectory() as tmp:
        model_io.save(result.model, Path(tmp))
        weights_sha256 = hashlib.sha256((Path(tmp) / model_io.WEIGHTS_FILE).read_bytes()).hexdigest()
        metadata = _without_none(build_metadata(cfg, result, weights_sha256))
        labels = {
            "version": cfg.version,
            "variant": metadata["variant"],
            "promotable": str(result.release.promotable).lower(),
            "owner": "fraudmodel-operator",
        }
        with bentoml.models.create(tag, labels=labels, metadata=metadata) as ref:
            for item in Path(tmp).iterdir():
                shutil.copy2(item, Path(ref.path) / item.name)
            (Path(ref.path) / CARD_FILE).write_text(render_card(tag, metadata))
            save_reference(Path(ref.path), result)
    return tag


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fraud_detector.train", description=__doc__.split("\n")[0])
    p.add_argument(
        "--version", required=True, help="model version: saved as <name>:<version>, never replaced"
    )
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--rows", type=int, default=50_000)
    p.add_argument("--regressed", choices=REGRESSIONS, default=None, help="train a deliberately bad model")
    p.add_argument("--data", type=Path, default=None, help="train on a CSV instead of generated data")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--name", default="fraud_detector")
    p.add_argument("--threshold-policy", choices=("cost", "fpr", "fixed"), default="cost")
    p.add_argument(
        "--review-cost", type=float, default=5.0, help="cost policy: cost of reviewing a false alarm"
    )
    p.add_argument("--max-fpr", type=float, default=0.01, help="fpr policy: highest false-positive rate")
    p.add_argument("--threshold", type=float, default=0.5, help="fixed policy: the threshold")
    p.add_argument(
        "--champion",
        default="auto",
        help="tag to compare with; 'auto' (default): the newest promotable model of this name; 'none'",
    )
    p.add_argument("--resamples", type=int, default=500, help="bootstrap resamples for the intervals")
    p.add_argument("--no-save", action="store_true", help="train and report only")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cfg = TrainConfig(
        version=args.version,
        seed=args.seed,
        rows=args.rows,
        regressed=args.regressed,
        data=args.data,
        epochs=args.epochs,
        name=args.name,
        threshold_policy=args.threshold_policy,
        review_cost=args.review_cost,
        max_fpr=args.max_fpr,
        threshold=args.threshold,
        champion=None if args.champion == "none" else args.champion,
        resamples=args.resamples,
    )
    try:
        champion = find_champion(cfg)
        result = train(cfg, champion)
    except DataValidationError as exc:
        print(exc.report.render(), file=sys.stderr)
        print("refusing to train on data that failed validation", file=sys.stderr)
        return 2
    kind = "regressed: " + cfg.regressed if cfg.regressed else "good"
    print(f"trained {cfg.name}:{cfg.version} in {result.seconds:.1f}s of CPU ({kind})")
    print(f"  threshold: {result.threshold.as_dict()}")
    for name, est in result.evaluation.items():
        print(f"  {name:24s} {est.render()}")
    if result.release.promotable:
        print(
            "  release gate: passed"
            + (f" (champion {result.release.champion})" if result.release.champion else "")
        )
    else:
        print("  release gate: FAILED, saved as not promotable: " + "; ".join(result.release.failures))
    if not args.no_save:
        try:
            tag = save_to_store(cfg, result)
        except VersionExists as exc:
            print(f"refusing to save: {exc}", file=sys.stderr)
            return 3
        print(f"saved model {tag} (promotable: {str(result.release.promotable).lower()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
