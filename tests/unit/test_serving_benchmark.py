"""The serving benchmark's own logic (benchmarks/bento/wire.py): what each server is sent
and where its score is read, the same-score check that gates every run, the CPU time read
from /proc, and the ratio table. The servers themselves run only in the benchmark."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
from benchmarks.bento import wire

ROOT = Path(__file__).resolve().parents[2]
TXN = {
    "transaction_id": "t-1",
    "amount": 12.5,
    "txn_count_1h": 1,
    "txn_count_24h": 3,
    "amount_sum_24h": 40.0,
    "account_age_days": 300,
    "device_accounts_7d": 1,
    "ip_accounts_24h": 2,
    "geo_mismatch": False,
    "distance_from_home_km": 4.2,
    "promo_redemptions_30d": 0,
    "chargebacks_180d": 0,
    "failed_logins_24h": 0,
    "is_new_device": True,
    "card_present": False,
    "hour_of_day": 13,
}


def _bento_schema(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The bento's feature schema (stdlib + pydantic only), loaded from its file."""
    name = "bento_schema_for_wire_test"
    spec = importlib.util.spec_from_file_location(name, ROOT / "bentos/fraud_detector/fraud_detector/schema.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_open_inference_datatypes_follow_the_bento_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    schema = _bento_schema(monkeypatch)
    kinds = {"float": "FP64", "int": "INT64", "bool": "BOOL"}
    assert {f.name: kinds[f.kind] for f in schema.FEATURES} == wire.FEATURE_DATATYPES
    assert set(TXN) == {*schema.FEATURE_NAMES, schema.ID_FIELD}
    schema.Transaction.model_validate(TXN)  # the sample is a valid transaction


def test_open_inference_request_has_one_typed_input_per_feature_and_the_id() -> None:
    body = json.loads(wire.PROTOCOLS["open-inference"].body(TXN))
    by_name = {i["name"]: i for i in body["inputs"]}
    assert set(by_name) == set(TXN)
    assert by_name["transaction_id"] == {"name": "transaction_id", "shape": [1], "datatype": "BYTES", "data": ["t-1"]}
    assert by_name["hour_of_day"] == {"name": "hour_of_day", "shape": [1], "datatype": "INT64", "data": [13]}
    assert by_name["is_new_device"]["data"] == [True]
    assert by_name["amount"]["datatype"] == "FP64"


@pytest.mark.parametrize(
    ("protocol", "path", "body", "answer"),
    [
        # The answers are what each server returned in a benchmark run (values shortened).
        pytest.param(
            "predict",
            "/predict",
            TXN,
            {"transaction_id": "t-1", "score": 0.0123, "decision": "allow", "threshold": 0.28},
            id="bento-fastapi-litserve",
        ),
        pytest.param(
            "kserve-v1",
            "/v1/models/fraud_detector:predict",
            {"instances": [TXN]},
            {"predictions": [{"transaction_id": "t-1", "score": 0.0123, "decision": "allow", "threshold": 0.28}]},
            id="kserve-v1",
        ),
        pytest.param(
            "open-inference",
            "/v2/models/fraud_detector/infer",
            None,
            {
                "model_name": "fraud_detector",
                "outputs": [
                    {"name": "decision", "shape": [1, 1], "datatype": "BYTES", "data": ["allow"]},
                    {"name": "score", "shape": [1], "datatype": "FP32", "data": [0.0123]},
                ],
            },
            id="mlserver-open-inference",
        ),
    ],
)
def test_each_protocol_sends_the_transaction_and_reads_the_score(
    protocol: str, path: str, body: dict[str, object] | None, answer: object
) -> None:
    p = wire.PROTOCOLS[protocol]
    assert p.path == path
    if body is not None:
        assert json.loads(p.body(TXN)) == body
    assert p.score(answer) == 0.0123


@pytest.mark.parametrize(
    ("protocol", "answer"),
    [
        pytest.param("predict", {"detail": "not ready"}, id="no-score"),
        pytest.param("predict", {"score": "0.1"}, id="string-score"),
        pytest.param("predict", {"score": True}, id="bool-score"),
        pytest.param("kserve-v1", {"predictions": []}, id="no-prediction"),
        pytest.param("open-inference", {"outputs": [{"name": "decision", "data": ["allow"]}]}, id="no-score-output"),
        pytest.param("open-inference", {"error": "boom"}, id="error-body"),
    ],
)
def test_an_answer_without_a_score_is_an_error_naming_the_protocol(protocol: str, answer: object) -> None:
    with pytest.raises(ValueError, match=protocol):
        wire.PROTOCOLS[protocol].score(answer)


@pytest.mark.parametrize(
    ("want", "got", "bad"),
    [
        pytest.param([0.1, 0.9], [0.1, 0.9], [], id="equal"),
        pytest.param([0.1, 0.9], [0.1 + 5e-7, 0.9], [], id="within-tolerance"),
        pytest.param([0.1, 0.9], [0.1, 0.9 + 2e-6], [1], id="one-off"),
        pytest.param([0.1, 0.9], [0.9, 0.1], [0, 1], id="swapped"),
        pytest.param([0.1], [math.nan], [0], id="nan"),
        pytest.param([0.1], [math.inf], [0], id="inf"),
    ],
)
def test_compare_scores_lists_every_transaction_that_differs(
    want: list[float], got: list[float], bad: list[int]
) -> None:
    assert [m.index for m in wire.compare_scores("x", want, got)] == bad


def test_compare_scores_refuses_a_different_number_of_answers() -> None:
    with pytest.raises(ValueError, match="1 scores for 2 transactions"):
        wire.compare_scores("x", [0.1, 0.2], [0.1])


def _stat(pid: int, comm: str, ppid: int, session: int, utime: int, stime: int) -> str:
    # /proc/<pid>/stat from field 3: state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
    # utime stime cutime cstime priority nice threads itrealvalue starttime vsize rss
    return (
        f"{pid} ({comm}) S {ppid} {session} {session} 0 -1 4194560 100 0 0 0 {utime} {stime} 7 7 20 0 1 0 "
        f"{1000 + pid} 6 7\n"
    )


def test_parse_proc_stat_counts_fields_after_the_last_parenthesis() -> None:
    assert wire.parse_proc_stat(_stat(42, "python3 (worker) 1", 7, 40, 250, 30)) == wire.ProcStat(42, 7, 40, 280, 1042)


def test_parse_proc_stat_reads_this_process() -> None:
    me = wire.parse_proc_stat(Path("/proc/self/stat").read_text())
    assert (me.pid, me.ppid, me.session) == (os.getpid(), os.getppid(), os.getsid(0))
    assert me.ticks >= 0
    assert me.started > 0


# A server started as pid 10 in session 10: its own helper (11, same session), a worker its
# process manager started in a session of its own (12) with a child (13); and strangers.
SERVER = [
    _stat(10, "bentoml serve", 1, 10, 100, 50),
    _stat(11, "python", 10, 10, 300, 50),
    _stat(12, "circus worker", 10, 12, 200, 0),
    _stat(13, "python", 12, 12, 100, 0),
    _stat(20, "python", 1, 20, 1000, 1000),
    _stat(21, "python", 20, 10, 5, 5),  # in the server's session although not below it
]


def test_server_processes_are_its_session_and_its_descendants() -> None:
    stats = [wire.parse_proc_stat(s) for s in SERVER]
    assert sorted(p.pid for p in wire.server_processes(stats, 10)) == [10, 11, 12, 13, 21]
    assert wire.server_cpu(stats, 10, 100) == wire.CpuSample(8.1, 5)
    assert wire.server_cpu(stats, 99, 100) == wire.CpuSample(0.0, 0)


def test_cpu_per_request_in_microseconds() -> None:
    before = wire.CpuSample(10.0, 3)
    assert wire.cpu_per_request_us(before, wire.CpuSample(12.0, 3), 10_000) == pytest.approx(200.0)
    assert math.isnan(wire.cpu_per_request_us(before, wire.CpuSample(10.0, 3), 0))


def test_cpu_per_request_refuses_a_run_that_lost_a_process() -> None:
    with pytest.raises(ValueError, match="from 3 to 2"):
        wire.cpu_per_request_us(wire.CpuSample(10.0, 3), wire.CpuSample(10.5, 2), 1000)


def _row(target: str, conns: int, rps: float, p99: float, cpu: float) -> wire.Row:
    return wire.Row(target, conns, rps, p99 / 4, p99 / 2, p99, int(rps * 6), 0, 0, 0, cpu, 2)


def test_render_divides_by_the_baseline_at_the_same_connection_count() -> None:
    rows = [
        wire.Row("inprocess-batch1", 1, 30000.0, 0.03, 0.03, 0.06, 1000, 0, 0, 0),
        _row("bento-1w", 8, 6000.0, 2.0, 150.0),
        _row("bento-1w", 32, 7000.0, 6.0, 140.0),
        _row("kserve-1w", 8, 3000.0, 4.0, 300.0),
        _row("kserve-1w", 64, 3000.0, 4.0, 300.0),
    ]
    table = wire.render(rows, "bento-1w").splitlines()
    assert "req/s vs bento-1w" in table[0]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]
    by_key = {(c[0], c[2]): c for c in cells}
    assert by_key[("kserve-1w", "8")][-3:] == ["0.50x", "2.00x", "2.00x"]
    assert by_key[("bento-1w", "32")][-3:] == ["1.00x", "1.00x", "1.00x"]
    assert by_key[("kserve-1w", "64")][-3:] == ["", "", ""]  # no baseline at 64 connections
    assert by_key[("inprocess-batch1", "1")][7] == ""  # no CPU figure, no ratios
    assert by_key[("kserve-1w", "8")][1] == "2"  # processes
    assert by_key[("kserve-1w", "8")][7] == "300"
