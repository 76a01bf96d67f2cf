"""The service through HTTP, against real `bentoml serve` processes."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import httpx
import pytest

from fraud_detector.data import payloads
from fraud_detector.metrics import score_buckets

from .conftest import BAD, GOOD, Server, StartServer

pytestmark = pytest.mark.server

BODIES = payloads(50, seed=77)
FRAUDY = {
    **BODIES[0],
    "transaction_id": "fraudy",
    "amount": 2500.0,
    "amount_sum_24h": 2600.0,
    "geo_mismatch": True,
    "distance_from_home_km": 4000.0,
    "is_new_device": True,
    "account_age_days": 3,
    "chargebacks_180d": 3,
    "card_present": False,
}


def metric(server: Server, name: str, **labels: str) -> float:
    """The value of one sample on /metrics (0 if absent)."""
    text = httpx.get(server.url + "/metrics").text
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}\{{(.*)\}} (\S+)$", line)
        if not m:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total


def post(server: Server, path: str, body: Any, **kw: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = kw.pop("headers", {"content-type": "application/json"})
    return httpx.post(server.url + path, content=content, headers=headers, timeout=10, **kw)


def test_probes(server: Server) -> None:
    assert httpx.get(server.url + "/livez").status_code == 200
    assert httpx.get(server.url + "/readyz").status_code == 200


def test_single_prediction(server: Server) -> None:
    r = post(server, "/predict", BODIES[1])
    assert r.status_code == 200, r.text
    out = r.json()
    assert set(out) == {"transaction_id", "score", "decision", "threshold", "model", "version"}
    assert out["transaction_id"] == BODIES[1]["transaction_id"]
    assert 0.0 <= out["score"] <= 1.0
    assert out["decision"] == ("flag" if out["score"] >= 0.5 else "allow")
    assert (out["threshold"], out["model"], out["version"]) == (0.5, "fraud_detector", GOOD)


def test_fraudulent_looking_transaction_is_flagged(server: Server) -> None:
    out = post(server, "/predict", FRAUDY).json()
    assert out["decision"] == "flag", out


def test_batch_keeps_order_and_matches_singles(server: Server) -> None:
    batch = BODIES[:10]
    r = post(server, "/predict_batch", {"transactions": batch})
    assert r.status_code == 200, r.text
    results = r.json()
    assert [x["transaction_id"] for x in results] == [b["transaction_id"] for b in batch]
    single = post(server, "/predict", batch[3]).json()
    assert results[3]["score"] == pytest.approx(single["score"], abs=1e-6)


def test_empty_batch(server: Server) -> None:
    r = post(server, "/predict_batch", {"transactions": []})
    assert (r.status_code, r.json()) == (200, [])


INVALID = [
    (
        "missing field",
        "/predict",
        {k: v for k, v in BODIES[0].items() if k != "amount"},
        422,
        "missing_field",
        "amount",
    ),
    ("wrong type", "/predict", {**BODIES[0], "txn_count_1h": "3"}, 422, "wrong_type", "txn_count_1h"),
    (
        "NaN",
        "/predict",
        json.dumps({**BODIES[0], "amount": float("nan")}).encode(),
        422,
        "not_finite",
        "amount",
    ),
    ("out of range", "/predict", {**BODIES[0], "hour_of_day": 99}, 422, "out_of_range", "hour_of_day"),
    ("unknown field", "/predict", {**BODIES[0], "colour": "red"}, 422, "unknown_field", "colour"),
    ("malformed json", "/predict", b'{"amount": ', 400, "malformed_json", "$"),
    ("nested 1,000 deep", "/predict", b"[" * 1000 + b"]" * 1000, 400, "nesting_too_deep", "$"),
    (
        "batch item nested 5,000 deep",
        "/predict_batch",
        b'{"transactions": [' + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"]}",
        400,
        "nesting_too_deep",
        "$",
    ),
    (
        "bad item in batch",
        "/predict_batch",
        {"transactions": [BODIES[0], {**BODIES[1], "amount": -2.0}]},
        422,
        "out_of_range",
        "transactions[1].amount",
    ),
    (
        "batch too large",
        "/predict_batch",
        {"transactions": BODIES[:1] * 1001},
        422,
        "batch_too_large",
        "transactions",
    ),
]


@pytest.mark.parametrize(
    ("name", "path", "body", "status", "reason", "field"), INVALID, ids=[c[0] for c in INVALID]
)
def test_invalid_input_is_a_4xx_naming_the_field_and_counted(
    server: Server, name: str, path: str, body: Any, status: int, reason: str, field: str
) -> None:
    labels = {"model_version": GOOD, "track": "canary", "reason": reason}
    before = metric(server, "fraud_model_rejected_inputs_total", **labels)
    r = post(server, path, body)
    assert r.status_code == status, r.text
    assert r.elapsed.total_seconds() < 2, r.elapsed  # refused at once, not at the request timeout
    out = r.json()
    assert (out["reason"], out["field"]) == (reason, field)
    assert field in out["message"]
    assert metric(server, "fraud_model_rejected_inputs_total", **labels) == before + 1


@pytest.mark.parametrize(
    "headers",
    [{"content-type": "application/x-www-form-urlencoded"}, {"content-type": "text/plain"}, {}],
    ids=["form", "text", "none"],
)
def test_non_json_media_type_is_refused_and_counted(server: Server, headers: dict[str, str]) -> None:
    labels = {"model_version": GOOD, "track": "canary", "reason": "unsupported_media_type"}
    before = metric(server, "fraud_model_rejected_inputs_total", **labels)
    r = post(server, "/predict", json.dumps(BODIES[0]).encode(), headers=headers)
    assert r.status_code == 415, r.text
    assert r.json()["reason"] == "unsupported_media_type"
    assert metric(server, "fraud_model_rejected_inputs_total", **labels) == before + 1


def test_metrics_present_and_moving(server: Server) -> None:
    labels = {"model_version": GOOD, "track": "canary"}
    text = httpx.get(server.url + "/metrics").text
    for name in (
        "fraud_model_score_bucket",
        "fraud_model_decisions_total",
        "fraud_model_rejected_inputs_total",
        "fraud_model_predictions_total",
        "fraud_model_shed_requests_total",
        "bentoml_service_request_total",
        "bentoml_service_request_duration_seconds_bucket",
    ):
        assert name in text, name
    les = re.findall(r'fraud_model_score_bucket\{le="([^"]+)",model_version="v1",track="canary"\}', text)
    assert les == [str(b) for b in score_buckets(0.5)] + ["+Inf"], les  # the servers' default threshold

    before = {
        "n": metric(server, "fraud_model_predictions_total", **labels),
        "count": metric(server, "fraud_model_score_count", **labels),
        "flag": metric(server, "fraud_model_decisions_total", decision="flag", **labels),
        "allow": metric(server, "fraud_model_decisions_total", decision="allow", **labels),
        "req": metric(server, "bentoml_service_request_total", endpoint="/predict", http_response_code="200"),
    }
    assert post(server, "/predict_batch", {"transactions": BODIES[:20]}).status_code == 200
    assert post(server, "/predict", FRAUDY).status_code == 200
    assert metric(server, "fraud_model_predictions_total", **labels) == before["n"] + 21
    assert metric(server, "fraud_model_score_count", **labels) == before["count"] + 21
    flags = metric(server, "fraud_model_decisions_total", decision="flag", **labels) - before["flag"]
    allows = metric(server, "fraud_model_decisions_total", decision="allow", **labels) - before["allow"]
    assert flags >= 1
    assert flags + allows == 21
    assert (
        metric(server, "bentoml_service_request_total", endpoint="/predict", http_response_code="200")
        == before["req"] + 1
    )


def test_regressed_model_as_stable_track_flags_more(start_server: StartServer, server: Server) -> None:
    # version and track from the model and the default; the good model's threshold, as a
    # FraudModel that sets spec.model.threshold canaries both tracks at one threshold
    bad = start_server(FRAUDMODEL_MODEL_TAG=f"fraud_detector:{BAD}", FRAUDMODEL_THRESHOLD="0.5")
    body = {"transactions": payloads(400, seed=2024)}
    good_out = post(server, "/predict_batch", body).json()
    bad_out = post(bad, "/predict_batch", body).json()
    assert {r["version"] for r in bad_out} == {BAD}
    good_flags = sum(r["decision"] == "flag" for r in good_out)
    bad_flags = sum(r["decision"] == "flag" for r in bad_out)
    assert bad_flags > 3 * max(1, good_flags)
    assert metric(bad, "fraud_model_predictions_total", model_version=BAD, track="stable") == 400


def test_overload_is_shed_with_503_and_retry_after(start_server: StartServer) -> None:
    tight = start_server(
        FRAUDMODEL_MODEL_TAG=f"fraud_detector:{GOOD}",
        FRAUDMODEL_MAX_INFLIGHT="1",
        FRAUDMODEL_RETRY_AFTER_SECONDS="2",
    )

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=tight.url, timeout=10, limits=limits) as client:
            return await asyncio.gather(*(client.post("/predict", json=BODIES[i % 50]) for i in range(64)))

    responses = asyncio.run(burst())
    codes = [r.status_code for r in responses]
    shed = [r for r in responses if r.status_code == 503]
    assert set(codes) <= {200, 503}, codes
    assert codes.count(200) >= 1, codes
    assert shed, codes
    for r in shed:
        assert r.headers["retry-after"] == "2"
        assert r.json()["reason"] == "shed"
    labels = {"model_version": GOOD, "track": "stable"}
    assert metric(tight, "fraud_model_shed_requests_total", **labels) == len(shed)
    assert metric(
        tight, "bentoml_service_request_total", endpoint="/predict", http_response_code="503"
    ) == len(shed)


def test_fault_injection_fails_and_delays_scoring_as_a_real_model_error(start_server: StartServer) -> None:
    """Off by default; when set, failures are 500s (model errors, unlike shed 503s) and calls are slower."""
    faulty = start_server(
        FRAUDMODEL_MODEL_TAG=f"fraud_detector:{GOOD}",
        FRAUDMODEL_FAULT_ERROR_RATE="1",
        FRAUDMODEL_FAULT_DELAY_MS="50",
    )
    body = payloads(1, seed=3)[0]
    started = time.monotonic()
    response = httpx.post(f"{faulty.url}/predict", json=body, timeout=10)
    assert response.status_code == 500
    assert time.monotonic() - started >= 0.05
    assert metric(faulty, "fraud_model_shed_requests_total", track="stable") == 0.0
    assert (
        metric(faulty, "bentoml_service_request_total", endpoint="/predict", http_response_code="500") == 1.0
    )


def test_adaptive_batching_answers_as_the_direct_path_does(start_server: StartServer, server: Server) -> None:
    """With batching on, requests go through BentoML's dispatcher instead of
    the edge's direct call to the model; clients must not see a difference."""
    batching = start_server(
        FRAUDMODEL_MODEL_TAG=f"fraud_detector:{GOOD}",
        FRAUDMODEL_TRACK="canary",
        FRAUDMODEL_ADAPTIVE_BATCHING="1",
        FRAUDMODEL_MAX_LATENCY_MS="200",
        FRAUDMODEL_THRESHOLD="0.5",  # as the `server` fixture
    )
    assert post(batching, "/predict", FRAUDY).json() == post(server, "/predict", FRAUDY).json()
    body = {"transactions": BODIES[:10]}
    assert post(batching, "/predict_batch", body).json() == post(server, "/predict_batch", body).json()
    bad = post(batching, "/predict", {**FRAUDY, "amount": -1})
    assert (bad.status_code, bad.json()["field"]) == (422, "amount")
    assert metric(batching, "fraud_model_predictions_total", track="canary") == 11


def test_reference_distributions_of_the_loaded_model_are_published(server: Server) -> None:
    """From the model's saved reference sample, on the live histograms' buckets (issue 13, monitoring)."""
    text = httpx.get(server.url + "/metrics").text
    ref = re.findall(
        r'fraud_model_reference_score_bucket\{le="([^"]+)",model_version="v1",track="canary"\} (\S+)', text
    )
    live = re.findall(r'fraud_model_score_bucket\{le="([^"]+)",model_version="v1",track="canary"\}', text)
    assert [le for le, _ in ref] == live
    shares = [float(v) for _, v in ref]
    assert shares == sorted(shares) and shares[-1] == 1.0
    assert 0.9 < shares[[le for le, _ in ref].index("0.5")] < 1.0  # most reference scores are low, a few high
    for feature in ("amount", "account_age_days", "distance_from_home_km", "ip_accounts_24h"):
        assert (
            f'fraud_model_reference_feature_bucket{{feature="{feature}",le="+Inf",model_version="v1"' in text
        )
    before = metric(server, "fraud_model_feature_count", feature="amount", model_version=GOOD)
    assert post(server, "/predict_batch", {"transactions": BODIES[:3]}).status_code == 200
    assert metric(server, "fraud_model_feature_count", feature="amount", model_version=GOOD) == before + 3
