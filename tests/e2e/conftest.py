"""Fixtures of the end-to-end tier: a real cluster, the real images, the chart installed by helm.

Cluster-agnostic and KUBECONFIG-driven:

* ``FRAUDMODEL_E2E_KUBECONFIG`` set: use that cluster as it is (e.g. the local control plane of
  ``scripts/cluster/up``, or a kind cluster you created); the images must already be pullable
  there or loaded (``FRAUDMODEL_E2E_SKIP_BUILD=1`` skips building them).
* otherwise: create a kind cluster from ``kind-config.yaml`` (needs ``docker`` and ``kind``),
  build the operator and bento images, ``kind load`` them, and delete the cluster at the end
  (``FRAUDMODEL_KEEP_CLUSTER=1`` keeps it).

Without a usable cluster the tests are skipped, saying why.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .e2e_cluster import CLUSTER_NAME, ROOT, Cluster, build_images, run, skip_reason


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    e2e = [item for item in items if item.get_closest_marker("e2e")]
    reason = skip_reason() if e2e else None
    if reason is None:
        return
    for item in e2e:
        item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    existing = os.environ.get("FRAUDMODEL_E2E_KUBECONFIG")
    if existing:
        found = Cluster(Path(existing), created=False)
        build_images(os.environ.get("FRAUDMODEL_E2E_KIND_CLUSTER"))
        yield found
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
