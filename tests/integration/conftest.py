"""Integration tier: real Prometheus (Debian's package) scraping real BentoML servers of the bento.

Processes run on loopback ports and are stopped by the fixtures. Needs `prometheus` on PATH
and the bento's environment (FRAUDMODEL_BENTO_PYTHON, set by ./scripts/test); without them the
tier is skipped with the reason, except under CI, where it fails instead.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

ROOT = Path(__file__).parents[2]
BENTO = ROOT / "bentos" / "fraud_detector"
GOOD, GOOD_NEXT, MISCALIBRATED = "v1", "v2", "v2-miscalibrated"
MODELS = {GOOD: [], GOOD_NEXT: ["--seed", "7"], MISCALIBRATED: ["--regressed", "miscalibrated"]}


def _need(what: str, ok: bool) -> None:
    if ok:
        return
    if os.environ.get("CI"):
        pytest.fail(f"integration tier needs {what} (./scripts/test installs it)")
    pytest.skip(f"needs {what}: run ./scripts/test, which installs it")


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
    python: str
    home: Path

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "BENTOML_HOME": str(self.home), "BENTOML_DO_NOT_TRACK": "true", **extra}

    def payloads(self, count: int, seed: int) -> list[dict[str, Any]]:
        code = (
            "import json, sys; from fraud_detector.data import payloads; "
            f"json.dump(payloads({count}, {seed}), sys.stdout)"
        )
        out = subprocess.run([self.python, "-c", code], cwd=BENTO, env=self.env(), capture_output=True, check=True)
        result: list[dict[str, Any]] = json.loads(out.stdout)
        return result


@pytest.fixture(scope="session")
def bento(tmp_path_factory: pytest.TempPathFactory) -> Bento:
    python = os.environ.get("FRAUDMODEL_BENTO_PYTHON", str(BENTO / ".venv" / "bin" / "python"))
    _need("the bento environment (bentos/fraud_detector/scripts/setup-venv)", Path(python).exists())
    home = Path(os.environ.get("FRAUDMODEL_BENTO_HOME", BENTO / ".bentoml"))
    b = Bento(python, home)
    for version, args in MODELS.items():
        if not (home / "models" / "fraud_detector" / version).exists():
            subprocess.run(
                [python, "-m", "fraud_detector.train", "--version", version, *args],
                cwd=BENTO,
                env=b.env(),
                check=True,
            )
    return b


@dataclass
class Server:
    url: str
    port: int
    proc: subprocess.Popen[bytes]


@dataclass
class Servers:
    """BentoML servers started on demand, stopped at the end."""

    bento: Bento
    root: Path
    started: list[Server] = field(default_factory=list)

    def start(self, version: str, track: str, name: str = "fraud_detector") -> Server:
        port = free_port()
        # One BENTOML_HOME per server, sharing the model store: BentoML keeps its Prometheus
        # multiprocess files under BENTOML_HOME and wipes them at start, so two servers on one
        # home would export each other's metrics (pods never share it).
        home = self.root / f"bentoml-{port}"
        home.mkdir()
        (home / "models").symlink_to(self.bento.home / "models")
        env = self.bento.env(
            BENTOML_HOME=str(home),
            FRAUDMODEL_NAME=name,
            FRAUDMODEL_VERSION=version,
            FRAUDMODEL_TRACK=track,
            FRAUDMODEL_MODEL_TAG=f"fraud_detector:{version}",
        )
        proc = subprocess.Popen(
            [
                self.bento.python,
                "-m",
                "bentoml",
                "serve",
                "fraud_detector.service:FraudDetector",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            cwd=BENTO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=sys.stderr,
            start_new_session=True,
        )
        server = Server(f"http://127.0.0.1:{port}", port, proc)
        self.started.append(server)
        wait_http(f"{server.url}/readyz", 120, proc)
        return server

    def stop_all(self) -> None:
        for server in self.started:
            stop(server.proc)


@pytest.fixture
def servers(bento: Bento, tmp_path: Path) -> Iterator[Servers]:
    s = Servers(bento, tmp_path)
    try:
        yield s
    finally:
        s.stop_all()


@dataclass
class Prometheus:
    url: str
    config: Path
    data: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    def scrape(self, targets: dict[str, int], fraudmodel: str = "bot", namespace: str = "default") -> None:
        """Scrape each track's server every second, labelled as the chart's PodMonitor would."""
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {
                    "job_name": "bento",
                    "static_configs": [
                        {
                            "targets": [f"127.0.0.1:{port}"],
                            "labels": {"track": track, "fraudmodel": fraudmodel, "namespace": namespace},
                        }
                        for track, port in targets.items()
                    ],
                }
            ],
        }
        self.config.write_text(yaml.safe_dump(config))

    def start(self) -> None:
        binary = shutil.which("prometheus")
        assert binary is not None
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.data}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
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


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Prometheus]:
    _need("Prometheus (Debian package `prometheus`)", shutil.which("prometheus") is not None)
    port = free_port()
    prom = Prometheus(f"http://127.0.0.1:{port}", tmp_path / "prometheus.yml", tmp_path / "tsdb", port)
    try:
        yield prom
    finally:
        prom.stop()
