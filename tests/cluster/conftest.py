"""Fixtures for the cluster tier: a real control plane with kwok fake nodes.

The session-scoped ``cluster`` fixture yields a :class:`Cluster`:

* with ``FRAUDMODEL_KUBECONFIG`` set, it uses that running cluster as it is (start one
  with ``scripts/cluster/up``; ``eval "$(scripts/cluster/env)"`` exports the variable)
  and never stops it;
* otherwise it starts a cluster with ``scripts/cluster/up`` and stops it with
  ``scripts/cluster/down`` at the end of the session (``FRAUDMODEL_KEEP_CLUSTER=1``
  keeps it running). That needs the binaries of ``scripts/cluster/build``; when they
  are not built the tests are skipped, unless ``FRAUDMODEL_CLUSTER=1`` asks to build
  them on the spot (tens of minutes on a cold cache).
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
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SCRIPTS = REPO_ROOT / "scripts" / "cluster"
TEST_CLUSTER_NAME = os.environ.get("FRAUDMODEL_TEST_CLUSTER_NAME", "fraudmodel-test")
UP_TIMEOUT_SECONDS = 60 * 60  # a cold build under FRAUDMODEL_CLUSTER=1 takes long

T = TypeVar("T")


@dataclass(frozen=True)
class Cluster:
    """A running cluster: its kubeconfig and a kubectl bound to it."""

    kubeconfig: Path
    kubectl_binary: str
    #: Component logs (kwok runtime, when the fixture started the cluster), else None.
    logs_dir: Path | None = None

    def kubectl(
        self, *args: str, check: bool = True, stdin: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster; raises on a non-zero exit when ``check``."""
        return subprocess.run(
            [self.kubectl_binary, "--kubeconfig", str(self.kubeconfig), *args],
            check=check,
            capture_output=True,
            text=True,
            input=stdin,
            timeout=timeout,
        )

    def get_json(self, *args: str) -> Any:
        """``kubectl get ARGS -o json``, parsed."""
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def apply(self, manifest: str, namespace: str | None = None) -> None:
        """``kubectl apply -f -`` the given YAML/JSON text."""
        ns = ["--namespace", namespace] if namespace else []
        self.kubectl("apply", *ns, "-f", "-", stdin=manifest)

    @staticmethod
    def wait_until(
        what: str,
        probe: Callable[[], T | None],
        timeout: float = 120,
        interval: float = 1,
        diagnose: Callable[[], str] | None = None,
    ) -> T:
        """Poll ``probe`` until it returns something truthy; fail naming ``what`` at the deadline.

        ``diagnose``, if given, is called on timeout and its text added to the failure.
        """
        deadline = time.monotonic() + timeout
        last: T | None = None
        while time.monotonic() < deadline:
            last = probe()
            if last:
                return last
            time.sleep(interval)
        details = f"\n{diagnose()}" if diagnose else ""
        pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r}){details}")

    def log_tail(self, component: str, lines: int = 20) -> str:
        """The end of a component's log (e.g. "metrics-server"), for failure messages."""
        if self.logs_dir is None or not (self.logs_dir / f"{component}.log").exists():
            return f"(no {component} log)"
        text = (self.logs_dir / f"{component}.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def _bin_dir() -> Path | None:
    """The build cache's bin dir if every binary the cluster needs is there."""
    needed = [
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kubectl",
        "etcd",
        "kwok",
        "kwokctl",
        "metrics-server",
    ]
    result = subprocess.run(
        [str(CLUSTER_SCRIPTS / "build"), "--check", "--print-bin-dir", *needed],
        capture_output=True,
        text=True,
        check=False,
    )
    return Path(result.stdout.strip()) if result.returncode == 0 else None


def _cache_dir() -> Path:
    return Path(os.environ.get("FRAUDMODEL_CACHE", Path.home() / ".cache" / "fraudmodel-operator"))


def _kubectl_binary(bin_dir: Path | None) -> str:
    if bin_dir is not None and (bin_dir / "kubectl").exists():
        return str(bin_dir / "kubectl")
    found = shutil.which("kubectl")
    if found is None:
        pytest.skip("no kubectl: run scripts/cluster/build or put kubectl on PATH")
    return found


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A running cluster for the whole session (reused, or started and stopped here)."""
    existing = os.environ.get("FRAUDMODEL_KUBECONFIG")
    if existing:
        yield Cluster(kubeconfig=Path(existing), kubectl_binary=_kubectl_binary(_bin_dir()))
        return

    if _bin_dir() is None and not os.environ.get("FRAUDMODEL_CLUSTER"):
        pytest.skip(
            "control-plane binaries not built: run scripts/cluster/build (tens of minutes cold), "
            "set FRAUDMODEL_CLUSTER=1 to build them here, or FRAUDMODEL_KUBECONFIG to use a running cluster"
        )

    kubeconfig = tmp_path_factory.mktemp("cluster") / "kubeconfig"
    up = subprocess.run(
        [str(CLUSTER_SCRIPTS / "up"), "--name", TEST_CLUSTER_NAME, "--kubeconfig", str(kubeconfig)],
        capture_output=True,
        text=True,
        check=False,
        timeout=UP_TIMEOUT_SECONDS,
    )
    try:
        if up.returncode != 0:
            pytest.fail(f"scripts/cluster/up failed ({up.returncode}):\n{up.stderr[-4000:]}")
        yield Cluster(
            kubeconfig=kubeconfig,
            kubectl_binary=_kubectl_binary(_bin_dir()),
            logs_dir=_cache_dir() / "kwok" / "clusters" / TEST_CLUSTER_NAME / "logs",
        )
    finally:
        if not os.environ.get("FRAUDMODEL_KEEP_CLUSTER"):
            subprocess.run(
                [str(CLUSTER_SCRIPTS / "down"), "--name", TEST_CLUSTER_NAME],
                capture_output=True,
                text=True,
                check=False,
                timeout=120,
            )


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace, deleted (without waiting) after the test."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


# ---------------------------------------------------------------- the operator under test


@pytest.fixture(scope="session")
def crd(cluster: Cluster) -> None:
    applied = cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", "-f", str(REPO_ROOT / "crds" / "fraudmodel.yaml"), check=False
    )
    if applied.returncode != 0:
        pytest.fail(f"the API server rejected crds/fraudmodel.yaml:\n{applied.stderr}")
    cluster.kubectl("wait", "--for=condition=Established", "crd/fraudmodels.serving.riskml.io", "--timeout=60s")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Operator:
    """The real `fraudmodel-operator run`, out of cluster, as a process we can kill."""

    def __init__(self, cluster: Cluster, log: Path) -> None:
        self.cluster = cluster
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.cluster.kubeconfig),
            "PYTHONPATH": str(REPO_ROOT / "operator"),
            "RECONCILE_INTERVAL": "2",
        }
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "fraudmodel_operator.cli",
                    "run",
                    "--standalone",
                    "--metrics-port",
                    "0",
                    "--liveness-port",
                    str(_free_port()),  # helpers and CI may run several cluster sessions side by side
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout=30)
        self.proc = None

    def tail(self) -> str:
        return self.log.read_text()[-3000:]


@pytest.fixture(scope="session")
def operator(cluster: Cluster, crd: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    op = Operator(cluster, tmp_path_factory.mktemp("operator") / "operator.log")
    op.start()
    try:
        yield op
    finally:
        if op.proc is not None:
            op.kill(signal.SIGTERM)
