"""The local data plane: real BentoML servers of two model versions, real Prometheus, real traffic.

Used by the demo (`./scripts/demo`), the integration and cluster tiers and the rollout
benchmark. Each track is a BentoML server of `bentos/fraud_detector` on a loopback port;
Prometheus (Debian's package) scrapes both every second with the labels the chart's
PodMonitor sets (`fraudmodel`, `namespace`, `track`); traffic goes to the canary with the
probability of the weight the router really gives it, as the operator reports it in the
FraudModel's status (`status.canary.effectiveWeight`).

    .venv/bin/python scripts/dataplane.py --stable v1 --canary v2-miscalibrated \\
        --fraudmodel fraud-detector --namespace default --state DIR

writes DIR/prometheus-url once Prometheus is ready, then sends traffic (weights read
with kubectl) until stopped or `--seconds` pass.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
BENTO = ROOT / "bentos" / "fraud_detector"
# Model versions the tiers use, and how to train each (bentos/fraud_detector: python -m fraud_detector.train).
MODELS: dict[str, list[str]] = {
    "v1": [],
    "v2": ["--seed", "11"],  # a retrain on other data: a healthy new version, not a copy of v1
    "v2-miscalibrated": ["--regressed", "miscalibrated"],
}


@dataclass(frozen=True)
class Scenario:
    """A canary the tiers, the demo and the benchmarks can roll out: a trained model (MODELS) served
    under its own version label, with bento settings; `flag_ratio` serves it at the threshold that
    flags that share of what the model flags at 0.5 (found by scoring traffic, see `calibrate`)."""

    model: str
    env: dict[str, str] = field(default_factory=dict)
    flag_ratio: float | None = None


SCENARIOS: dict[str, Scenario] = {
    "v2": Scenario("v2"),
    "v2-miscalibrated": Scenario("v2-miscalibrated"),
    # The same model and ranking with a higher threshold: half as many transactions flagged.
    "v2-half-flags": Scenario("v1", flag_ratio=0.5),
    # A model that cannot keep up: one request at a time, 40 ms each; the rest is shed with 503.
    "v2-shedding": Scenario("v2", {"FRAUDMODEL_MAX_INFLIGHT": "1", "FRAUDMODEL_FAULT_DELAY_MS": "40"}),
}


def threshold_for(scores: list[float], ratio: float, threshold: float = 0.5) -> float:
    """The threshold that flags `ratio` times as many of `scores` as `threshold` does."""
    ranked = sorted(scores, reverse=True)
    flagged = sum(s >= threshold for s in ranked)
    want = round(flagged * ratio)
    if want <= 0:
        return 1.0
    return (ranked[want - 1] + ranked[want]) / 2 if want < len(ranked) else ranked[-1]


def calibrate(url: str, bodies: list[dict[str, Any]], ratio: float) -> float:
    """Score `bodies` on the server at `url` (it must serve the scenario's model) and return the
    threshold that flags `ratio` times as many of them as 0.5 does."""
    scores: list[float] = []
    for i in range(0, len(bodies), 500):
        answer = httpx.post(f"{url}/predict_batch", json={"transactions": bodies[i : i + 500]}, timeout=30)
        answer.raise_for_status()
        body = answer.json()
        rows = body if isinstance(body, list) else body.get("predictions", [])
        scores += [float(row["score"]) for row in rows]
    return threshold_for(scores, ratio)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_http(url: str, within: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready within {within}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@dataclass
class Bento:
    """The bento's environment and model store."""

    python: str = str(BENTO / ".venv" / "bin" / "python")
    home: Path = BENTO / ".bentoml"

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "BENTOML_HOME": str(self.home), "BENTOML_DO_NOT_TRACK": "true", **extra}

    def train(self, versions: list[str]) -> None:
        """Train the versions missing from the store (well under a minute each on a CPU)."""
        for version in versions:
            stored = self.home / "models" / "fraud_detector" / version
            if (stored / "model.yaml").exists() and "release:" not in (stored / "model.yaml").read_text():
                raise RuntimeError(
                    f"{stored} was trained before the release gate and will not be served; "
                    "versions are immutable: delete it (or the whole store) and run again"
                )
            if not stored.exists():
                cmd = [self.python, "-m", "fraud_detector.train", "--version", version, *MODELS[version]]
                subprocess.run(cmd, cwd=BENTO, env=self.env(), check=True)

    def payloads(self, count: int, seed: int, shift: float = 0.0) -> list[dict[str, Any]]:
        """Realistic transactions from the bento's own generator; `shift` (0..1) drifts the legitimate ones."""
        code = (
            "import json, sys; from fraud_detector.data import payloads; "
            f"json.dump(payloads({count}, {seed}, shift={shift!r}), sys.stdout)"
        )
        out = subprocess.run([self.python, "-c", code], cwd=BENTO, env=self.env(), capture_output=True, check=True)
        result: list[dict[str, Any]] = json.loads(out.stdout)
        return result


@dataclass
class Server:
    url: str
    port: int
    proc: subprocess.Popen[bytes]


@dataclass
class Servers:
    """BentoML servers started on demand, stopped together."""

    bento: Bento
    root: Path
    started: list[Server] = field(default_factory=list)

    def start(
        self,
        version: str,
        track: str,
        name: str = "fraud_detector",
        model: str | None = None,
        ready: bool = True,
        **env: str,
    ) -> Server:
        """A server labelled `version` as `track`, serving the trained `model` (default: `version`);
        `env` adds settings (e.g. FRAUDMODEL_FAULT_DELAY_MS). `ready=False`: wait until it is live
        only (it is expected to refuse readiness, e.g. a model other than the declared version)."""
        port = free_port()
        # One BENTOML_HOME per server, sharing the model store: BentoML keeps its Prometheus
        # multiprocess files under BENTOML_HOME and wipes them at start, so two servers on one
        # home would export each other's metrics (pods never share it).
        home = self.root / f"bentoml-{port}"
        home.mkdir(parents=True)
        (home / "models").symlink_to(self.bento.home / "models")
        environment = self.bento.env(
            # Both tracks at one threshold, as a FraudModel that sets spec.model.threshold: the
            # tiers compare versions at the same decision boundary (unset, each version would use
            # the threshold chosen at its training; env may still override it).
            **{"FRAUDMODEL_THRESHOLD": "0.5", **env},
            BENTOML_HOME=str(home),
            FRAUDMODEL_NAME=name,
            FRAUDMODEL_VERSION=version,
            FRAUDMODEL_TRACK=track,
            FRAUDMODEL_MODEL_TAG=f"fraud_detector:{model or version}",
        )
        cmd = [self.bento.python, "-m", "bentoml", "serve", "fraud_detector.service:FraudDetector"]
        proc = subprocess.Popen(
            [*cmd, "--host", "127.0.0.1", "--port", str(port)],
            cwd=BENTO,
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=sys.stderr,
            start_new_session=True,
        )
        server = Server(f"http://127.0.0.1:{port}", port, proc)
        self.started.append(server)
        wait_http(f"{server.url}/readyz" if ready else f"{server.url}/livez", 120, proc)
        return server

    def start_scenario(
        self, version: str, track: str, bodies: list[dict[str, Any]], calibration_url: str, name: str = "fraud_detector"
    ) -> Server:
        """A server of scenario `version` (SCENARIOS) or of the trained model `version`;
        `calibration_url` serves the scenario's model, to find its threshold (flag_ratio)."""
        scenario = SCENARIOS.get(version, Scenario(version))
        env = dict(scenario.env)
        if scenario.flag_ratio is not None:
            env["FRAUDMODEL_THRESHOLD"] = f"{calibrate(calibration_url, bodies, scenario.flag_ratio):.6g}"
        return self.start(version, track, name, scenario.model, **env)

    def stop_all(self) -> None:
        for server in self.started:
            stop(server.proc)


@dataclass
class Prometheus:
    """Debian's Prometheus scraping the tracks every second."""

    root: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def scrape(
        self,
        targets: dict[str, int],
        fraudmodel: str = "bot",
        namespace: str = "default",
        rules: dict[str, Any] | None = None,
    ) -> None:
        """Scrape each track's server, labelled as the chart's PodMonitor labels pods; `rules`: a rule
        file's content (e.g. the chart's PrometheusRule groups), evaluated every second."""
        jobs = [
            {
                "targets": [f"127.0.0.1:{port}"],
                "labels": {"track": track, "fraudmodel": fraudmodel, "namespace": namespace},
            }
            for track, port in targets.items()
        ]
        config: dict[str, Any] = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "bento", "static_configs": jobs}],
        }
        self.root.mkdir(parents=True, exist_ok=True)
        if rules is not None:
            (self.root / "rules.yml").write_text(yaml.safe_dump(rules))
            config["rule_files"] = [str(self.root / "rules.yml")]
        (self.root / "prometheus.yml").write_text(yaml.safe_dump(config))

    def start(self) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus is not installed (Debian package `prometheus`)")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={self.root / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.root / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_http(f"{self.url}/-/ready", 60, self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None

    def wait_for_data(self, promql: str, within: float = 60) -> None:
        """Until `promql` returns a sample: a Prometheus started a moment ago has too few scrapes
        for a windowed rate, where one that has been running does not."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
                body = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=2).json()
                if body["data"]["result"]:
                    return
            time.sleep(0.5)
        raise TimeoutError(f"no data for {promql} within {within}s")


async def send_traffic(
    weight: Callable[[], int],
    urls: dict[str, str],
    bodies: list[dict[str, Any]],
    rps: float | Callable[[], float] = 60.0,
    seed: int = 42,
) -> None:
    """Open-loop traffic at `rps` (a rate, or a function giving the next one); each request
    goes to the canary with probability weight()/100."""
    rng = random.Random(seed)
    rate = rps if callable(rps) else (lambda: float(rps))
    in_flight: set[asyncio.Task[None]] = set()
    async with httpx.AsyncClient(timeout=5) as client:
        try:
            i = 0
            while True:
                track = "canary" if rng.random() * 100 < weight() else "stable"
                body = bodies[i % len(bodies)]
                i += 1
                task = asyncio.get_running_loop().create_task(_post(client, f"{urls[track]}/predict", body))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                await asyncio.sleep(1 / rate())
        finally:  # stopped: end the requests still in flight before the client closes their sockets
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)


async def _post(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> None:
    with contextlib.suppress(httpx.HTTPError):
        await client.post(url, json=body)


def canary_weight(status: dict[str, Any], effective: bool = True) -> int:
    """The share of traffic the canary gets, which the traffic follows: `effectiveWeight` (read back
    from the router: with replicaRatio, the canary's share of the ready pods behind the shared
    Service), else `routedWeight` (last written to the router), else the step's `weight`; 0 without a
    canary. `effective=False` skips the read-back: the emulated API of the integration tier merges
    applied maps where a real API server replaces the fields the operator applied, so its shared
    Service never drops the track selector and the read-back stays 0 (the cluster tier and the demo
    run a real API server and follow the read-back)."""
    canary = status.get("canary") or {}
    if not canary.get("version"):
        return 0
    for key in ("effectiveWeight", "routedWeight", "weight")[0 if effective else 1 :]:
        if canary.get(key) is not None:
            return int(canary[key])
    return 0


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stable", default="v1")
    parser.add_argument(
        "--canary",
        default="v2-miscalibrated",
        help=f"a model ({', '.join(MODELS)}) or a scenario ({', '.join(SCENARIOS)})",
    )
    parser.add_argument("--fraudmodel", default="fraud-detector")
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--state", type=Path, required=True, help="directory for Prometheus data and the URL file")
    parser.add_argument("--rps", type=float, default=60.0)
    parser.add_argument("--seconds", type=float, default=1800.0)
    args = parser.parse_args()
    bento = Bento()
    bento.train([args.stable, SCENARIOS.get(args.canary, Scenario(args.canary)).model])
    servers = Servers(bento, args.state / "servers")
    prometheus = Prometheus(args.state / "prometheus")
    weight = 0

    async def follow_weight() -> None:
        nonlocal weight
        while True:
            proc = await asyncio.create_subprocess_exec(
                "kubectl", "get", "fraudmodel", args.fraudmodel, "-n", args.namespace, "-o", "json",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            out, _ = await proc.communicate()
            if proc.returncode == 0:
                weight = canary_weight(json.loads(out).get("status") or {})
            await asyncio.sleep(0.5)

    try:
        bodies = bento.payloads(3000, seed=99)
        stable = servers.start(args.stable, "stable", args.fraudmodel)
        canary = servers.start_scenario(args.canary, "canary", bodies, stable.url, args.fraudmodel)
        prometheus.scrape({"stable": stable.port, "canary": canary.port}, args.fraudmodel, args.namespace)
        prometheus.start()
        (args.state / "prometheus-url").write_text(prometheus.url)
        print(f"data plane up: stable {args.stable} at {stable.url}, canary {args.canary} at {canary.url}, "
              f"Prometheus at {prometheus.url}", flush=True)  # fmt: skip
        urls = {"stable": stable.url, "canary": canary.url}
        tasks = [
            asyncio.create_task(follow_weight()),
            asyncio.create_task(send_traffic(lambda: weight, urls, bodies, args.rps)),
        ]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=args.seconds)
    finally:
        prometheus.stop()
        servers.stop_all()


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt  # so that SIGTERM (./scripts/demo --down) stops the servers too


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
