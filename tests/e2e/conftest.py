"""Fixtures of the end-to-end tier: a real cluster, the real images, the chart installed by helm.

Cluster-agnostic and KUBECONFIG-driven:

* ``FRAUDMODEL_E2E_KUBECONFIG`` set: use that cluster as it is (e.g. the local control plane of
  ``scripts/cluster/up``, or a kind cluster you created); the images must already be pullable
  there or loaded (``FRAUDMODEL_E2E_SKIP_BUILD=1`` skips building them).
* otherwise, with ``docker`` and ``kind``: create a kind cluster from ``kind-config.yaml``,
  build the operator and bento images, ``kind load`` them, and delete the cluster at the end
  (``FRAUDMODEL_KEEP_CLUSTER=1`` keeps it);
* otherwise (no container engine, e.g. CI machines without a registry): start the local
  control plane with a real node, ``scripts/cluster/up --real-node`` (containerd, kubelet,
  kube-proxy on this host), load the images into its containerd, and
  ``scripts/cluster/down`` it at the end, checking that nothing was left on the host.

Without a usable cluster the tests are skipped, saying why.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .e2e_cluster import (
    CLUSTER_NAME,
    CLUSTER_SCRIPTS,
    ROOT,
    Cluster,
    build_images,
    load_real_node_images,
    run,
    runtime,
    skip_reason,
)
from .host import host_state

#: Test files that install the chart and run the operator as a pod.
CHART_TESTS = {"test_kind.py"}
NO_CLUSTER_DNS = (
    "the local real node has no cluster DNS yet, so the operator pod cannot resolve kubernetes.default.svc "
    "(docs/cluster.md); the chart's tests run on kind or an existing cluster (FRAUDMODEL_E2E_KUBECONFIG)"
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    e2e = [item for item in items if item.get_closest_marker("e2e")]
    reason = skip_reason() if e2e else None
    if reason is None and runtime() == "real-node":
        # The chart's tests need the operator pod to reach the API server by name.
        for item in e2e:
            if item.path.name in CHART_TESTS:
                item.add_marker(pytest.mark.skip(reason=NO_CLUSTER_DNS))
        return
    if reason is None:
        return
    for item in e2e:
        item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    existing = os.environ.get("FRAUDMODEL_E2E_KUBECONFIG")
    if existing:
        found = Cluster(Path(existing), created=False, routable=bool(os.environ.get("FRAUDMODEL_E2E_ROUTABLE")))
        build_images(os.environ.get("FRAUDMODEL_E2E_KIND_CLUSTER"))
        yield found
        return
    if runtime() == "real-node":
        yield from real_node_cluster()
        return
    kubeconfig = tmp_path_factory.mktemp("kind") / "kubeconfig"
    clusters = run("kind", "get", "clusters").split()
    if CLUSTER_NAME not in clusters:
        run(
            "kind", "create", "cluster", "--name", CLUSTER_NAME, "--config", str(ROOT / "kind-config.yaml"),
            "--kubeconfig", str(kubeconfig), "--wait", "5m", timeout=900,
        )  # fmt: skip
    else:
        kubeconfig.write_text(run("kind", "get", "kubeconfig", "--name", CLUSTER_NAME))
    try:
        build_images(CLUSTER_NAME)
        yield Cluster(kubeconfig, created=True)
    finally:
        if not os.environ.get("FRAUDMODEL_KEEP_CLUSTER"):
            subprocess.run(["kind", "delete", "cluster", "--name", CLUSTER_NAME], capture_output=True, check=False)


def real_node_cluster() -> Iterator[Cluster]:
    """The local control plane with a real node, started for the session and removed after it."""
    before = host_state()
    up = subprocess.run(
        [str(CLUSTER_SCRIPTS / "up"), "--real-node", "--name", CLUSTER_NAME],
        stdout=subprocess.PIPE,
        text=True,
        timeout=3600,  # a cold build of the node's binaries is part of it
        check=False,
    )
    if up.returncode != 0:
        pytest.fail(f"scripts/cluster/up --real-node failed ({up.returncode}); its messages are above")
    kubeconfig = Path(up.stdout.strip().splitlines()[-1])
    try:
        load_real_node_images(["pause"])  # the model and operator images serve only the chart's tests
        yield Cluster(kubeconfig, created=True, routable=True)
    finally:
        if not os.environ.get("FRAUDMODEL_KEEP_CLUSTER"):
            down = subprocess.run(
                [str(CLUSTER_SCRIPTS / "down"), "--name", CLUSTER_NAME], capture_output=True, text=True, check=False
            )
            assert down.returncode == 0, f"scripts/cluster/down failed:\n{down.stderr}"
            left = host_state().difference(before)
            assert left.empty, f"the real node left this behind on the host: {left}"
