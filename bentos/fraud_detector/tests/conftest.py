"""Shared fixtures: a throwaway BentoML home with trained models, and real servers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

BENTO_DIR = Path(__file__).resolve().parents[1]
GOOD = "v1"
BAD = "v2-miscalibrated"
REFUSED = "v3-shuffled"  # fails the release gate: saved, never served
READY_DEADLINE_S = 90.0
# Fewer bootstrap resamples than the CLI's default: the intervals are not under test here.
FAST = ("--resamples", "100")


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRAUDMODEL_", "BENTOML_"))}
    env.update(BENTOML_HOME=str(home), BENTOML_DO_NOT_TRACK="true", PYTHONUNBUFFERED="1", **extra)
    return env


@dataclass(frozen=True)
class Store:
    home: Path

    def env(self, **extra: str) -> dict[str, str]:
        return _env(self.home, **extra)

    def run(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *args],
            cwd=BENTO_DIR,
            env=self.env(**extra),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """A BentoML home with a good and a regressed model, trained by the real CLI."""
    s = Store(tmp_path_factory.mktemp("bentoml-home"))
    for args in (
        ["--version", GOOD],
        ["--version", BAD, "--regressed", "miscalibrated"],
        ["--version", REFUSED, "--regressed", "shuffled_labels"],
    ):
        done = s.run("-m", "fraud_detector.train", *args, *FAST)
        assert done.returncode == 0, done.stdout + done.stderr
    return s


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def _wait_ready(server: Server, probe: str = "/readyz") -> None:
    deadline = time.monotonic() + READY_DEADLINE_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.logs()}")
        try:
            if httpx.get(server.url + probe, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)  # polling interval of a condition with a deadline
    raise TimeoutError(f"server not ready in {READY_DEADLINE_S}s:\n{server.logs()}")


def _stop(server: Server) -> None:
    if server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait(timeout=10)


StartServer = Callable[..., Server]


@pytest.fixture(scope="session")
def start_server(store: Store, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartServer]:
    """Start ``bentoml serve`` on a free loopback port; every server is stopped at the end."""
    servers: list[Server] = []

    def start(
        target: str = "fraud_detector.service:FraudDetector", *, ready: bool = True, **env: str
    ) -> Server:
        """``ready=False``: wait until the server is live only (it is expected to refuse readiness)."""
        port = free_port()
        workdir = tmp_path_factory.mktemp("server")
        log = workdir / "server.log"
        # A BENTOML_HOME per server that shares the store's models and bentos:
        # BentoML keeps its Prometheus multiprocess files under BENTOML_HOME and
        # wipes them when a server starts, so servers must not share one.
        home = workdir / "home"
        home.mkdir()
        for sub in ("models", "bentos"):
            (store.home / sub).mkdir(exist_ok=True)
            (home / sub).symlink_to(store.home / sub)
        with log.open("wb") as fh:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bentoml",
                    "serve",
                    target,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                cwd=BENTO_DIR,
                env=_env(home, **env),
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = Server(f"http://127.0.0.1:{port}", proc, log)
        servers.append(server)
        try:
            _wait_ready(server, "/readyz" if ready else "/livez")
        except BaseException:
            _stop(server)
            raise
        return server

    yield start
    for server in servers:
        _stop(server)


@pytest.fixture(scope="session")
def server(start_server: StartServer) -> Server:
    """The good model as the canary track (labels must follow the environment)."""
    return start_server(
        FRAUDMODEL_MODEL_TAG=f"fraud_detector:{GOOD}", FRAUDMODEL_TRACK="canary", FRAUDMODEL_THRESHOLD="0.5"
    )
