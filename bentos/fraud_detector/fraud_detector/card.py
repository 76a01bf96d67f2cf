"""The model card: one markdown page per model version, generated from its metadata.

Saved beside the weights as ``MODEL_CARD.md`` when a model is trained; print one
from the store with ``python -m fraud_detector.card fraud_detector:v1``.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

__all__ = ["CARD_FILE", "render_card"]

CARD_FILE = "MODEL_CARD.md"

_LABELS = {
    "roc_auc": "ROC-AUC",
    "pr_auc": "PR-AUC (average precision)",
    "recall": "recall at the threshold",
    "precision": "precision at the threshold",
    "amount_weighted_recall": "amount-weighted recall (share of fraud amount caught)",
    "flag_rate": "flag rate",
    "cost_per_1k": "expected cost per 1,000 transactions",
    "brier": "Brier score",
    "ece": "expected calibration error (10 equal-count bins)",
    "calibration_ratio": "mean score / fraud rate (1 = calibrated)",
}


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def _estimate(e: Mapping[str, float]) -> str:
    return f"{e['value']:.3f} | {e['low']:.3f} - {e['high']:.3f}"


def render_card(tag: str, meta: Mapping[str, Any]) -> str:
    """The card of model ``tag`` from its metadata (a pure function of both)."""
    release = meta.get("release", {})
    threshold = meta.get("threshold", {})
    evaluation = meta.get("evaluation", {})
    data = meta.get("training_data", {})
    hp = meta.get("hyperparameters", {})
    code = meta.get("code", {})
    promotable = release.get("promotable")
    verdict = "**promotable**" if promotable else "**NOT promotable** (the service refuses readiness for it)"
    lines = [
        f"# Model card: {tag}",
        "",
        f"Fraud score for card transactions (PyTorch MLP on {len(meta.get('feature_schema', {}).get('features', []))} "
        f"features, feature schema {meta.get('feature_schema', {}).get('version', '?')}). Variant: "
        f"{meta.get('variant', '?')}. Release gate: {verdict}.",
        "",
        "## Decision threshold",
        "",
        f"{_fmt(threshold.get('value'))}, chosen by the `{threshold.get('policy')}` policy "
        f"({', '.join(f'{k}={_fmt(v)}' for k, v in threshold.get('params', {}).items())}) on the validation split. "
        "Served unless the FraudModel sets `spec.model.threshold`.",
        "",
        f"## Evaluation (test split: {evaluation.get('rows')} transactions, {evaluation.get('frauds')} frauds; "
        f"95% stratified bootstrap, {evaluation.get('resamples')} resamples)",
        "",
        "| metric | value | 95% CI |",
        "|---|---:|---:|",
    ]
    for name, est in evaluation.get("metrics", {}).items():
        label = _LABELS.get(
            name, name.replace("recall_", "recall, pattern ") if name.startswith("recall_") else name
        )
        lines.append(f"| {label} | {_estimate(est)} |")
    lines += ["", "### Calibration (equal-count bins of the test scores)", ""]
    lines += ["| scores | mean predicted | observed fraud rate | rows |", "|---|---:|---:|---:|"]
    for row in evaluation.get("calibration", []):
        lines.append(
            f"| {row['score_low']:.2g} - {row['score_high']:.2g} | {row['predicted']:.4f} | "
            f"{row['observed']:.4f} | {row['rows']} |"
        )
    lines += [
        "",
        "## Release gate",
        "",
        "| check | value | 95% CI | threshold | passed |",
        "|---|---:|---:|---:|---|",
    ]
    for check in release.get("checks", []):
        lines.append(
            f"| {check['check']} | {_estimate(check['value'])} | {check['threshold']} | "
            f"{'yes' if check['passed'] else '**no**'} |"
        )
    for failure in release.get("failures", []):
        lines.append(f"\nFailed: {failure}")
    lines += [
        "",
        "## Training data",
        "",
        f"- source: {data.get('source')}, {data.get('rows')} rows, seed {data.get('seed')}",
        f"- fingerprint (sha256 of ids, features, labels): `{data.get('fingerprint')}`",
    ]
    if data.get("validation"):
        lines.append(f"- validation: {data['validation']}")
    lines += ["", "## Rebuild", "", "| | |", "|---|---|"]
    for key, value in hp.items():
        lines.append(f"| {key} | {_fmt(value)} |")
    lines += [
        f"| code revision | `{code.get('revision')}`{' (uncommitted changes)' if code.get('dirty') else ''} |",
        f"| weights sha256 | `{meta.get('weights_sha256')}` |",
        f"| framework | {', '.join(f'{k} {v}' for k, v in meta.get('framework', {}).items())} |",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import bentoml

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m fraud_detector.card NAME:VERSION", file=sys.stderr)
        return 64
    model = bentoml.models.get(args[0])
    print(render_card(str(model.tag), model.info.metadata))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
