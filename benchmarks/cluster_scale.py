"""1,000 FraudModels on the local control plane (kube-apiserver + kwok nodes).

    scripts/cluster/up --name scale --nodes 12      # kwok nodes take 110 pods each: --nodes 50 for 5,000
    .venv/bin/python benchmarks/cluster_scale.py --kubeconfig ~/.cache/fraudmodel-operator/clusters/scale/kubeconfig
    scripts/cluster/down --name scale

Runs the real `fraudmodel-operator run` out of cluster and prints: time until all
FraudModels are Ready, the operator's resident memory (now and its peak), its API
writes per second once idle (from its own counters, cross-checked with the API
server's request counters), and the time from applying one more FraudModel to all its
children existing. `--memtrace FILE` runs the operator under tracemalloc
(benchmarks/memtrace.py) and writes where its live memory was allocated to FILE, at the
moment the resident memory is read (its figures then include tracemalloc's own cost).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
METRICS_PORT = 18095


def kubectl(kubeconfig: str, *args: str, stdin: str | None = None) -> str:
    out = subprocess.run(
        ["kubectl", "--kubeconfig", kubeconfig, *args], input=stdin, capture_output=True, text=True, check=True
    )
    return out.stdout


def fraudmodel(i: int, namespace: str) -> dict[str, object]:
    return {
        "apiVersion": "serving.riskml.io/v1alpha1",
        "kind": "FraudModel",
        "metadata": {"name": f"fm-{i:04d}", "namespace": namespace},
        "spec": {
            "model": {"name": "m", "version": "v1", "image": "fraud-detector:v1"},
            "serving": {"replicas": 1, "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}}},
        },
    }


def ready_count(kubeconfig: str, namespace: str) -> int:
    items = json.loads(kubectl(kubeconfig, "get", "fraudmodels", "-n", namespace, "-o", "json"))["items"]
    return sum(
        1
        for fm in items
        for c in (fm.get("status") or {}).get("conditions", [])
        if c["type"] == "Ready" and c["status"] == "True"
    )


def operator_writes() -> float:
    text = httpx.get(f"http://127.0.0.1:{METRICS_PORT}/metrics").text
    return sum(float(v) for v in re.findall(r"^fraudmodel_operator_api_writes_total\{[^}]*\} (\S+)$", text, re.M))


def apiserver_writes(kubeconfig: str) -> float:
    text = kubectl(kubeconfig, "get", "--raw", "/metrics")
    total = 0.0
    for labels, value in re.findall(r"^apiserver_request_total\{([^}]*)\} (\S+)$", text, re.M):
        verb = re.search(r'verb="([A-Z]+)"', labels)
        resource = re.search(r'resource="([a-z]+)"', labels)
        if (
            verb
            and resource
            and verb.group(1) in ("APPLY", "PATCH", "CREATE", "DELETE")
            and resource.group(1)
            in (
                "fraudmodels",
                "services",
                "poddisruptionbudgets",
                "horizontalpodautoscalers",
            )
        ):
            total += float(value)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--idle-seconds", type=float, default=60)
    parser.add_argument("--ready-timeout", type=float, default=None, help="measure anyway after this many seconds")
    parser.add_argument("--namespace", default="scale", help="created for the run (a fresh one per run)")
    parser.add_argument("--memtrace", type=Path, default=None, help="write the operator's allocation sites here")
    args = parser.parse_args()
    kc, ns = args.kubeconfig, args.namespace
    kubectl(kc, "apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds" / "fraudmodel.yaml"))
    kubectl(kc, "wait", "--for=condition=Established", "crd/fraudmodels.serving.riskml.io")
    subprocess.run(["kubectl", "--kubeconfig", kc, "create", "namespace", ns], capture_output=True, check=False)
    env = {**os.environ, "KUBECONFIG": kc, "PYTHONPATH": str(ROOT / "operator")}
    command = [sys.executable, "-m", "fraudmodel_operator.cli"]
    if args.memtrace is not None:
        env["FRAUDMODEL_MEMTRACE"] = str(args.memtrace.resolve())
        command = [sys.executable, str(ROOT / "benchmarks" / "memtrace.py")]
    log = open(ROOT / ".local-scale-operator.log", "wb")  # noqa: SIM115 (lives as long as the operator)
    operator = subprocess.Popen(
        [*command, "run", "--standalone", "--metrics-port", str(METRICS_PORT), "--liveness-port", "18096"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        time.sleep(3)
        docs = "---\n".join(yaml.safe_dump(fraudmodel(i, ns)) for i in range(args.models))
        start = time.monotonic()
        kubectl(kc, "apply", "--server-side", "-f", "-", stdin=docs)
        applied = time.monotonic() - start
        ready = 0
        while ready < args.models and (args.ready_timeout is None or time.monotonic() - start < args.ready_timeout):
            time.sleep(max(2.0, args.models / 500))  # listing thousands of FraudModels loads the API server
            ready = ready_count(kc, ns)
            print(f"  {time.monotonic() - start:6.1f}s: {ready}/{args.models} Ready", flush=True)
        all_ready = time.monotonic() - start
        time.sleep(15)  # let the last status patches and watch events settle before measuring idle
        ours, server = operator_writes(), apiserver_writes(kc)
        time.sleep(args.idle_seconds)
        ours_idle = operator_writes() - ours
        server_idle = apiserver_writes(kc) - server
        proc_status = Path(f"/proc/{operator.pid}/status").read_text()
        rss, peak = (int(re.search(rf"{k}:\s+(\d+)", proc_status).group(1)) for k in ("VmRSS", "VmHWM"))  # type: ignore[union-attr]
        if args.memtrace is not None:
            os.kill(operator.pid, signal.SIGUSR1)

        one = fraudmodel(args.models, ns)
        t0 = time.monotonic()
        kubectl(kc, "apply", "-f", "-", stdin=yaml.safe_dump(one))
        name = one["metadata"]["name"]  # type: ignore[index]
        while True:
            found = kubectl(kc, "get", "deployments,services", "-n", ns, "-o", "name",
                            "-l", f"serving.riskml.io/fraudmodel={name}")  # fmt: skip
            if len(found.split()) == 3:  # Deployment, shared Service, stable Service
                break
            time.sleep(0.05)
        children = time.monotonic() - t0

        readiness = (
            f"all Ready after {all_ready:.1f}s" if ready == args.models else f"{ready} Ready after {all_ready:.1f}s"
        )
        print(f"\n{args.models} FraudModels: applied in {applied:.1f}s, {readiness}")
        print(
            f"operator resident memory with {args.models} FraudModels: {rss / 1024:.0f} MiB"
            f" (peak {peak / 1024:.0f} MiB)"
        )
        print(
            f"idle for {args.idle_seconds:.0f}s: operator writes {ours_idle:.0f} "
            f"({ours_idle / args.idle_seconds:.2f}/s); API server saw {server_idle:.0f} writes to "
            "FraudModels/Services/PDBs/HPAs from anyone"
        )
        print(f"one more FraudModel: all children exist {children:.2f}s after kubectl apply returned")
    finally:
        operator.terminate()
        operator.wait(timeout=30)
        subprocess.run(["kubectl", "--kubeconfig", kc, "delete", "namespace", ns, "--wait=false"],
                       capture_output=True, check=False)  # fmt: skip


if __name__ == "__main__":
    main()
