from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fraud_detector import train
from fraud_detector.data import generate
from fraud_detector.validation import LABEL_FIELD, RawTable, read_csv, to_dataset, validate, write_csv

Cols = dict[str, list[Any]]


def _table(rows: int = 2_000) -> Cols:
    d = generate(rows, seed=21)
    cols: Cols = {"transaction_id": d.ids.tolist()}
    cols.update({k: v.tolist() for k, v in d.columns.items()})
    cols[LABEL_FIELD] = d.labels.tolist()
    return cols


def _set(name: str, i: int, value: Any) -> Callable[[Cols], None]:
    def f(c: Cols) -> None:
        c[name][i] = value

    return f


def _drop(name: str) -> Callable[[Cols], None]:
    return lambda c: c.pop(name) and None


def _extra(c: Cols) -> None:
    c["favourite_colour"] = ["red"] * len(c["amount"])


def _no_fraud(c: Cols) -> None:
    c[LABEL_FIELD] = [0] * len(c[LABEL_FIELD])


CASES = [
    ("missing column", _drop("amount"), "schema", "amount"),
    ("unknown column", _extra, "schema", "favourite_colour"),
    ("missing value", _set("amount", 3, None), "missing", "amount"),
    ("nan value", _set("amount", 3, float("nan")), "missing", "amount"),
    ("text in a number", _set("txn_count_1h", 5, "lots"), "type", "txn_count_1h"),
    ("fraction in an int", _set("txn_count_1h", 5, 1.5), "type", "txn_count_1h"),
    ("bool that is not", _set("geo_mismatch", 2, "maybe"), "type", "geo_mismatch"),
    ("infinite", _set("amount", 1, float("inf")), "type", "amount"),
    ("negative amount", _set("amount", 7, -3.0), "range", "amount"),
    ("hour 24", _set("hour_of_day", 7, 24), "range", "hour_of_day"),
    (
        "duplicate id",
        lambda c: _set("transaction_id", 9, c["transaction_id"][0])(c),
        "duplicate_id",
        "transaction_id",
    ),
    ("label 2", _set(LABEL_FIELD, 4, 2), "label", LABEL_FIELD),
    ("no fraud at all", _no_fraud, "label_rate", LABEL_FIELD),
]


@pytest.mark.parametrize(("name", "corrupt", "check", "field"), CASES, ids=[c[0] for c in CASES])
def test_each_defect_is_reported(name: str, corrupt: Callable[[Cols], None], check: str, field: str) -> None:
    cols = _table()
    corrupt(cols)
    report = validate(RawTable(cols))
    assert not report.ok
    assert (check, field) in {(p.check, p.field) for p in report.problems}, report.render()
    assert field in report.render()


def test_clean_table_passes_and_converts() -> None:
    report = validate(RawTable(_table()))
    assert report.ok, report.render()
    assert "passed" in report.render()


def test_csv_round_trip(tmp_path: Path) -> None:
    d = generate(1_000, seed=2)
    path = tmp_path / "d.csv"
    write_csv(d, path)
    table = read_csv(path)
    assert validate(table).ok
    assert to_dataset(table).fingerprint() == d.fingerprint()


def test_training_refuses_bad_data_and_prints_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.csv"
    write_csv(generate(1_000, seed=2), path)
    text = path.read_text().splitlines()
    header = text[0].split(",")
    row = text[5].split(",")
    row[header.index("hour_of_day")] = "31"
    text[5] = ",".join(row)
    text.append(text[1])  # a duplicate id
    path.write_text("\n".join(text) + "\n")

    assert train.main(["--version", "x", "--data", str(path), "--no-save"]) == 2
    err = capsys.readouterr().err
    assert "data validation FAILED" in err
    assert "hour_of_day" in err
    assert "duplicate" in err
    assert "refusing to train" in err
