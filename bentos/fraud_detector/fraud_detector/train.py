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
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from . import model as model_io
from .data import Dataset, generate
from .evaluation import SCORE_BUCKETS, Metrics, evaluate
from .model import FraudNet
from .schema import schema_as_dict
from .validation import Report, read_csv, to_dataset, validate

__all__ = [
    "REGRESSIONS",
    "DataValidationError",
    "TrainConfig",
    "TrainResult",
    "main",
    "save_to_store",
    "train",
]

Regression = Literal["miscalibrated", "label_noise"]
REGRESSIONS: tuple[Regression, ...] = ("miscalibrated", "label_noise")
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
    name: str = "fraud_detector"
    threshold: float = 0.5


@dataclass(frozen=True)
class TrainResult:
    model: FraudNet
    holdout: Metrics
    reference: Metrics
    reference_histogram: list[float]
    fingerprint: str
    report: Report
    seconds: float


def _load_data(cfg: TrainConfig) -> tuple[Dataset, Report]:
    if cfg.data is not None:
        table = read_csv(cfg.data)
        report = validate(table)
        if not report.ok:
            raise DataValidationError(report)
        data = to_dataset(table)
    else:
        data = generate(cfg.rows, cfg.seed)
    report = validate(data)
    if not report.ok:
        raise DataValidationError(report)
    return data, report


def _split(n: int, seed: int, holdout: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed + 1).permutation(n)
    k = int(n * holdout)
    return perm[k:], perm[:k]


def _training_rows(cfg: TrainConfig, data: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels as trained on; where the regressions corrupt them."""
    x, y = data.matrix(), data.labels.astype(np.float32)
    rng = np.random.default_rng(cfg.seed + 2)
    if cfg.regressed == "miscalibrated":
        # Negatives undersampled to 1 in 100 "to balance the classes" and the
        # prior never corrected: every score's odds come out about 100x too high.
        keep = (y == 1) | (rng.random(y.size) < 0.01)
        x, y = x[keep], y[keep]
    elif cfg.regressed == "label_noise":
        # A broken labelling join: a fifth of legitimate rows marked as fraud.
        y = np.where((y == 0) & (rng.random(y.size) < 0.2), 1.0, y).astype(np.float32)
    return x, y


def _fit(cfg: TrainConfig, data: Dataset) -> FraudNet:
    torch.manual_seed(cfg.seed)
    xs, ys = _training_rows(cfg, data)
    x, y = torch.from_numpy(xs), torch.from_numpy(ys)
    net = FraudNet()
    net.fit_normalisation(xs)
    loss_fn = nn.BCEWithLogitsLoss()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate, weight_decay=1e-5)
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


def train(cfg: TrainConfig) -> TrainResult:
    """Validate the data, fit, evaluate. Raises DataValidationError on bad data."""
    started = time.perf_counter()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    data, report = _load_data(cfg)
    train_idx, test_idx = _split(len(data), cfg.seed)
    net = _fit(cfg, data.subset(train_idx))
    test = data.subset(test_idx)
    holdout = evaluate(test.labels, net.predict_proba(test.matrix()), cfg.threshold)
    ref = reference_traffic()
    ref_scores = net.predict_proba(ref.matrix())
    return TrainResult(
        model=net,
        holdout=holdout,
        reference=evaluate(ref.labels, ref_scores, cfg.threshold),
        reference_histogram=score_histogram(ref_scores),
        fingerprint=data.fingerprint(),
        report=report,
        seconds=time.perf_counter() - started,
    )


def save_to_store(cfg: TrainConfig, result: TrainResult, *, force: bool = False) -> str:
    """Save into the BentoML model store as ``<name>:<version>``; returns the tag."""
    import bentoml
    from bentoml.exceptions import NotFound

    tag = f"{cfg.name}:{cfg.version}"
    if force:
        with contextlib.suppress(NotFound):
            bentoml.models.delete(tag)
    variant = f"regressed-{cfg.regressed}" if cfg.regressed else "good"
    metadata: dict[str, Any] = {
        "version": cfg.version,
        "variant": variant,
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
        },
        "threshold": cfg.threshold,
        "framework": {"torch": str(torch.__version__)},
    }
    labels = {"version": cfg.version, "variant": variant, "owner": "fraudmodel-operator"}
    with bentoml.models.create(tag, labels=labels, metadata=metadata) as ref:
        model_io.save(result.model, Path(ref.path))
    return tag


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fraud_detector.train", description=__doc__.split("\n")[0])
    p.add_argument("--version", required=True, help="model version: saved as <name>:<version>")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--rows", type=int, default=50_000)
    p.add_argument("--regressed", choices=REGRESSIONS, default=None, help="train a deliberately bad model")
    p.add_argument("--data", type=Path, default=None, help="train on a CSV instead of generated data")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--name", default="fraud_detector")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--force", action="store_true", help="replace an existing model of the same tag")
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
        threshold=args.threshold,
    )
    try:
        result = train(cfg)
    except DataValidationError as exc:
        print(exc.report.render(), file=sys.stderr)
        print("refusing to train on data that failed validation", file=sys.stderr)
        return 2
    print(
        f"trained {cfg.name}:{cfg.version} in {result.seconds:.1f}s "
        f"({'regressed: ' + cfg.regressed if cfg.regressed else 'good'})"
    )
    print(f"  holdout:   {result.holdout.as_dict()}")
    print(f"  reference: {result.reference.as_dict()}")
    if not args.no_save:
        tag = save_to_store(replace(cfg), result, force=args.force)
        print(f"saved model {tag}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
