"""The uninstall order of docs/deploy.md, on a real API server: FraudModels go while the
operator runs; after it is gone they block on its finalizer until released by hand, and their
children are still garbage-collected."""

from __future__ import annotations

import signal

import pytest
from tests.cluster.conftest import Cluster, Operator
from tests.cluster.test_operator import fraudmodel, wait_ready

pytestmark = pytest.mark.cluster


def gone(cluster: Cluster, namespace: str, *objects: str) -> bool:
    found = cluster.kubectl("get", *objects, "-n", namespace, "--ignore-not-found", "-o", "name")
    return found.stdout.strip() == ""


def test_uninstall_order(cluster: Cluster, operator: Operator, namespace: str) -> None:
    cluster.apply(fraudmodel("first", serving={"replicas": 2}), namespace)
    cluster.apply(fraudmodel("late", serving={"replicas": 2}), namespace)
    wait_ready(cluster, namespace, "first", operator)
    wait_ready(cluster, namespace, "late", operator)

    # The documented order: FraudModels first, while the operator runs.
    deleted = cluster.kubectl(
        "delete", "fraudmodel", "first", "-n", namespace, "--wait", "--timeout=60s", check=False, timeout=70
    )
    assert deleted.returncode == 0, f"{deleted.stderr}\n{operator.tail()}"
    cluster.wait_until("first's children collected", lambda: gone(cluster, namespace, "deployment/first-stable"))

    # The other way round: the operator is gone, the FraudModel waits on its finalizer.
    operator.kill(signal.SIGTERM)
    try:
        cluster.kubectl("delete", "fraudmodel", "late", "-n", namespace, "--wait=false")
        blocked = cluster.kubectl(
            "wait", "--for=delete", "fraudmodel/late", "-n", namespace, "--timeout=5s", check=False, timeout=15
        )
        assert blocked.returncode != 0, "deleted without the operator: the finalizer did not hold it"
        fm = cluster.get_json("fraudmodel", "late", "-n", namespace)
        assert fm["metadata"]["deletionTimestamp"]
        assert fm["metadata"]["finalizers"] == ["serving.riskml.io/finalizer"]

        # Released by hand, as documented: it goes, and so do its children.
        cluster.kubectl(
            "patch", "fraudmodel", "late", "-n", namespace, "--type=merge", "-p", '{"metadata":{"finalizers":null}}'
        )
        cluster.wait_until("late to go", lambda: gone(cluster, namespace, "fraudmodel/late"))
        cluster.wait_until(
            "late's children collected",
            lambda: gone(cluster, namespace, "deployment/late-stable", "service/late", "service/late-stable"),
        )
    finally:
        operator.start()
