"""Training-data validation against the feature schema.

Training refuses data that fails any check and prints :meth:`Report.render`.
The checks: schema (columns present, none unknown), types, missing values,
ranges (the same ranges the API enforces), duplicate ids, labels in {0, 1} and
a fraud rate within expected bounds.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .data import Dataset
from .schema import FEATURE_NAMES, FEATURES, ID_FIELD, FeatureSpec

__all__ = [
    "LABEL_FIELD",
    "Problem",
    "RawTable",
    "Report",
    "read_csv",
    "to_dataset",
    "validate",
    "write_csv",
]

LABEL_FIELD = "is_fraud"
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


@dataclass(frozen=True)
class Problem:
    check: str  # schema | type | missing | range | duplicate_id | label | label_rate | size
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


@dataclass(frozen=True)
class RawTable:
    """Columns of raw values as read from a file (strings, numbers or None)."""

    columns: Mapping[str, Sequence[Any]]

    @property
    def rows(self) -> int:
        return max((len(v) for v in self.columns.values()), default=0)


def _is_missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, str):
        return v.strip() == "" or v.strip().lower() in {"nan", "null", "none"}
    if isinstance(v, float | np.floating):
        return math.isnan(float(v))
    return False


def _parse(spec: FeatureSpec, v: Any) -> float | None:
    """The numeric value of ``v`` for ``spec``, or None if it is the wrong type."""
    if spec.kind == "bool":
        if isinstance(v, bool | np.bool_):
            return float(v)
        if isinstance(v, str) and v.strip().lower() in _TRUE | _FALSE:
            return 1.0 if v.strip().lower() in _TRUE else 0.0
        if isinstance(v, int | np.integer) and int(v) in (0, 1):
            return float(v)
        return None
    if isinstance(v, bool | np.bool_):
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    if math.isinf(x):
        return None
    if spec.kind == "int" and not x.is_integer():
        return None
    return x


def _examples(rows: list[int], values: Sequence[Any]) -> tuple[str, ...]:
    return tuple(f"row {i}: {values[i]!r}" for i in rows[:3])


def validate(
    table: RawTable | Dataset,
    *,
    label_rate_bounds: tuple[float, float] = (0.002, 0.10),
    min_rows: int = 500,
) -> Report:
    """Check ``table`` against the schema; never raises on bad data."""
    cols = _raw_columns(table)
    n = max((len(v) for v in cols.values()), default=0)
    report = Report(rows=n)
    add = report.problems.append

    if n < min_rows:
        add(Problem("size", "*", n, f"too few rows: need at least {min_rows}"))
    required = (ID_FIELD, *FEATURE_NAMES, LABEL_FIELD)
    for name in required:
        if name not in cols:
            add(Problem("schema", name, n, "required column is absent"))
    for name in cols:
        if name not in required:
            add(Problem("schema", name, n, "unknown column (not in the feature schema)"))
    for name, column in cols.items():
        if len(column) != n:
            add(Problem("schema", name, abs(n - len(column)), f"column has {len(column)} rows, expected {n}"))

    for spec in FEATURES:
        values = cols.get(spec.name)
        if values is None:
            continue
        missing, wrong, out = [], [], []
        for i, v in enumerate(values):
            if _is_missing(v):
                missing.append(i)
                continue
            x = _parse(spec, v)
            if x is None:
                wrong.append(i)
            elif not spec.minimum <= x <= spec.maximum:
                out.append(i)
        if missing:
            add(Problem("missing", spec.name, len(missing), "missing values", _examples(missing, values)))
        if wrong:
            add(Problem("type", spec.name, len(wrong), f"not a valid {spec.kind}", _examples(wrong, values)))
        if out:
            add(
                Problem(
                    "range",
                    spec.name,
                    len(out),
                    f"outside [{spec.minimum:g}, {spec.maximum:g}]",
                    _examples(out, values),
                )
            )

    ids = cols.get(ID_FIELD)
    if ids is not None:
        bad = [i for i, v in enumerate(ids) if _is_missing(v) or not isinstance(v, str | np.str_)]
        if bad:
            add(Problem("missing", ID_FIELD, len(bad), "missing or non-string ids", _examples(bad, ids)))
        seen: dict[Any, int] = {}
        dups = []
        for i, v in enumerate(ids):
            if v in seen:
                dups.append(i)
            else:
                seen[v] = i
        if dups:
            add(Problem("duplicate_id", ID_FIELD, len(dups), "duplicate ids", _examples(dups, ids)))

    labels = cols.get(LABEL_FIELD)
    if labels is not None:
        parsed = [_parse(FeatureSpec(LABEL_FIELD, "bool", 0, 1, ""), v) for v in labels]
        bad = [i for i, x in enumerate(parsed) if x is None]
        if bad:
            add(Problem("label", LABEL_FIELD, len(bad), "labels must be 0 or 1", _examples(bad, labels)))
        good = [x for x in parsed if x is not None]
        if good:
            rate = sum(good) / len(good)
            lo, hi = label_rate_bounds
            if not lo <= rate <= hi:
                add(
                    Problem(
                        "label_rate",
                        LABEL_FIELD,
                        int(sum(good)),
                        f"fraud rate {rate:.4f} outside expected [{lo}, {hi}]",
                    )
                )
    return report


def _raw_columns(table: RawTable | Dataset) -> Mapping[str, Sequence[Any]]:
    if isinstance(table, RawTable):
        return table.columns
    cols: dict[str, Sequence[Any]] = {ID_FIELD: table.ids.tolist()}
    cols.update({k: v.tolist() for k, v in table.columns.items()})
    cols[LABEL_FIELD] = table.labels.tolist()
    return cols


def to_dataset(table: RawTable) -> Dataset:
    """Convert a table that passed :func:`validate` into a :class:`Dataset`."""
    cols = table.columns
    out: dict[str, Any] = {}
    for spec in FEATURES:
        vals = [_parse(spec, v) for v in cols[spec.name]]
        arr = np.array(vals, dtype=np.float64)
        out[spec.name] = (
            arr.astype(bool) if spec.kind == "bool" else arr.astype(np.int64) if spec.kind == "int" else arr
        )
    label_spec = FeatureSpec(LABEL_FIELD, "bool", 0, 1, "")
    labels = np.array([_parse(label_spec, v) for v in cols[LABEL_FIELD]], dtype=np.int8)
    return Dataset(
        ids=np.array([str(v) for v in cols[ID_FIELD]]),
        columns=out,
        labels=labels,
        patterns=np.full(labels.shape[0], "unknown"),
    )


def write_csv(data: Dataset, path: Path) -> None:
    cols = _raw_columns(data)
    names = list(cols)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(names)
        w.writerows(zip(*(cols[n] for n in names), strict=True))


def read_csv(path: Path) -> RawTable:
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, [])
        columns: dict[str, list[Any]] = {h: [] for h in header}
        for row in reader:
            for name, value in zip(header, row, strict=False):
                columns[name].append(value)
            for name in header[len(row) :]:
                columns[name].append(None)
    return RawTable(columns)
