"""Shared by the e2e tier's conftest and tests: the cluster handle, names, image building."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "fraudmodel-operator"
CLUSTER_NAME = os.environ.get("FRAUDMODEL_E2E_CLUSTER_NAME", "fraudmodel-e2e")
# The images scripts/images builds for the local real node (no registry) are named
# localhost/fraudmodel/...; kind gets images built with docker under the plain names.
_LOCAL = not os.environ.get("FRAUDMODEL_E2E_KUBECONFIG") and shutil.which("kind") is None
OPERATOR_IMAGE = os.environ.get(
    "FRAUDMODEL_E2E_OPERATOR_IMAGE", "localhost/fraudmodel/operator:dev" if _LOCAL else "fraudmodel-operator:dev"
)
BENTO_REPOSITORY = os.environ.get(
    "FRAUDMODEL_E2E_BENTO_REPOSITORY", "localhost/fraudmodel/fraud-detector" if _LOCAL else "fraud-detector"
)
BENTO_DIR = ROOT / "bentos" / "fraud_detector"
# The three versions the suite rolls out (the models scripts/dataplane.py trains): a good v1,
# a regressed v2-miscalibrated, a good v2.
GOOD, REGRESSED, NEXT = "v1", "v2-miscalibrated", "v2"
VERSIONS: dict[str, str | None] = {GOOD: None, REGRESSED: "miscalibrated", NEXT: None}
IMAGES_SCRIPTS = ROOT / "scripts" / "images"


def run(*args: str, timeout: float = 600, env: dict[str, str] | None = None, cwd: Path = ROOT) -> str:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd, check=False)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.stdout


def engine_and_kind() -> str | None:
    """Why kind cannot run here, or None when it can."""
    if shutil.which("kind") is None:
        return "kind is not on PATH"
    if shutil.which("docker") is None:
        return "docker is not on PATH (kind needs a container engine)"
    try:
        subprocess.run(["docker", "info"], capture_output=True, timeout=20, check=True)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return "`docker info` failed: no running container engine"
    return None


def tool(name: str) -> str | None:
    """$NAME, PATH, or the binaries scripts/cluster/build caches."""
    explicit = os.environ.get(name.upper())
    if explicit:
        return explicit
    found = shutil.which(name)
    if found:
        return found
    cache = Path(os.environ.get("FRAUDMODEL_CACHE", Path.home() / ".cache" / "fraudmodel-operator"))
    cached = sorted(cache.glob(f"k8s/*/bin/{name}"), reverse=True)
    return str(cached[0]) if cached else None


CLUSTER_SCRIPTS = ROOT / "scripts" / "cluster"


def real_node_missing() -> str | None:
    """Why ``scripts/cluster/up --real-node`` cannot run here, or None (binaries it builds itself)."""
    result = subprocess.run(
        [str(CLUSTER_SCRIPTS / "node"), "check"], capture_output=True, text=True, timeout=60, check=False
    )
    missing = [
        line.removeprefix("  - ")
        for line in result.stderr.splitlines()
        if line.startswith("  - ") and "scripts/cluster/build --node" not in line
    ]
    return "; ".join(missing) or None


def runtime() -> str:
    """Where the suite runs: an existing cluster, kind, or the local control plane with a real node."""
    if os.environ.get("FRAUDMODEL_E2E_KUBECONFIG"):
        return "existing"
    if engine_and_kind() is None:
        return "kind"
    return "real-node"


def skip_reason() -> str | None:
    if runtime() == "real-node":
        kind = engine_and_kind()
        node = real_node_missing()
        if node:
            return f"e2e needs a cluster: {kind}, and a real node cannot start here: {node}"
        if not (IMAGES_SCRIPTS / "load").exists():
            return "e2e on the real node needs scripts/images (the pause, operator and bento images)"
    for name in ("kubectl", "helm"):
        if tool(name) is None:
            return f"e2e needs {name}: not on PATH, not in ${name.upper()}, not built by scripts/cluster/build"
    return None


@dataclass(frozen=True)
class Cluster:
    kubeconfig: Path
    created: bool
    #: The host routes to Service ClusterIPs and pod IPs (the local real node's kube-proxy and bridge).
    routable: bool = False

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def kubectl(self, *args: str, timeout: float = 300) -> str:
        return run(tool("kubectl") or "kubectl", *args, timeout=timeout, env=self.env)

    def helm(self, *args: str, timeout: float = 600) -> str:
        return run(tool("helm") or "helm", *args, timeout=timeout, env=self.env)

    def get(self, *args: str) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.kubectl("get", *args, "-o", "json"))
        return result

    def service_ip(self, namespace: str, name: str) -> str:
        ip: str = self.get("service", name, "-n", namespace)["spec"]["clusterIP"]
        return ip

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float = 600, interval: float = 5) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = check()
            except AssertionError as error:
                last = error
            else:
                if last:
                    return last
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


def build_images(kind_cluster: str | None) -> None:
    if os.environ.get("FRAUDMODEL_E2E_SKIP_BUILD"):
        return
    run("docker", "build", "-t", OPERATOR_IMAGE, str(ROOT), timeout=1800)
    images = [OPERATOR_IMAGE]
    python = os.environ.get("FRAUDMODEL_BENTO_PYTHON", str(BENTO_DIR / ".venv" / "bin" / "python"))
    bentoml = str(Path(python).parent / "bentoml")
    for version, regression in VERSIONS.items():
        train = [python, "-m", "fraud_detector.train", "--version", version]
        if regression:
            train += ["--regressed", regression]
        run(*train, timeout=1800, cwd=BENTO_DIR)
        run(bentoml, "build", "--version", version, str(BENTO_DIR), timeout=1800, cwd=BENTO_DIR)
        image = f"{BENTO_REPOSITORY}:{version}"
        run(bentoml, "containerize", f"fraud_detector:{version}", "--image-tag", image, timeout=3600, cwd=BENTO_DIR)
        images.append(image)
    if kind_cluster:
        for image in images:
            run("kind", "load", "docker-image", image, "--name", kind_cluster, timeout=900)


def node_env() -> dict[str, str]:
    """FRAUDMODEL_CONTAINERD_ADDRESS, FRAUDMODEL_CTR, FRAUDMODEL_PAUSE_IMAGE of the local real node."""
    out = run(str(CLUSTER_SCRIPTS / "node"), "env")
    pairs = (line.removeprefix("export ").split("=", 1) for line in out.splitlines() if line.startswith("export "))
    return {key: value.strip("'\"") for key, value in pairs}


def load_real_node_images(names: list[str]) -> None:
    """Build (cached) and load the named images (pause, operator, fraud-detector) into the real node's containerd."""
    if not os.environ.get("FRAUDMODEL_E2E_SKIP_BUILD"):
        run(str(IMAGES_SCRIPTS / "build"), *names, timeout=7200)
    run(str(IMAGES_SCRIPTS / "load"), *names, env={**os.environ, **node_env()}, timeout=3600)
