"""Mirroring between real servers: a stable track mirrors to a shadow track through its routing file;
clients only ever get the stable's answers; the shadow records the agreement table; a shadow that
lags makes the stable drop (and count) mirrored pairs without slowing live requests."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import httpx
import pytest

from fraud_detector.data import payloads

from .conftest import BAD, GOOD, Server, StartServer
from .test_service_http import metric, post

pytestmark = pytest.mark.server

BODIES = payloads(300, seed=91)


def route(path: Path, shadow: Server | None, sample: float = 1.0, revision: str = "r1") -> None:
    """Write the routing file as the kubelet would: a new file swapped in (new inode)."""
    doc: dict[str, object] = {"revision": revision}
    if shadow is not None:
        doc["shadow"] = {"url": shadow.url, "sample": sample, "version": BAD}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(path)


def wait_for(check, within: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)  # polling a condition with a deadline
    raise AssertionError("condition not met in time")


def test_clients_get_stable_answers_while_the_shadow_records_pairs(
    start_server: StartServer, tmp_path: Path
) -> None:
    routing = tmp_path / "routing.json"
    shadow = start_server(
        FRAUDMODEL_MODEL_TAG=f"fraud_detector:{BAD}", FRAUDMODEL_TRACK="shadow", FRAUDMODEL_VERSION=BAD
    )
    stable = start_server(
        FRAUDMODEL_MODEL_TAG=f"fraud_detector:{GOOD}",
        FRAUDMODEL_TRACK="stable",
        FRAUDMODEL_ROUTING_FILE=str(routing),
    )
    route(routing, shadow)
    time.sleep(1.1)  # the edge checks its routing file at most once a second
    answers = [post(stable, "/predict", body).json() for body in BODIES[:200]]
    assert {a["version"] for a in answers} == {GOOD}, "clients only ever see the stable's answers"
    wait_for(lambda: metric(stable, "fraud_model_mirror_transactions_total", outcome="sent") >= 200)
    cells = {
        (s, h): metric(shadow, "fraud_model_paired_decisions_total", stable_decision=s, shadow_decision=h)
        for s in ("flag", "allow")
        for h in ("flag", "allow")
    }
    assert sum(cells.values()) == 200
    stable_flags = sum(a["decision"] == "flag" for a in answers)
    assert cells[("flag", "flag")] + cells[("flag", "allow")] == stable_flags, (
        "the stable's own decisions, paired"
    )
    assert cells[("allow", "flag")] > cells[("flag", "allow")], (
        "a miscalibrated model flags more on the same traffic"
    )
    assert metric(shadow, "fraud_model_paired_amount_total") == pytest.approx(
        sum(b["amount"] for b in BODIES[:200])
    )
    assert metric(shadow, "fraud_model_paired_abs_score_delta_count") == 200
    # Mirroring off again: nothing more is mirrored.
    route(routing, None, revision="r2")
    time.sleep(1.1)
    post(stable, "/predict", BODIES[0])
    post(stable, "/predict", BODIES[1])
    sent = metric(stable, "fraud_model_mirror_transactions_total", outcome="sent")
    post(stable, "/predict", BODIES[2])
    time.sleep(0.5)
    assert metric(stable, "fraud_model_mirror_transactions_total", outcome="sent") == sent
    assert metric(stable, "fraud_model_edge_routing_info", revision="r2") == 1


def test_a_lagging_shadow_overflows_the_queue_counted_and_live_requests_stay_fast(
    start_server: StartServer, tmp_path: Path
) -> None:
    routing = tmp_path / "routing.json"
    # A shadow that takes 300 ms per mirrored batch, and a queue of 20 transactions.
    slow = start_server(
        FRAUDMODEL_MODEL_TAG=f"fraud_detector:{BAD}",
        FRAUDMODEL_TRACK="shadow",
        FRAUDMODEL_FAULT_DELAY_MS="300",
    )
    stable = start_server(
        FRAUDMODEL_MODEL_TAG=f"fraud_detector:{GOOD}",
        FRAUDMODEL_TRACK="stable",
        FRAUDMODEL_ROUTING_FILE=str(routing),
        FRAUDMODEL_MIRROR_QUEUE="20",
        FRAUDMODEL_MIRROR_BATCH="4",
    )

    def timed(n: int) -> list[float]:
        out = []
        with httpx.Client(base_url=stable.url, timeout=10) as client:
            for body in BODIES[:n]:
                t0 = time.perf_counter()
                r = client.post(
                    "/predict", content=json.dumps(body), headers={"content-type": "application/json"}
                )
                out.append(time.perf_counter() - t0)
                assert r.status_code == 200
                assert r.json()["version"] == GOOD
        return out

    route(routing, None)
    time.sleep(1.1)
    before = timed(300)
    route(routing, slow, revision="r2")
    time.sleep(1.1)
    during = timed(300)
    dropped = metric(stable, "fraud_model_mirror_transactions_total", outcome="dropped")
    assert dropped > 200, "the shadow takes ~13 transactions a second: the rest cannot be queued"
    # Never delayed by the shadow (300 ms per batch there): a wait on it would put live requests at >= 0.3 s.
    assert statistics.median(during) < max(0.05, 2 * statistics.median(before))
    assert statistics.quantiles(during, n=20)[18] < 0.25
