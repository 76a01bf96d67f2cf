"""Debian's Prometheus on the host of the local real node, scraping its pods the chart's way.

The scrape jobs are those of ``manifests/prometheus.yaml`` (the chart README's relabelling,
what kind runs in-cluster with kubernetes_sd): the host routes to pod IPs through the node's
bridge. It listens on the node's address, which the operator's pods reach, so FraudModels
point their analysis at it.

Debian builds Prometheus without Kubernetes service discovery (2.42.0+ds: "field
kubernetes_sd_configs not found", found on the first real run), so the pod jobs read a
file_sd file that a thread rewrites from the API's pods, with the meta labels
kubernetes_sd's pod role gives (``__meta_kubernetes_pod_label_*``, ``..._annotation_*``,
namespace, name, one target per container port): the chart's relabelling itself is what
Prometheus applies. Jobs of other roles (the operator's endpoints) are left out.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import threading
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


def scrape_configs(targets: Path) -> list[dict[str, Any]]:
    """The in-cluster Prometheus' pod jobs, their kubernetes_sd replaced by ``targets`` (file_sd)."""
    configmap = next(d for d in yaml.safe_load_all(MANIFEST.read_text()) if d and d["kind"] == "ConfigMap")
    config: dict[str, Any] = yaml.safe_load(configmap["data"]["prometheus.yml"])
    jobs: list[dict[str, Any]] = []
    for job in config["scrape_configs"]:
        sds = job.pop("kubernetes_sd_configs", [])
        if sds and all(sd.get("role") == "pod" for sd in sds):
            jobs.append({**job, "file_sd_configs": [{"files": [str(targets)], "refresh_interval": "5s"}]})
    return jobs


def _meta_name(key: str) -> str:
    """kubernetes_sd's label name for a Kubernetes label or annotation key."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", key)


def pod_targets(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """file_sd target groups with the labels kubernetes_sd's pod role gives each running pod."""
    groups: list[dict[str, Any]] = []
    for pod in pods:
        ip = pod.get("status", {}).get("podIP")
        if not ip or pod["status"].get("phase") != "Running":
            continue
        meta = pod["metadata"]
        labels = {
            "__meta_kubernetes_namespace": meta["namespace"],
            "__meta_kubernetes_pod_name": meta["name"],
            "__meta_kubernetes_pod_ip": ip,
            "__meta_kubernetes_pod_node_name": pod["spec"].get("nodeName", ""),
            **{f"__meta_kubernetes_pod_label_{_meta_name(k)}": v for k, v in meta.get("labels", {}).items()},
            **{f"__meta_kubernetes_pod_annotation_{_meta_name(k)}": v for k, v in meta.get("annotations", {}).items()},
        }
        for container in pod["spec"]["containers"]:
            for port in container.get("ports", []):
                groups.append(
                    {
                        "targets": [f"{ip}:{port['containerPort']}"],
                        "labels": {
                            **labels,
                            "__meta_kubernetes_pod_container_name": container["name"],
                            "__meta_kubernetes_pod_container_port_number": str(port["containerPort"]),
                            "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
                        },
                    }
                )
    return groups


class HostPrometheus:
    def __init__(self, root: Path, kubeconfig: Path, kubectl: str) -> None:
        self.root = root
        self.kubeconfig = kubeconfig
        self.kubectl = kubectl
        self.targets = root / "pods.json"
        self._stop = threading.Event()
        self._discovery = threading.Thread(target=self._discover, daemon=True)
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
            "scrape_configs": scrape_configs(self.targets),
        }
        self._write_targets()
        self._discovery.start()
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

    def _write_targets(self) -> None:
        out = subprocess.run(
            [self.kubectl, "--kubeconfig", str(self.kubeconfig), "get", "pods", "-A", "-o", "json"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        if out.returncode != 0:
            return  # the API is busy: keep the last targets
        groups = pod_targets(json.loads(out.stdout)["items"])
        partial = self.targets.with_suffix(".tmp")
        partial.write_text(json.dumps(groups))
        partial.replace(self.targets)  # Prometheus never reads half a file

    def _discover(self) -> None:
        while not self._stop.wait(2):
            try:
                self._write_targets()
            except (OSError, subprocess.SubprocessError, ValueError):
                continue

    def stop(self) -> None:
        self._stop.set()
        if self._discovery.is_alive():
            self._discovery.join(timeout=40)
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
