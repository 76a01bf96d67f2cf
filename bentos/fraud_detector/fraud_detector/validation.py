"""Training-data validation: the schema on pandera, then what breaks fraud models.

Training refuses data that fails any check and prints :meth:`Report.render`, one
line per problem naming the check, the column and how many rows. Training only:
pandas and pandera are not in the serving image (the service validates requests
with pydantic, against the same :data:`~fraud_detector.schema.FEATURES`).

Checks, each with its name in the report:

* the schema, on pandera with ``coerce=False`` (strict types: ``"12"`` is not a
  number, ``1`` is not a bool, ``1.5`` is not an int): ``schema`` (columns present,
  none unknown), ``type``, ``missing``, ``range`` (the ranges the API enforces),
  ``duplicate_id``, ``label`` (0 or 1), ``not_constant`` (every feature varies);
* consistency between features: ``txn_count_1h <= txn_count_24h`` and
  ``amount_sum_24h >= amount`` (the 24 h sum includes the transaction) on every row;
* ``label_rate`` within [0.2 %, 10 %]; ``duplicate_rows``: at most 1 % of rows
  repeat another row's features and label under a new id;
* ``leakage``: no single feature separates the labels almost perfectly
  (univariate ROC-AUC >= 0.99 or <= 0.01: a label copied into a feature);
  ``label_signal``: some feature must carry signal (best univariate |AUC - 0.5|
  >= 0.1: labels shuffled or joined to the wrong rows carry none);
* against the last accepted training set (its :func:`profile`, stored with the
  champion model): ``drift`` (per-feature PSI over the reference's decile bins
  above 0.25: a unit change, a broken pipeline) and ``label_association`` (a
  feature's univariate AUC moved by more than 0.15).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from .data import Dataset
from .evaluation import roc_auc
from .schema import FEATURE_NAMES, FEATURES, ID_FIELD, ID_MAX_LENGTH

__all__ = [
    "LABEL_FIELD",
    "SCHEMA",
    "Problem",
    "Report",
    "profile",
    "read_csv",
    "to_dataset",
    "to_frame",
    "validate",
    "write_csv",
]

LABEL_FIELD = "is_fraud"
LABEL_RATE_BOUNDS = (0.002, 0.10)
MIN_ROWS = 500
MAX_DUPLICATE_ROW_SHARE = 0.01
LEAKAGE_AUC = 0.99
MIN_SIGNAL = 0.10  # best univariate |AUC - 0.5|
MAX_FEATURE_PSI = 0.25
MAX_AUC_SHIFT = 0.15


@dataclass(frozen=True)
class Problem:
    check: str
    field: str
    count: int
    message: str
    examples: tuple[str, ...] = ()


@dataclass
class Report:
    rows: int
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def render(self) -> str:
        if self.ok:
            return f"data validation passed: {self.rows} rows, {len(FEATURES)} features"
        lines = [f"data validation FAILED: {len(self.problems)} problem(s) in {self.rows} rows"]
        for p in self.problems:
            ex = f" e.g. {', '.join(p.examples)}" if p.examples else ""
            lines.append(f"  - [{p.check}] {p.field}: {p.message} ({p.count} row(s)){ex}")
        return "\n".join(lines)


def _is_number(s: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)


def _column(spec: Any) -> pa.Column:
    varies = pa.Check(lambda s: s.nunique() > 1, element_wise=False, name="not_constant")
    if spec.kind == "bool":
        return pa.Column(bool, checks=[varies], nullable=False)
    in_range = pa.Check.in_range(spec.minimum, spec.maximum, name="range")
    if spec.kind == "int":
        return pa.Column("int64", checks=[in_range, varies], nullable=False)
    # floats: any numeric dtype (a whole amount may be written as 42), never text or bools
    number = pa.Check(_is_number, element_wise=False, name="type")
    finite = pa.Check(lambda s: np.isfinite(s.astype("float64")), name="range")
    return pa.Column(None, checks=[number, finite, in_range, varies], nullable=False)


SCHEMA = pa.DataFrameSchema(
    {
        ID_FIELD: pa.Column(str, checks=[pa.Check.str_length(1, ID_MAX_LENGTH)], nullable=False, unique=True),
        **{spec.name: _column(spec) for spec in FEATURES},
        LABEL_FIELD: pa.Column("int64", checks=[pa.Check.isin([0, 1], name="label")], nullable=False),
    },
    checks=[
        pa.Check(lambda df: df["txn_count_1h"] <= df["txn_count_24h"], name="txn_count_1h <= txn_count_24h"),
        pa.Check(lambda df: df["amount_sum_24h"] >= df["amount"] - 0.01, name="amount_sum_24h >= amount"),
    ],
    strict=True,
    coerce=False,
)
"""The training data's schema (types strict: coerce=False)."""

_CHECK_NAMES = {
    "column_in_schema": "schema",
    "column_in_dataframe": "schema",
    "not_nullable": "missing",
    "field_uniqueness": "duplicate_id",
    "str_length": "range",
    "in_range": "range",
    "isin": "label",
}


def _check_name(raw: str, column: str | None) -> tuple[str, str]:
    if raw.startswith("dtype(") or raw == "type":
        return "type", column or "*"
    if "<=" in raw or ">=" in raw:
        return "consistency", raw
    for prefix, name in _CHECK_NAMES.items():
        if raw.startswith(prefix):
            return name, column or "*"
    return raw.split("(")[0], column or "*"


def _schema_problems(frame: pd.DataFrame) -> list[Problem]:
    try:
        SCHEMA.validate(frame, lazy=True)
    except SchemaErrors as exc:
        cases = exc.failure_cases
    else:
        return []
    problems = []
    cases = cases.assign(column=cases["column"].astype(object).where(cases["column"].notna(), None))
    for (raw_column, raw_check), group in cases.groupby(["column", "check"], dropna=False, sort=False):
        column = None if raw_column is None or raw_column != raw_column else str(raw_column)
        check, name = _check_name(str(raw_check), column)
        if check == "schema" and column is None:
            column = str(group["failure_case"].iloc[0])
            name = column
        index = group["index"].dropna()
        count = int(index.size) if index.size else (len(frame) if check == "consistency" else 1)
        examples = tuple(
            f"row {int(i)}: {v!r}"
            for i, v in zip(index[:3], group.loc[index.index[:3], "failure_case"], strict=False)
        )
        problems.append(Problem(check, name, count, _message(check, name, str(raw_check)), examples))
    return problems


def _message(check: str, column: str, raw: str) -> str:
    spec = next((f for f in FEATURES if f.name == column), None)
    return {
        "schema": "column absent, or not in the feature schema",
        "type": f"not a valid {spec.kind}" if spec else f"wrong type ({raw})",
        "missing": "missing values",
        "range": f"outside [{spec.minimum:g}, {spec.maximum:g}]" if spec else "out of range",
        "duplicate_id": "duplicate ids",
        "label": "labels must be 0 or 1",
        "not_constant": "the same value on every row",
        "consistency": "violated",
    }.get(check, raw)


def to_frame(data: Dataset) -> pd.DataFrame:
    """A Dataset as the training table: id, features, label."""
    frame = pd.DataFrame({ID_FIELD: data.ids.astype(object)})
    for name in FEATURE_NAMES:
        frame[name] = data.columns[name]
    frame[LABEL_FIELD] = data.labels.astype(np.int64)
    return frame


def _univariate_auc(frame: pd.DataFrame) -> dict[str, float]:
    y = frame[LABEL_FIELD].to_numpy()
    return {name: roc_auc(y, frame[name].to_numpy(dtype=np.float64)) for name in FEATURE_NAMES}


def _bins(values: np.ndarray) -> list[float]:
    """Inner edges of the decile bins (fewer where values repeat)."""
    return sorted({float(q) for q in np.quantile(values, np.linspace(0.1, 0.9, 9))})


def _shares(values: np.ndarray, edges: list[float]) -> np.ndarray:
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    return counts / max(1, values.size)


def profile(frame: pd.DataFrame) -> dict[str, Any]:
    """What later training sets are compared with: per feature, decile bins and shares
    and the univariate ROC-AUC; the fraud rate. Small and JSON-friendly (model metadata)."""
    aucs = _univariate_auc(frame)
    features = {}
    for name in FEATURE_NAMES:
        values = frame[name].to_numpy(dtype=np.float64)
        edges = _bins(values)
        features[name] = {
            "edges": [round(e, 6) for e in edges],
            "shares": [round(float(x), 6) for x in _shares(values, edges)],
            "median": float(np.median(values)),
            "auc": round(aucs[name], 4),
        }
    return {"rows": len(frame), "label_rate": float(frame[LABEL_FIELD].mean()), "features": features}


def _psi(expected: np.ndarray, actual: np.ndarray) -> float:
    e, a = np.clip(expected, 1e-4, None), np.clip(actual, 1e-4, None)
    return float(np.sum((a - e) * np.log(a / e)))


def _statistical_problems(frame: pd.DataFrame, reference: Mapping[str, Any] | None) -> list[Problem]:
    problems: list[Problem] = []
    n = len(frame)
    rate = float(frame[LABEL_FIELD].mean())
    lo, hi = LABEL_RATE_BOUNDS
    if not lo <= rate <= hi:
        problems.append(
            Problem(
                "label_rate",
                LABEL_FIELD,
                int(frame[LABEL_FIELD].sum()),
                f"fraud rate {rate:.4f} outside [{lo}, {hi}]",
            )
        )
    duplicated = int(frame.duplicated(subset=[*FEATURE_NAMES, LABEL_FIELD]).sum())
    if duplicated > MAX_DUPLICATE_ROW_SHARE * n:
        problems.append(
            Problem(
                "duplicate_rows",
                "*",
                duplicated,
                f"{duplicated / n:.1%} of rows repeat another row's features and label under a new id "
                f"(at most {MAX_DUPLICATE_ROW_SHARE:.0%})",
            )
        )
    if rate == 0.0 or rate == 1.0:
        return problems
    aucs = _univariate_auc(frame)
    for name, auc in aucs.items():
        if auc >= LEAKAGE_AUC or auc <= 1 - LEAKAGE_AUC:
            problems.append(
                Problem(
                    "leakage",
                    name,
                    n,
                    f"alone separates the labels (ROC-AUC {auc:.3f}): a label leaked into it?",
                )
            )
    best = max(aucs, key=lambda k: abs(aucs[k] - 0.5))
    if abs(aucs[best] - 0.5) < MIN_SIGNAL:
        problems.append(
            Problem(
                "label_signal",
                LABEL_FIELD,
                n,
                f"no feature carries signal (best: {best} ROC-AUC {aucs[best]:.3f}): labels shuffled or misjoined?",
            )
        )
    if reference is None:
        return problems
    for name in FEATURE_NAMES:
        ref = reference["features"][name]
        values = frame[name].to_numpy(dtype=np.float64)
        psi = _psi(np.array(ref["shares"]), _shares(values, ref["edges"]))
        if psi > MAX_FEATURE_PSI:
            median = float(np.median(values))
            ratio = f"; median {median:g} vs {ref['median']:g}" if ref["median"] else ""
            problems.append(
                Problem(
                    "drift",
                    name,
                    n,
                    f"PSI {psi:.2f} against the last accepted training set (> {MAX_FEATURE_PSI}){ratio}",
                )
            )
        shift = aucs[name] - float(ref["auc"])
        if abs(shift) > MAX_AUC_SHIFT:
            problems.append(
                Problem(
                    "label_association",
                    name,
                    n,
                    f"ROC-AUC with the label {aucs[name]:.3f}, was {ref['auc']:.3f} in the last accepted training set",
                )
            )
    return problems


def validate(
    data: pd.DataFrame | Dataset, reference: Mapping[str, Any] | None = None, *, min_rows: int = MIN_ROWS
) -> Report:
    """Check a training table; ``reference``: the :func:`profile` of the last accepted one.
    Never raises on bad data: every problem is in the report."""
    frame = to_frame(data) if isinstance(data, Dataset) else data
    report = Report(rows=len(frame))
    if len(frame) < min_rows:
        report.problems.append(Problem("size", "*", len(frame), f"too few rows: need at least {min_rows}"))
    report.problems.extend(_schema_problems(frame))
    if not report.problems:  # statistics only over data of the right shape and types
        report.problems.extend(_statistical_problems(frame, reference))
    return report


def to_dataset(frame: pd.DataFrame) -> Dataset:
    """A table that passed :func:`validate` as a :class:`Dataset`."""
    columns = {}
    for spec in FEATURES:
        col = frame[spec.name].to_numpy()
        columns[spec.name] = col.astype(
            bool if spec.kind == "bool" else np.int64 if spec.kind == "int" else np.float64
        )
    labels = frame[LABEL_FIELD].to_numpy().astype(np.int8)
    return Dataset(
        ids=frame[ID_FIELD].to_numpy().astype(str),
        columns=columns,
        labels=labels,
        patterns=np.full(labels.shape[0], "unknown"),
    )


def write_csv(data: Dataset, path: Path) -> None:
    to_frame(data).to_csv(path, index=False)


def read_csv(path: Path) -> pd.DataFrame:
    """The CSV with pandas' type inference and nothing coerced: a text value in a
    number column leaves the column text, which the schema then refuses."""
    return pd.read_csv(path, dtype={ID_FIELD: str}, keep_default_na=True)
