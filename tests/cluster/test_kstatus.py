"""kstatus (sigs.k8s.io/cli-utils/pkg/kstatus/status, what Flux, kpt and Config Sync use) reads
FraudModels right: Ready -> Current, rolling out -> InProgress, RolledBack/Failed -> Failed,
not yet observed -> InProgress.

The verdicts come from the library itself: tests/kstatus is a small Go program built with the
cluster tier's Go toolchain (cached under ~/.cache/fraudmodel-operator/tools), run over the
generated status samples and over statuses the real operator wrote on a real API server.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.cluster.conftest import REPO_ROOT, Cluster, Operator
from tests.cluster.test_operator import fraudmodel, status, wait_ready
from tests.status_samples import SAMPLES, served_status

from fraudmodel_operator.api import ABORT_ANNOTATION

pytestmark = pytest.mark.cluster

SOURCE = REPO_ROOT / "tests" / "kstatus"
CACHE = Path(os.environ.get("FRAUDMODEL_CACHE", Path.home() / ".cache" / "fraudmodel-operator"))


@pytest.fixture(scope="session")
def kstatus_binary() -> Path:
    """tests/kstatus built once per source version (go.mod, go.sum, main.go)."""
    go = shutil.which("go")
    if go is None:
        if os.environ.get("FRAUDMODEL_CLUSTER"):
            pytest.fail("the cluster tier needs the go command (it builds the control plane too)")
        pytest.skip("needs the go command to build tests/kstatus")
    digest = hashlib.sha256(b"".join((SOURCE / f).read_bytes() for f in ("go.mod", "go.sum", "main.go"))).hexdigest()
    binary = CACHE / "tools" / f"kstatus-{digest[:12]}"
    if not binary.exists():
        binary.parent.mkdir(parents=True, exist_ok=True)
        built = subprocess.run(
            ["nice", "-n", "10", go, "build", "-mod=readonly", "-trimpath", "-o", f"{binary}.tmp", "."],
            cwd=SOURCE,
            env={**os.environ, "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"},
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        assert built.returncode == 0, f"go build of tests/kstatus failed:\n{built.stderr[-3000:]}"
        Path(f"{binary}.tmp").rename(binary)
    return binary


def kstatus(binary: Path, *objects: dict[str, Any]) -> list[dict[str, str]]:
    """What the kstatus library computes for each object."""
    lines = "".join(json.dumps(o) + "\n" for o in objects)
    result = subprocess.run([str(binary)], input=lines, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


SAMPLE_FILES = sorted(SAMPLES.glob("*.yaml"))


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=[p.stem for p in SAMPLE_FILES])
def test_kstatus_of_each_generated_sample(kstatus_binary: Path, path: Path) -> None:
    sample = yaml.safe_load(path.read_text())
    (verdict,) = kstatus(kstatus_binary, sample["object"])
    assert verdict["status"] == sample["expected"]["kstatus"], verdict


def test_kstatus_of_what_the_real_operator_writes(
    cluster: Cluster, operator: Operator, namespace: str, kstatus_binary: Path
) -> None:
    def verdict(name: str) -> dict[str, str]:
        (found,) = kstatus(kstatus_binary, cluster.get_json("fraudmodel", name, "-n", namespace))
        return found

    # Not yet observed: applied while the operator is stopped, served with the CRD's status default.
    assert operator.proc is not None
    operator.proc.send_signal(signal.SIGSTOP)
    try:
        cluster.apply(fraudmodel("ks"), namespace)
        unseen = cluster.get_json("fraudmodel", "ks", "-n", namespace)
        assert unseen["status"] == served_status(), "the generated sample is what the API server serves"
        assert verdict("ks")["status"] == "InProgress"
    finally:
        operator.proc.send_signal(signal.SIGCONT)

    wait_ready(cluster, namespace, "ks", operator)
    assert verdict("ks")["status"] == "Current"

    # Rolling out: a canary held at its first step (Prometheus unreachable: inconclusive).
    rollout = {
        "steps": [20, 60],
        "interval": "5s",
        "progressDeadline": "1h",
        "analysis": {"prometheus": {"address": "http://127.0.0.1:9"}, "inconclusiveLimit": 1000},
    }
    cluster.apply(fraudmodel("ks", "v2", rollout=rollout), namespace)
    cluster.wait_until(
        "the canary at its first step",
        lambda: (status(cluster, namespace, "ks").get("canary") or {}).get("weight") == 20,
        timeout=120,
    )
    assert verdict("ks")["status"] == "InProgress"

    # Rolled back (abort): Failed, with the reason.
    cluster.kubectl("annotate", "fraudmodel", "ks", "-n", namespace, f"{ABORT_ANNOTATION}=v2")
    cluster.wait_until("the rollback", lambda: status(cluster, namespace, "ks").get("phase") == "RolledBack")
    rolled_back = verdict("ks")
    assert rolled_back["status"] == "Failed", rolled_back
    assert "aborted" in rolled_back["message"], rolled_back

    # Failed: a router whose API the cluster does not serve (no Gateway API CRDs here).
    routing = {"gatewayAPI": {"httpRoute": "ks-route", "parentRefs": [{"name": "gw"}]}}
    cluster.apply(fraudmodel("ks-failed", serving={"replicas": 1}, rollout={"trafficRouting": routing}), namespace)
    cluster.wait_until("Failed", lambda: status(cluster, namespace, "ks-failed").get("phase") == "Failed")
    assert verdict("ks-failed")["status"] == "Failed"
