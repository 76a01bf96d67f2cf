from __future__ import annotations

import json
import re
from typing import Any

import pytest

from fraud_detector.data import payloads
from fraud_detector.edge import PREDICT, PREDICT_BATCH, Rejection, validate_body
from fraud_detector.settings import Settings

S = Settings()
VALID = payloads(1, seed=5)[0]


def test_defaults_from_empty_environment() -> None:
    s = Settings.from_env({})
    assert (s.model_name, s.model_tag, s.version, s.track, s.threshold) == (
        "fraud_detector",
        None,
        None,
        "stable",
        None,  # the model's own threshold
    )


def test_operator_environment_is_read() -> None:
    s = Settings.from_env(
        {
            "FRAUDMODEL_NAME": "m",
            "FRAUDMODEL_VERSION": "v9",
            "FRAUDMODEL_TRACK": "canary",
            "FRAUDMODEL_THRESHOLD": "0.7",
            "FRAUDMODEL_MODEL_TAG": "m:v9",
            "FRAUDMODEL_WORKERS": "2",
            "FRAUDMODEL_ADAPTIVE_BATCHING": "true",
            "FRAUDMODEL_TRACING": "1",
        }
    )
    assert (s.model_name, s.version, s.track, s.threshold, s.model_tag, s.workers) == (
        "m",
        "v9",
        "canary",
        0.7,
        "m:v9",
        2,
    )
    assert (s.adaptive_batching, s.tracing) == (True, True)
    assert (Settings.from_env({}).adaptive_batching, Settings.from_env({}).tracing) == (False, False)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FRAUDMODEL_THRESHOLD": "high"}, "FRAUDMODEL_THRESHOLD"),
        ({"FRAUDMODEL_THRESHOLD": "1.5"}, "FRAUDMODEL_THRESHOLD"),
        ({"FRAUDMODEL_THRESHOLD": "nan"}, "FRAUDMODEL_THRESHOLD"),
        ({"FRAUDMODEL_TRACK": "blue"}, "FRAUDMODEL_TRACK"),
        ({"FRAUDMODEL_WORKERS": "0"}, "FRAUDMODEL_WORKERS"),
        ({"FRAUDMODEL_MAX_LATENCY_MS": "soon"}, "FRAUDMODEL_MAX_LATENCY_MS"),
        ({"FRAUDMODEL_TRACING": "yes"}, "FRAUDMODEL_TRACING"),
    ],
    ids=["threshold-text", "threshold-above-1", "threshold-nan", "track", "workers", "latency", "tracing"],
)
def test_invalid_environment_refuses_to_start(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings.from_env(env)


def _with(**changes: Any) -> dict[str, Any]:
    body = dict(VALID)
    for k, v in changes.items():
        if v is KeyError:
            body.pop(k)
        else:
            body[k] = v
    return body


EDGE_CASES: list[tuple[str, str, bytes, int, str, str]] = [
    ("valid", PREDICT, json.dumps(VALID).encode(), 0, "", ""),
    ("missing", PREDICT, json.dumps(_with(amount=KeyError)).encode(), 422, "missing_field", "amount"),
    ("string number", PREDICT, json.dumps(_with(amount="12.5")).encode(), 422, "wrong_type", "amount"),
    (
        "bool as int",
        PREDICT,
        json.dumps(_with(txn_count_1h=True)).encode(),
        422,
        "wrong_type",
        "txn_count_1h",
    ),
    ("int as bool", PREDICT, json.dumps(_with(geo_mismatch=1)).encode(), 422, "wrong_type", "geo_mismatch"),
    ("null", PREDICT, json.dumps(_with(amount=None)).encode(), 422, "wrong_type", "amount"),
    ("nan", PREDICT, json.dumps(_with(amount=float("nan"))).encode(), 422, "not_finite", "amount"),
    ("infinity", PREDICT, json.dumps(_with(amount=float("inf"))).encode(), 422, "not_finite", "amount"),
    ("negative", PREDICT, json.dumps(_with(amount=-1.0)).encode(), 422, "out_of_range", "amount"),
    ("hour 24", PREDICT, json.dumps(_with(hour_of_day=24)).encode(), 422, "out_of_range", "hour_of_day"),
    (
        "empty id",
        PREDICT,
        json.dumps(_with(transaction_id="")).encode(),
        422,
        "out_of_range",
        "transaction_id",
    ),
    ("unknown field", PREDICT, json.dumps(_with(amont=3.0)).encode(), 422, "unknown_field", "amont"),
    ("not json", PREDICT, b"{amount: 3", 400, "malformed_json", "$"),
    ("not utf-8", PREDICT, b"\xff\xfe", 400, "malformed_json", "$"),
    ("array body", PREDICT, b"[]", 422, "wrong_type", "$"),
    ("nested 100,000 deep", PREDICT, b"[" * 100_000 + b"]" * 100_000, 400, "nesting_too_deep", "$"),
    (
        "object nested deep",
        PREDICT_BATCH,
        b'{"a":' * 5_000 + b"1" + b"}" * 5_000,
        400,
        "nesting_too_deep",
        "$",
    ),
    ("batch valid", PREDICT_BATCH, json.dumps({"transactions": [VALID, VALID]}).encode(), 0, "", ""),
    ("batch not object", PREDICT_BATCH, json.dumps([VALID]).encode(), 422, "wrong_type", "$"),
    ("batch missing key", PREDICT_BATCH, b"{}", 422, "missing_field", "transactions"),
    ("batch not list", PREDICT_BATCH, b'{"transactions": 3}', 422, "wrong_type", "transactions"),
    ("batch extra key", PREDICT_BATCH, b'{"transactions": [], "x": 1}', 422, "unknown_field", "x"),
    ("batch empty key", PREDICT_BATCH, b'{"": null}', 422, "unknown_field", '""'),
    ("empty key", PREDICT, json.dumps({**VALID, "": 1}).encode(), 422, "unknown_field", '""'),
    (
        "batch bad item",
        PREDICT_BATCH,
        json.dumps({"transactions": [VALID, _with(amount=-5.0)]}).encode(),
        422,
        "out_of_range",
        "transactions[1].amount",
    ),
    (
        "batch too large",
        PREDICT_BATCH,
        json.dumps({"transactions": [VALID] * 1001}).encode(),
        422,
        "batch_too_large",
        "transactions",
    ),
]


@pytest.mark.parametrize(
    ("name", "path", "body", "status", "reason", "field"), EDGE_CASES, ids=[c[0] for c in EDGE_CASES]
)
def test_edge_validation(name: str, path: str, body: bytes, status: int, reason: str, field: str) -> None:
    if not status:
        assert len(validate_body(path, body, S)) >= 1
        return
    with pytest.raises(Rejection) as info:
        validate_body(path, body, S)
    rej = info.value
    assert (rej.status, rej.reason, rej.errors[0]["field"]) == (status, reason, field)
    rendered = json.loads(rej.body())
    assert rendered["field"] == field
    assert field in rendered["message"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FRAUDMODEL_FAULT_ERROR_RATE": "2"}, "FRAUDMODEL_FAULT_ERROR_RATE='2' must be within [0, 1]"),
        ({"FRAUDMODEL_FAULT_ERROR_RATE": "often"}, "is not a number"),
        ({"FRAUDMODEL_FAULT_DELAY_MS": "-5"}, "FRAUDMODEL_FAULT_DELAY_MS=-5 must be >= 0"),
    ],
    ids=["rate-over-one", "rate-not-a-number", "negative-delay"],
)
def test_fault_settings_are_validated(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Settings.from_env(env)


def test_faults_are_off_by_default() -> None:
    settings = Settings.from_env({})
    assert (settings.fault_error_rate, settings.fault_delay_ms) == (0.0, 0)
