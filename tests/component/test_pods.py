"""A model pod that cannot start is surfaced on the FraudModel (the operator watches its pods)."""

from __future__ import annotations

from typing import Any

import aiohttp.web
import pytest

from tests.component.test_reconcile import fraudmodel
from tests.kopf_harness import DEPLOYMENTS, NS, PODS, Harness, eventually

pytestmark = pytest.mark.component


def model_pod(name: str, waiting: tuple[str, str]) -> dict[str, Any]:
    reason, message = waiting
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {
                "app.kubernetes.io/managed-by": "fraudmodel-operator",
                "serving.riskml.io/fraudmodel": "bot",
                "serving.riskml.io/track": "stable",
            },
        },
        "status": {
            "phase": "Pending",
            "conditions": [{"type": "Ready", "status": "False"}],
            "containerStatuses": [{"name": "serving", "state": {"waiting": {"reason": reason, "message": message}}}],
        },
    }


def degraded(harness: Harness) -> dict[str, Any] | None:
    conditions = {c["type"]: c for c in harness.status("bot").get("conditions", [])}
    found = conditions.get("Degraded")
    return found if found and found["status"] == "True" else None


async def test_image_pull_error_is_degraded_with_the_pods_reason_and_an_event(harness: Harness) -> None:
    await harness.create(fraudmodel())
    await eventually(lambda: harness.get(DEPLOYMENTS, "bot-stable"))
    await eventually(lambda: harness.status("bot").get("phase") == "Progressing")
    assert degraded(harness) is None

    pod = model_pod("bot-stable-abc", ("ImagePullBackOff", 'Back-off pulling image "bot:v1"'))
    resp = await harness.kmock.post(f"/api/v1/namespaces/{NS}/pods", json=pod)
    assert resp.status < 300, await resp.text()

    condition = await eventually(lambda: degraded(harness))
    assert condition["reason"] == "ImagePullFailed"
    assert condition["message"] == 'stable pod bot-stable-abc: ImagePullBackOff: Back-off pulling image "bot:v1"'
    assert harness.status("bot")["phase"] == "Progressing"
    (event,) = await eventually(lambda: harness.events("ImagePullFailed"))
    assert event["type"] == "Warning"
    assert event["source"]["component"] == event["reportingComponent"] == "fraudmodel-operator"
    assert "bot-stable-abc" in event["message"]

    # The pod goes: so does the problem.
    await harness.delete(PODS, "bot-stable-abc")
    await eventually(lambda: degraded(harness) is None)


async def test_a_pod_refusing_readiness_is_degraded_with_the_reason_its_endpoint_gives(harness: Harness) -> None:
    """The kubelet drops the probe body; the operator asks the pod's readiness endpoint itself."""
    body = {"ready": "false", "reason": "ModelVersionMismatch", "message": "declared v1 but the loaded model is v2"}

    async def readyz(_: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.json_response(body, status=503)

    app = aiohttp.web.Application()
    app.router.add_get("/readyz", readyz)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        await harness.create(fraudmodel())
        await eventually(lambda: harness.get(DEPLOYMENTS, "bot-stable"))
        pod = model_pod("bot-stable-abc", ("", ""))
        pod["spec"] = {
            "containers": [
                {
                    "name": "serving",
                    "ports": [{"name": "http", "containerPort": port}],
                    "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}},
                }
            ]
        }
        pod["status"] = {
            "phase": "Running",
            "podIP": "127.0.0.1",
            "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            "containerStatuses": [{"name": "serving", "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}],
        }
        resp = await harness.kmock.post(f"/api/v1/namespaces/{NS}/pods", json=pod)
        assert resp.status < 300, await resp.text()

        condition = await eventually(lambda: degraded(harness))
        assert condition["reason"] == "ModelVersionMismatch"
        assert condition["message"] == (
            "stable pod bot-stable-abc: not ready since 2026-01-01T00:00:00Z: declared v1 but the loaded model is v2 "
            "(its readiness endpoint)"
        )
        (event,) = await eventually(lambda: harness.events("ModelVersionMismatch"))
        assert event["type"] == "Warning"
        assert event["message"] == condition["message"]
    finally:
        await runner.cleanup()
