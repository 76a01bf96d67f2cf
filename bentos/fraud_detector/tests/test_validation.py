"""Training-data validation: every defect refused with a report naming the check and the column."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fraud_detector import train
from fraud_detector.data import generate
from fraud_detector.validation import (
    LABEL_FIELD,
    profile,
    read_csv,
    to_dataset,
    to_frame,
    validate,
    write_csv,
)

Corrupt = Callable[[pd.DataFrame], pd.DataFrame]


@functools.cache
def _clean() -> pd.DataFrame:
    return to_frame(generate(20_000, seed=21))


@functools.cache
def _reference() -> dict:  # type: ignore[type-arg]
    """The profile of the last accepted training set (another draw of the same population)."""
    return profile(to_frame(generate(20_000, seed=22)))


def _set(name: str, i: int, value: object) -> Corrupt:
    def f(df: pd.DataFrame) -> pd.DataFrame:
        column = df[name].astype(object)
        column.iloc[i] = value
        return df.assign(**{name: column.infer_objects()})

    return f


def _with(**columns: Callable[[pd.DataFrame], object]) -> Corrupt:
    return lambda df: df.assign(**{k: f(df) for k, f in columns.items()})


def _shuffled_labels(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(**{LABEL_FIELD: np.random.default_rng(3).permutation(df[LABEL_FIELD].to_numpy())})


def _duplicated_under_new_ids(df: pd.DataFrame) -> pd.DataFrame:
    copy = df.assign(transaction_id=[f"copy-{i}" for i in range(len(df))])
    return pd.concat([df, copy], ignore_index=True)


SCHEMA_CASES = [
    ("missing column", lambda df: df.drop(columns=["amount"]), "schema", "amount"),
    ("unknown column", _with(favourite_colour=lambda df: "red"), "schema", "favourite_colour"),
    ("missing value", _set("amount", 3, None), "missing", "amount"),
    ("nan value", _set("amount", 3, float("nan")), "missing", "amount"),
    ("text in a number", _set("txn_count_1h", 5, "lots"), "type", "txn_count_1h"),
    ("fraction in an int", _set("txn_count_1h", 5, 1.5), "type", "txn_count_1h"),
    ("bool that is not", _set("geo_mismatch", 2, "maybe"), "type", "geo_mismatch"),
    ("infinite", _set("amount", 1, float("inf")), "range", "amount"),
    ("negative amount", _set("amount", 7, -3.0), "range", "amount"),
    ("hour 24", _set("hour_of_day", 7, 24), "range", "hour_of_day"),
    (
        "duplicate id",
        lambda df: _set("transaction_id", 9, df["transaction_id"].iloc[0])(df),
        "duplicate_id",
        "transaction_id",
    ),
    ("label 2", _set(LABEL_FIELD, 4, 2), "label", LABEL_FIELD),
    ("no fraud at all", _with(is_fraud=lambda df: 0), "label_rate", LABEL_FIELD),
]

# The broken datasets of issue 13: each passed the old hand-written validation.
BROKEN = [
    (
        "amounts x10 (unit change)",
        _with(amount=lambda df: df["amount"] * 10, amount_sum_24h=lambda df: df["amount_sum_24h"] * 10),
        "drift",
        "amount",
    ),
    ("leaked label", _with(chargebacks_180d=lambda df: 3 * df[LABEL_FIELD]), "leakage", "chargebacks_180d"),
    (
        "constant column",
        _with(distance_from_home_km=lambda df: 12.5),
        "not_constant",
        "distance_from_home_km",
    ),
    (
        "1 h count above 24 h everywhere",
        _with(txn_count_1h=lambda df: df["txn_count_24h"] + 1),
        "consistency",
        "txn_count_1h <= txn_count_24h",
    ),
    (
        "24 h sum below the amount everywhere",
        _with(amount_sum_24h=lambda df: df["amount"] - 1),
        "consistency",
        "amount_sum_24h >= amount",
    ),
    ("shuffled labels", _shuffled_labels, "label_signal", LABEL_FIELD),
    ("hour_of_day all 0", _with(hour_of_day=lambda df: 0), "not_constant", "hour_of_day"),
    ("every row duplicated under new ids", _duplicated_under_new_ids, "duplicate_rows", "*"),
]


@pytest.mark.parametrize(
    ("name", "corrupt", "check", "field"), SCHEMA_CASES + BROKEN, ids=[c[0] for c in SCHEMA_CASES + BROKEN]
)
def test_each_defect_is_refused_naming_the_check(name: str, corrupt: Corrupt, check: str, field: str) -> None:
    report = validate(corrupt(_clean().copy()), _reference())
    assert not report.ok
    assert (check, field) in {(p.check, p.field) for p in report.problems}, report.render()
    assert f"[{check}] {field}" in report.render()


def test_shuffled_labels_also_move_the_label_association_of_the_reference() -> None:
    report = validate(_shuffled_labels(_clean().copy()), _reference())
    assert "label_association" in {p.check for p in report.problems}, report.render()


def test_clean_table_passes_with_and_without_a_reference() -> None:
    for reference in (None, _reference()):
        report = validate(_clean(), reference)
        assert report.ok, report.render()
        assert "passed" in report.render()


def test_csv_round_trip(tmp_path: Path) -> None:
    d = generate(1_000, seed=2)
    path = tmp_path / "d.csv"
    write_csv(d, path)
    table = read_csv(path)
    assert validate(table).ok, validate(table).render()
    assert to_dataset(table).fingerprint() == d.fingerprint()


def test_training_refuses_bad_data_and_prints_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.csv"
    write_csv(generate(1_000, seed=2), path)
    text = path.read_text().splitlines()
    header = text[0].split(",")
    row = text[5].split(",")
    row[header.index("hour_of_day")] = "31"
    text[5] = ",".join(row)
    text.append(text[1])  # a duplicate id
    path.write_text("\n".join(text) + "\n")

    assert train.main(["--version", "x", "--data", str(path), "--no-save", "--champion", "none"]) == 2
    err = capsys.readouterr().err
    assert "data validation FAILED" in err
    assert "[range] hour_of_day" in err
    assert "[duplicate_id] transaction_id" in err
    assert "refusing to train" in err
