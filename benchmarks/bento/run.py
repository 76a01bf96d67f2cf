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
* ``fastapi-1w-gc``: the baseline with the bento's garbage-collector settings (a control:
  how much of the bento's lead is the collector),
* ``kserve-1w``, ``mlserver-1w``, ``litserve-1w``: the model servers a user would pick
  instead, each serving the same model through its own custom-model API with one worker
  and one torch thread (benchmarks/bento/peers; their venvs come from peers/setup-venvs),
* ``bento-1w-mirror``: bento-1w mirroring *every* scored request to a shadow (routing
  config with sample 1, the worst case; the shadow is ``mirror_sink.py``, which answers
  202 at once, so only the stable's side of mirroring is measured),

each under wrk at several connection counts (closed loop). Before measuring, every server
must return the model's own score for the same transactions, or the run stops. Besides
req/s and latency it reports each server's CPU time per request, summed over all of its
processes. Prints one table and writes the figures as JSON. Stays on 127.0.0.1; bounded
in time.
"""

from __future__ import annotations

import argparse
import contextlib
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
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import wire
from wire import PROTOCOLS, CpuSample, ProcStat, Row, compare_scores, cpu_per_request_us, render

ROOT = Path(__file__).resolve().parents[2]
BENTO_DIR = ROOT / "bentos" / "fraud_detector"
HERE = Path(__file__).resolve().parent
PEERS_DIR = HERE / "peers"
PEERS_HOME = Path(
    os.environ.get("FRAUDMODEL_PEERS_HOME", Path.home() / ".cache" / "fraudmodel-operator" / "serving-peers")
)
MODEL_VERSION = "bench"
STICKY_WEIGHTS = (0, 30, 100)
CHECK_TRANSACTIONS = 50  # sent one by one to every server before measuring
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Server:
    """How to start one target and talk to it."""

    cmd: Callable[[int], list[str]]  # port -> command line
    env: dict[str, str]
    cwd: Path
    protocol: str = "predict"  # a key of wire.PROTOCOLS
    ready_path: str = "/readyz"
    port_env: Callable[[int], dict[str, str]] = lambda _: {}  # port -> extra environment

    def launch(self, port: int, log: Path) -> subprocess.Popen[bytes]:
        return start(self.cmd(port), {**self.env, **self.port_env(port)}, self.cwd, log)


@dataclass
class Running:
    url: str
    proc: subprocess.Popen[bytes]
    server: Server


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


def wait_ready(name: str, url: str, proc: subprocess.Popen[bytes], log: Path, deadline_s: float = 180) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{name} exited with {proc.returncode} before it was ready; its log ends:\n{tail}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{name}: {url} not ready within {deadline_s}s (log: {log})")


def start(cmd: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as fh:
        return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def proc_stats() -> Iterator[ProcStat]:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            yield wire.parse_proc_stat(stat.read_text())
        except (FileNotFoundError, ProcessLookupError):
            continue


def server_cpu(proc: subprocess.Popen[bytes]) -> CpuSample:
    """CPU time of every process of a server (see wire.server_processes)."""
    return wire.server_cpu(proc_stats(), proc.pid, TICKS)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a server and every process it started (in its session or below it)."""
    family = {(p.pid, p.started) for p in wire.server_processes(proc_stats(), proc.pid) if p.pid != proc.pid}
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for p in proc_stats():  # whatever the server did not stop itself (workers in sessions of their own)
        if (p.pid, p.started) in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)


def wrk(url: str, path: str, connections: int, seconds: int, bodies: Path, threads: int) -> dict[str, int]:
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
        env={**os.environ, "WRK_BODIES": str(bodies), "WRK_PATH": path},
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


TARGETS = "inprocess,fastapi-1w,bento-1w,bento-1w-batching,bento-2w,fastapi-2w"
PEER_TARGETS = "bento-1w,fastapi-1w,fastapi-1w-gc,kserve-1w,mlserver-1w,litserve-1w"
PEERS = ("kserve-1w", "mlserver-1w", "litserve-1w")  # each in its own venv under PEERS_HOME


def peer_python(peer: str) -> str:
    python = PEERS_HOME / peer / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"{python} is missing: run benchmarks/bento/peers/setup-venvs (or benchmarks/bento/peers/run)")
    return str(python)


def model_facts(env: dict[str, str]) -> tuple[Path, float]:
    """The benchmark model's directory and its threshold (as the bento would serve it)."""
    os.environ["BENTOML_HOME"] = env["BENTOML_HOME"]
    import bentoml
    from fraud_detector.loading import facts_of

    stored = bentoml.models.get(f"fraud_detector:{MODEL_VERSION}")
    threshold = facts_of(str(stored.tag), stored.info.metadata).threshold
    return Path(stored.path), 0.5 if threshold is None else threshold


HELPERS: list[subprocess.Popen[bytes]] = []  # processes a target needs beside its server, stopped at the end


def servers(env: dict[str, str], targets: list[str], tmp: Path, canary_port: int) -> dict[str, Server]:
    """Every target this run starts, by name (``canary_port``: where bento-1w will listen)."""
    tag = f"fraud_detector:{MODEL_VERSION}"
    mirror_routing = tmp / "routing-mirror.json"
    if "bento-1w-mirror" in targets:
        sink_port = free_port()
        HELPERS.append(
            start([sys.executable, str(HERE / "mirror_sink.py"), str(sink_port)], env, HERE, tmp / "sink.log")
        )
        shadow = {"url": f"http://127.0.0.1:{sink_port}", "sample": 1.0, "version": MODEL_VERSION}
        mirror_routing.write_text(json.dumps({"revision": "bench", "shadow": shadow}))
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
    bento_env = {**env, "FRAUDMODEL_MODEL_TAG": tag}
    table: dict[str, Server] = {
        "fastapi-1w": Server(lambda port: [*uvicorn_cmd, "--port", str(port)], baseline_env, HERE),
        "fastapi-2w": Server(lambda port: [*uvicorn_cmd, "--workers", "2", "--port", str(port)], baseline_env, HERE),
        "fastapi-1w-gc": Server(
            lambda port: [*uvicorn_cmd, "--port", str(port)], {**baseline_env, "BENCH_GC": "bento"}, HERE
        ),
        "bento-1w-batching": Server(
            lambda port: [*bento_cmd, "--port", str(port)],
            {**bento_env, "FRAUDMODEL_WORKERS": "1", "FRAUDMODEL_ADAPTIVE_BATCHING": "1"},
            BENTO_DIR,
        ),
        "bento-1w": Server(
            lambda port: [*bento_cmd, "--port", str(port)], {**bento_env, "FRAUDMODEL_WORKERS": "1"}, BENTO_DIR
        ),
        "bento-2w": Server(
            lambda port: [*bento_cmd, "--port", str(port)], {**bento_env, "FRAUDMODEL_WORKERS": "2"}, BENTO_DIR
        ),
        "bento-1w-mirror": Server(
            lambda port: [*bento_cmd, "--port", str(port)],
            {**bento_env, "FRAUDMODEL_WORKERS": "1", "FRAUDMODEL_ROUTING_FILE": str(mirror_routing)},
            BENTO_DIR,
        ),
    }
    # The sticky targets forward to bento-1w (their canary) at the weight of their routing file.
    sticky_env = {**bento_env, "FRAUDMODEL_WORKERS": "1"}
    canaries = {f"w{w}": (f"http://127.0.0.1:{canary_port}", w) for w in STICKY_WEIGHTS}
    # A canary that is down (nothing listens on its port): every account at 100% falls back to the stable.
    canaries["dead"] = (f"http://127.0.0.1:{free_port()}", 100)
    for suffix, (url, weight) in canaries.items():
        routing = tmp / f"routing-{suffix}.json"
        sticky = {"url": url, "weight": weight, "source": "field:account_id", "salt": "bench"}
        routing.write_text(json.dumps({"revision": f"bench-{suffix}", "sticky": sticky}))
        table[f"sticky-{suffix}"] = Server(
            lambda port: [*bento_cmd, "--port", str(port)],
            {**sticky_env, "FRAUDMODEL_ROUTING_FILE": str(routing)},
            BENTO_DIR,
        )
    if not any(t in PEERS for t in targets):
        return table
    model_dir, threshold = model_facts(env)
    # The peers import the bento's model and schema modules from its source tree, never BentoML.
    peer_env = {k: v for k, v in env.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    peer_env.update(PYTHONPATH=str(BENTO_DIR), OMP_NUM_THREADS="1")
    if "kserve-1w" in targets:
        table["kserve-1w"] = Server(
            lambda port: [
                peer_python("kserve"), str(PEERS_DIR / "kserve_server.py"), "--model_dir", str(model_dir),
                "--threshold", str(threshold), "--http_port", str(port), "--workers", "1",
                "--grpc_port", str(free_port()),
                # no log lines per request (latency and uvicorn's access log): the bento logs none either
                "--enable_latency_logging", "false", "--configure_logging", "false",
            ],
            peer_env, PEERS_DIR, "kserve-v1", "/v1/models/fraud_detector",
        )  # fmt: skip
    if "mlserver-1w" in targets:
        mlserver_env = {
            **peer_env,
            "PYTHONPATH": f"{PEERS_DIR / 'mlserver'}:{BENTO_DIR}",
            "MLSERVER_HOST": "127.0.0.1",
            "MLSERVER_MODEL_URI": str(model_dir),
            "MLSERVER_MODEL_EXTRA": json.dumps({"threshold": threshold}),
        }
        table["mlserver-1w"] = Server(
            lambda _: [str(Path(peer_python("mlserver")).parent / "mlserver"), "start", str(PEERS_DIR / "mlserver")],
            mlserver_env,
            PEERS_DIR / "mlserver",
            "open-inference",
            "/v2/models/fraud_detector/ready",
            lambda port: {
                "MLSERVER_HTTP_PORT": str(port),
                "MLSERVER_GRPC_PORT": str(free_port()),
                "MLSERVER_METRICS_PORT": str(free_port()),
            },
        )
    if "litserve-1w" in targets:
        table["litserve-1w"] = Server(
            lambda port: [
                peer_python("litserve"), str(PEERS_DIR / "litserve_server.py"), "--model-dir", str(model_dir),
                "--threshold", str(threshold), "--port", str(port),
            ],
            peer_env, PEERS_DIR, "predict", "/health",
        )  # fmt: skip
    return table


def reference_scores(env: dict[str, str], transactions: list[dict[str, Any]]) -> list[float]:
    """The model's own scores for these transactions, computed here without any server."""
    import torch
    from fraud_detector import model as model_io
    from fraud_detector.schema import FEATURE_NAMES

    torch.set_num_threads(1)
    model = model_io.load(model_facts(env)[0])
    rows = np.array([[t[n] for n in FEATURE_NAMES] for t in transactions], dtype=np.float32)
    return [float(s) for s in model.predict_proba(rows)]


def check_scores(running: dict[str, Running], transactions: list[dict[str, Any]], want: list[float]) -> None:
    """Every server must answer every transaction with the model's own score; stops the run if not."""
    problems: list[str] = []
    with httpx.Client(timeout=10) as client:
        for name, r in running.items():
            protocol = PROTOCOLS[r.server.protocol]
            got: list[float] = []
            for txn in transactions:
                resp = client.post(
                    r.url + protocol.path, content=protocol.body(txn), headers={"Content-Type": "application/json"}
                )
                if resp.status_code != 200:
                    problems.append(f"{name}: HTTP {resp.status_code} for {txn['transaction_id']}: {resp.text[:300]}")
                    break
                got.append(protocol.score(resp.json()))
            else:
                for m in compare_scores(name, want, got):
                    problems.append(f"{name}: transaction {m.index} scored {m.got!r}, the model says {m.want!r}")
    if problems:
        raise SystemExit("servers disagree with the model, nothing measured:\n  " + "\n  ".join(problems[:20]))
    print(f"same scores: {len(running)} servers x {len(transactions)} transactions agree with the model", flush=True)


def peer_versions(targets: list[str]) -> str:
    found = []
    for peer in ("kserve", "mlserver", "litserve"):
        if f"{peer}-1w" in targets:
            code = f"from importlib.metadata import version as v; print(v('{peer}'), v('torch'))"
            out = subprocess.run([peer_python(peer), "-c", code], capture_output=True, text=True, check=True)
            version, torch_version = out.stdout.split()
            found.append(f"{peer} {version} (torch {torch_version})")
    return ", ".join(found)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--connections", default="1,8,32,64", help="comma-separated wrk connection counts")
    p.add_argument("--seconds", type=int, default=8, help="per measurement")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    p.add_argument("--warmup", type=int, default=3, help="seconds of warm-up per target")
    p.add_argument("--wrk-threads", type=int, default=1)
    p.add_argument("--targets", default=TARGETS, help=f"comma-separated; the peers run: {PEER_TARGETS}")
    p.add_argument("--baseline", default="fastapi-1w", help="the target the ratio columns divide by")
    p.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = p.parse_args()
    if shutil.which("wrk") is None:
        print("wrk not found (Debian: apt-get install -y wrk)", file=sys.stderr)
        return 2
    conns = [int(c) for c in args.connections.split(",")]
    targets = args.targets.split(",")

    home = os.environ.get("BENTOML_HOME", str(BENTO_DIR / ".bentoml"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRAUDMODEL_", "MLSERVER_"))}
    env.update(BENTOML_HOME=home, BENTOML_DO_NOT_TRACK="true")
    ensure_model(env)
    if any(t.startswith("sticky-") for t in targets) and "bento-1w" not in targets:
        targets.insert(0, "bento-1w")  # the sticky targets' canary, measured directly beside them
    tmp = Path(tempfile.mkdtemp(prefix="bento-bench-"))
    ports = {name: free_port() for name in targets}
    table = servers(env, targets, tmp, ports.get("bento-1w", 0))
    served = [t for t in targets if t != "inprocess"]
    unknown = [t for t in served if t not in table]
    if unknown:
        raise SystemExit(f"unknown targets {unknown}; known: inprocess, {', '.join(table)}")
    if any(t in PEERS for t in served):
        print(f"peers: {peer_versions(served)}", flush=True)

    from fraud_detector.data import payloads

    bodies: dict[str, Path] = {}
    # Every body carries an account id (the sticky targets' key; the others ignore it).
    keyed = [{**b, "account_id": f"acct-{i:04d}"} for i, b in enumerate(payloads(200, seed=5))]
    for name in {table[t].protocol for t in served}:
        bodies[name] = tmp / f"bodies-{name}.lua"
        items = ",\n".join(json.dumps(PROTOCOLS[name].body(b)) for b in keyed)
        bodies[name].write_text("return {\n" + items + "\n}\n")
    check = payloads(CHECK_TRANSACTIONS, seed=11)

    rows: list[Row] = []
    if "inprocess" in targets:
        rows += inprocess(env, seconds=min(args.seconds, 5))
    running: dict[str, Running] = {}
    samples: dict[tuple[str, int], list[Row]] = {}
    try:
        # All servers up at once, measured in turn, round after round: on a
        # shared machine the background load drifts, and interleaving spreads
        # it evenly over the targets instead of favouring whichever ran first.
        for name in served:
            server = table[name]
            port = ports[name]
            log = tmp / f"{name}.log"
            running[name] = Running(f"http://127.0.0.1:{port}", server.launch(port, log), server)
        for name, r in running.items():
            wait_ready(name, r.url + r.server.ready_path, r.proc, tmp / f"{name}.log")
        check_scores(running, check, reference_scores(env, check))
        for r in running.values():
            wrk(
                r.url,
                PROTOCOLS[r.server.protocol].path,
                max(conns),
                args.warmup,
                bodies[r.server.protocol],
                args.wrk_threads,
            )
        for rnd in range(args.rounds):
            for c in conns:
                for name, r in running.items():
                    protocol = r.server.protocol
                    before = server_cpu(r.proc)
                    result = wrk(r.url, PROTOCOLS[protocol].path, c, args.seconds, bodies[protocol], args.wrk_threads)
                    after = server_cpu(r.proc)
                    row = to_row(name, c, result)
                    row.cpu_us = cpu_per_request_us(before, after, row.ok + row.shed + row.other)
                    row.processes = after.processes
                    samples.setdefault((name, c), []).append(row)
                    print(f"round {rnd + 1}: {json.dumps(asdict(row))}", flush=True)
    finally:
        for r in running.values():
            stop(r.proc)
        for helper in HELPERS:  # the mirroring target's shadow stand-in
            stop(helper)
        shutil.rmtree(tmp, ignore_errors=True)
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
        med([r.cpu_us for r in rs]),
        max(r.processes for r in rs),
    )


if __name__ == "__main__":
    raise SystemExit(main())
