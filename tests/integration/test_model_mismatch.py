"""A pod serving another model than the FraudModel declares: the real bento refuses readiness saying why,
and the operator puts that reason and message on the FraudModel (Degraded) and in a Warning Event.

Kubernetes is emulated (kmock); the test plays the kubelet: the stable Deployment's pod, as its
template says, runs and fails its readiness probe, and its probe (the template's named port)
reaches a real BentoML server of the bento started with version v1 declared and model v2 loaded.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from scripts.dataplane import Bento, Server, Servers

from tests.integration.conftest import GOOD, GOOD_NEXT
from tests.kopf_harness import DEPLOYMENTS, NS, Harness, eventually, operator_harness

pytestmark = pytest.mark.integration


def fraudmodel() -> dict[str, Any]:
    return {
        "apiVersion": "serving.riskml.io/v1alpha1",
        "kind": "FraudModel",
        "metadata": {"name": "bot"},
        "spec": {
            "model": {"name": "fraud-detector", "version": GOOD, "image": f"fraud-detector:{GOOD}"},
            "serving": {"replicas": 1},
        },
    }


def pod_of(deployment: dict[str, Any], server: Server, not_ready_for: timedelta) -> dict[str, Any]:
    """The Deployment's pod as the kubelet reports it: running, not ready, at the server's address and port."""
    template = copy.deepcopy(deployment["spec"]["template"])
    for port in template["spec"]["containers"][0].get("ports") or []:
        if port.get("name") == "http":
            port["containerPort"] = server.port  # every server shares loopback: its own port stands for 3000
    since = (datetime.now(UTC) - not_ready_for).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "bot-stable-7d9c-x2", "namespace": NS, "labels": template["metadata"]["labels"]},
        "spec": template["spec"],
        "status": {
            "phase": "Running",
            "podIP": "127.0.0.1",
            "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": since}],
            "containerStatuses": [{"name": "serving", "ready": False, "state": {"running": {"startedAt": since}}}],
        },
    }


def degraded(harness: Harness) -> dict[str, Any] | None:
    found = next((c for c in harness.status("bot").get("conditions", []) if c["type"] == "Degraded"), None)
    return found if found and found["status"] == "True" else None


async def test_a_pod_loaded_with_another_version_is_degraded_with_the_bentos_reason(
    bento: Bento, servers: Servers
) -> None:
    server = servers.start(GOOD, "stable", model=GOOD_NEXT, ready=False)  # declares v1, loads v2
    async with httpx.AsyncClient() as client:
        said = await client.get(f"{server.url}/readyz", timeout=10)
    assert said.status_code == 503
    assert said.json()["reason"] == "ModelVersionMismatch", said.text

    async with operator_harness() as harness:
        await harness.create(fraudmodel())
        deployment = await eventually(lambda: harness.get(DEPLOYMENTS, "bot-stable"))
        pod = pod_of(deployment, server, not_ready_for=timedelta(minutes=3))
        created = await harness.kmock.post(f"/api/v1/namespaces/{NS}/pods", json=pod)
        assert created.status < 300, await created.text()

        condition = await eventually(lambda: degraded(harness), within=30)
        assert condition["reason"] == "ModelVersionMismatch", condition
        assert said.json()["message"] in condition["message"], condition["message"]
        assert "stable pod bot-stable-7d9c-x2" in condition["message"]
        status = harness.status("bot")
        assert status["phase"] != "Ready"
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "False"
        (event,) = await eventually(lambda: harness.events("ModelVersionMismatch"), within=30)
        assert event["type"] == "Warning"
        assert event["message"] == condition["message"]
        # the message holds still while the pod stays so: no new Event, no status rewrite per reconcile
        reconciles = harness.metrics.reconciles.labels("unchanged")._value.get()
        await eventually(lambda: harness.metrics.reconciles.labels("unchanged")._value.get() >= reconciles + 3)
        assert len(harness.events("ModelVersionMismatch")) == 1
