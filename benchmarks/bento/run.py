"""Serving benchmark of the fraud detector, side by side in one run.

    benchmarks/bento/run   (or: bentos/fraud_detector/.venv/bin/python benchmarks/bento/run.py)

Targets, all serving the same model with the same validation on loopback:

* ``inprocess``: the model called in-process, no HTTP (the upper limit),
* ``fastapi-1w``: the plain baseline, FastAPI + uvicorn, one worker, no batching,
* ``bento-1w``: the bento as shipped (one worker, adaptive batching off),
* ``bento-1w-batching``: the same with BentoML's adaptive batching on
  (max_latency_ms=20, the configuration first measured in issue 7),
* ``bento-2w``: the bento with two workers (FRAUDMODEL_WORKERS=2),
* ``fastapi-2w``: the baseline with two uvicorn workers (a match for bento-2w),
* ``sticky-w0``, ``sticky-w30``, ``sticky-w100`` (not in the default set): the bento as a
  stable track under ``stickyBy: {field: account_id}`` at a canary weight of 0, 30 and 100%,
  forwarding the canary's accounts to ``bento-1w`` as its canary (started with them): at 0%
  the split runs and forwards nothing, at 100% every request takes the extra hop. Side by
  side with ``bento-1w`` answering the same requests directly; ``sticky-dead``: at 100% to a
  canary that is down (the fallback policy: the stable answers),

each under wrk at several connection counts (closed loop). Prints one table and
writes the figures as JSON. Stays on 127.0.0.1; bounded in time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
BENTO_DIR = ROOT / "bentos" / "fraud_detector"
HERE = Path(__file__).resolve().parent
MODEL_VERSION = "bench"
STICKY_WEIGHTS = (0, 30, 100)


@dataclass
class Row:
    target: str
    connections: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    ok: int
    shed: int
    other: int
    errors: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_model(env: dict[str, str]) -> None:
    probe = subprocess.run(
        [sys.executable, "-m", "bentoml", "models", "get", f"fraud_detector:{MODEL_VERSION}"],
        env=env,
        cwd=BENTO_DIR,
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        subprocess.run(
            [sys.executable, "-m", "fraud_detector.train", "--version", MODEL_VERSION],
            env=env,
            cwd=BENTO_DIR,
            check=True,
        )


def wait_ready(url: str, proc: subprocess.Popen[bytes], deadline_s: float = 90) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {proc.returncode}")
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(url)


def start(cmd: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as fh:
        return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wrk(url: str, connections: int, seconds: int, bodies: Path, threads: int) -> dict[str, int]:
    out = subprocess.run(
        [
            "wrk",
            f"-t{min(threads, connections)}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "5s",
            "-s",
            str(HERE / "wrk_report.lua"),
            url,
        ],
        env={**os.environ, "WRK_BODIES": str(bodies)},
        capture_output=True,
        text=True,
        check=True,
    )
    m = re.search(r"^RESULT (.*)$", out.stdout, re.M)
    if not m:
        raise RuntimeError(out.stdout + out.stderr)
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(1))}


def to_row(target: str, connections: int, r: dict[str, int]) -> Row:
    seconds = r["duration_us"] / 1e6
    return Row(
        target,
        connections,
        round(r["ok"] / seconds, 1),
        r["p50"] / 1000,
        r["p90"] / 1000,
        r["p99"] / 1000,
        r["ok"],
        r["shed"],
        r["other"],
        r["errors"],
    )


def inprocess(env: dict[str, str], seconds: float) -> list[Row]:
    """The model alone: one transaction per call (as /predict) and batches of 32."""
    os.environ["BENTOML_HOME"] = env["BENTOML_HOME"]
    import bentoml
    import torch
    from fraud_detector import model as model_io
    from fraud_detector.data import payloads
    from fraud_detector.schema import FEATURE_NAMES, Transaction

    torch.set_num_threads(1)
    model = model_io.load(Path(bentoml.models.get(f"fraud_detector:{MODEL_VERSION}").path))
    bodies = payloads(1000, seed=5)
    rows = []
    for batch in (1, 32):
        lat: list[float] = []
        done = 0
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            chunk = [bodies[(done + j) % 1000] for j in range(batch)]
            t0 = time.perf_counter()
            txns = [Transaction.model_validate(b) for b in chunk]  # same validation as served
            x = np.array([[getattr(t, n) for n in FEATURE_NAMES] for t in txns], dtype=np.float32)
            model.predict_proba(x)
            lat.append(time.perf_counter() - t0)
            done += batch
        elapsed = sum(lat)
        ms = np.array(lat) * 1000
        rows.append(
            Row(
                f"inprocess-batch{batch}",
                1,
                round(done / elapsed, 1),
                float(np.percentile(ms, 50)),
                float(np.percentile(ms, 90)),
                float(np.percentile(ms, 99)),
                done,
                0,
                0,
                0,
            )
        )
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--connections", default="1,8,32,64", help="comma-separated wrk connection counts")
    p.add_argument("--seconds", type=int, default=8, help="per measurement")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    p.add_argument("--warmup", type=int, default=3, help="seconds of warm-up per target")
    p.add_argument("--wrk-threads", type=int, default=1)
    p.add_argument("--targets", default="inprocess,fastapi-1w,bento-1w,bento-1w-batching,bento-2w,fastapi-2w")
    p.add_argument("--json", type=Path, default=None, help="write the rows here")
    p.add_argument("--baseline", default="fastapi-1w", help="the target the ratio columns compare with")
    args = p.parse_args()
    if shutil.which("wrk") is None:
        print("wrk not found (Debian: apt-get install -y wrk)", file=sys.stderr)
        return 2
    conns = [int(c) for c in args.connections.split(",")]
    targets = args.targets.split(",")

    home = os.environ.get("BENTOML_HOME", str(BENTO_DIR / ".bentoml"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDMODEL_")}
    env.update(BENTOML_HOME=home, BENTOML_DO_NOT_TRACK="true")
    ensure_model(env)

    from fraud_detector.data import payloads

    tmp = Path(tempfile.mkdtemp(prefix="bento-bench-"))
    bodies = tmp / "bodies.lua"
    # Every body carries an account id (the sticky targets' key; the others ignore it).
    keyed = [{**b, "account_id": f"acct-{i:04d}"} for i, b in enumerate(payloads(200, seed=5))]
    items = ",\n".join(json.dumps(json.dumps(b)) for b in keyed)
    bodies.write_text("return {\n" + items + "\n}\n")

    tag = f"fraud_detector:{MODEL_VERSION}"
    bento_cmd = [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        "fraud_detector.service:FraudDetector",
        "--host",
        "127.0.0.1",
    ]
    uvicorn_cmd = [sys.executable, "-m", "uvicorn", "baseline_app:app", "--host", "127.0.0.1", "--no-access-log"]
    uvicorn_cmd += ["--log-level", "warning"]
    baseline_env = {**env, "BENCH_MODEL_TAG": tag, "PYTHONPATH": str(BENTO_DIR)}
    servers: dict[str, tuple[list[str], dict[str, str], Path]] = {
        "fastapi-1w": (uvicorn_cmd, baseline_env, HERE),
        "fastapi-2w": ([*uvicorn_cmd, "--workers", "2"], baseline_env, HERE),
        "bento-1w-batching": (
            bento_cmd,
            {**env, "FRAUDMODEL_MODEL_TAG": tag, "FRAUDMODEL_WORKERS": "1", "FRAUDMODEL_ADAPTIVE_BATCHING": "1"},
            BENTO_DIR,
        ),
        "bento-1w": (bento_cmd, {**env, "FRAUDMODEL_MODEL_TAG": tag, "FRAUDMODEL_WORKERS": "1"}, BENTO_DIR),
        "bento-2w": (bento_cmd, {**env, "FRAUDMODEL_MODEL_TAG": tag, "FRAUDMODEL_WORKERS": "2"}, BENTO_DIR),
    }

    # The sticky targets forward to bento-1w (their canary) at the weight of their routing file.
    ports = {name: free_port() for name in servers}
    sticky_env = {**env, "FRAUDMODEL_MODEL_TAG": tag, "FRAUDMODEL_WORKERS": "1"}
    for weight in STICKY_WEIGHTS:
        routing = tmp / f"routing-w{weight}.json"
        sticky = {"url": f"http://127.0.0.1:{ports['bento-1w']}", "weight": weight, "source": "field:account_id"}
        routing.write_text(json.dumps({"revision": f"bench-w{weight}", "sticky": {**sticky, "salt": "bench"}}))
        servers[f"sticky-w{weight}"] = (bento_cmd, {**sticky_env, "FRAUDMODEL_ROUTING_FILE": str(routing)}, BENTO_DIR)
        ports[f"sticky-w{weight}"] = free_port()
    # A canary that is down (nothing listens on its port): every account at 100% falls back to the stable.
    dead = tmp / "routing-dead.json"
    sticky = {"url": f"http://127.0.0.1:{free_port()}", "weight": 100, "source": "field:account_id"}
    dead.write_text(json.dumps({"revision": "bench-dead", "sticky": {**sticky, "salt": "bench"}}))
    servers["sticky-dead"] = (bento_cmd, {**sticky_env, "FRAUDMODEL_ROUTING_FILE": str(dead)}, BENTO_DIR)
    ports["sticky-dead"] = free_port()
    if any(t.startswith("sticky-") for t in targets) and "bento-1w" not in targets:
        targets.insert(0, "bento-1w")  # the sticky targets' canary, measured directly beside them

    rows: list[Row] = []
    if "inprocess" in targets:
        rows += inprocess(env, seconds=min(args.seconds, 5))
    served = [t for t in targets if t != "inprocess"]
    procs: dict[str, tuple[str, subprocess.Popen[bytes]]] = {}
    samples: dict[tuple[str, int], list[Row]] = {}
    try:
        # All servers up at once, measured in turn, round after round: on a
        # shared machine the background load drifts, and interleaving spreads
        # it evenly over the targets instead of favouring whichever ran first.
        for name in served:
            cmd, senv, cwd = servers[name]
            port = ports[name]
            procs[name] = (
                f"http://127.0.0.1:{port}",
                start([*cmd, "--port", str(port)], senv, cwd, tmp / f"{name}.log"),
            )
        for url, proc in procs.values():
            wait_ready(url, proc)
            wrk(url, max(conns), args.warmup, bodies, args.wrk_threads)
        for rnd in range(args.rounds):
            for c in conns:
                for name in served:
                    url, _ = procs[name]
                    row = to_row(name, c, wrk(url, c, args.seconds, bodies, args.wrk_threads))
                    samples.setdefault((name, c), []).append(row)
                    print(f"round {rnd + 1}: {json.dumps(asdict(row))}", flush=True)
    finally:
        for _, proc in procs.values():
            stop(proc)
    for name in served:
        for c in conns:
            rows.append(median_row(samples[(name, c)]))

    print()
    print(f"median of {args.rounds} interleaved rounds of {args.seconds}s, wrk -t{args.wrk_threads}, 127.0.0.1")
    print(render(rows, args.baseline))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    return 0


def median_row(rs: list[Row]) -> Row:
    """Per-figure medians over rounds; shed/other are totals."""
    med = lambda xs: float(np.median(xs))  # noqa: E731
    return Row(
        rs[0].target,
        rs[0].connections,
        round(med([r.rps for r in rs]), 1),
        med([r.p50_ms for r in rs]),
        med([r.p90_ms for r in rs]),
        med([r.p99_ms for r in rs]),
        sum(r.ok for r in rs),
        sum(r.shed for r in rs),
        sum(r.other for r in rs),
        sum(r.errors for r in rs),
    )


def render(rows: list[Row], baseline: str = "fastapi-1w") -> str:
    base = {r.connections: r for r in rows if r.target == baseline}
    lines = [
        "| target | conns | req/s | p50 ms | p90 ms | p99 ms | 503 shed | other non-2xx "
        f"| req/s vs {baseline} | p99 vs {baseline} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        b = base.get(r.connections)
        ratio = f"{r.rps / b.rps:.2f}x" if b and not r.target.startswith("inprocess") else ""
        p99r = f"{r.p99_ms / b.p99_ms:.2f}x" if b and not r.target.startswith("inprocess") else ""
        lines.append(
            f"| {r.target} | {r.connections} | {r.rps:.0f} | {r.p50_ms:.2f} | {r.p90_ms:.2f} | {r.p99_ms:.2f} "
            f"| {r.shed} | {r.other + r.errors} | {ratio} | {p99r} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
