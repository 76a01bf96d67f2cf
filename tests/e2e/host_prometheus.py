"""Debian's Prometheus on the host of the local real node, scraping its pods the chart's way.

The scrape jobs are those of ``manifests/prometheus.yaml`` (kubernetes_sd with the chart
README's relabelling, what kind runs in-cluster), given the cluster's kubeconfig: the host
routes to pod IPs through the node's bridge. It listens on the node's address, which the
operator's pods reach, so FraudModels point their analysis at it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

MANIFEST = Path(__file__).parent / "manifests" / "prometheus.yaml"


def host_ip() -> str:
    """The source address of the default route: the real node's InternalIP."""
    out = subprocess.run(["ip", "-4", "route", "get", "1.1.1.1"], capture_output=True, text=True, check=True).stdout
    words = out.split()
    return words[words.index("src") + 1]


def scrape_configs(kubeconfig: Path) -> list[dict[str, Any]]:
    """The in-cluster Prometheus' jobs, discovering through ``kubeconfig`` instead of a ServiceAccount."""
    configmap = next(d for d in yaml.safe_load_all(MANIFEST.read_text()) if d and d["kind"] == "ConfigMap")
    config: dict[str, Any] = yaml.safe_load(configmap["data"]["prometheus.yml"])
    jobs: list[dict[str, Any]] = config["scrape_configs"]
    for job in jobs:
        for sd in job.get("kubernetes_sd_configs", []):
            sd["kubeconfig_file"] = str(kubeconfig)
    return jobs


class HostPrometheus:
    def __init__(self, root: Path, kubeconfig: Path) -> None:
        self.root = root
        self.kubeconfig = kubeconfig
        with socket.socket() as s:
            s.bind(("", 0))
            self.port: int = s.getsockname()[1]
        self.ip = host_ip()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"

    def start(self) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise AssertionError(
                "prometheus is not installed (Debian package `prometheus`; ./scripts/test installs it)"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": "5s", "evaluation_interval": "5s"},
            "scrape_configs": scrape_configs(self.kubeconfig),
        }
        (self.root / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={self.root / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.root / 'tsdb'}",
                f"--web.listen-address={self.ip}:{self.port}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(self.root / "prometheus.log").open("wb"),
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited: {(self.root / 'prometheus.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"prometheus at {self.url} not ready within 60s")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
