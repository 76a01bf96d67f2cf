"""Create, update, repair, idle and bad input, through the real Kopf operator and an emulated API."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest

from tests.kopf_harness import DEPLOYMENTS, FM, HPAS, PDBS, SERVICES, Harness, eventually

pytestmark = pytest.mark.component


def fraudmodel(name: str = "bot", version: str = "v1", **serving: Any) -> dict[str, Any]:
    return {
        "apiVersion": "serving.riskml.io/v1alpha1",
        "kind": "FraudModel",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": "bot-detector", "version": version, "image": f"bot:{version}"},
            "serving": {"replicas": 3, **serving},
        },
    }


async def test_create_applies_owned_children_and_reaches_ready(harness: Harness) -> None:
    await harness.create(fraudmodel())
    deployment = await eventually(lambda: harness.get(DEPLOYMENTS, "bot-stable"))
    owner = deployment["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == ("FraudModel", "bot", "uid-bot", True)
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "bot:v1"
    for resource, name in ((SERVICES, "bot"), (SERVICES, "bot-stable"), (PDBS, "bot-stable")):
        child = await eventually(lambda r=resource, n=name: harness.get(r, n))
        assert child["metadata"]["ownerReferences"][0]["uid"] == "uid-bot"
    assert harness.get(HPAS, "bot-stable") is None, "no HPA without autoscaling"
    await eventually(lambda: harness.status("bot").get("phase") == "Progressing")

    await harness.ready("bot-stable")
    await eventually(lambda: harness.status("bot").get("phase") == "Ready")
    status = harness.status("bot")
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    assert status["observedGeneration"] == 1
    assert status["stable"]["version"] == "v1"
    assert status["stable"]["readyReplicas"] == 3


async def test_no_writes_when_nothing_changed(harness: Harness) -> None:
    await harness.create(fraudmodel())
    await eventually(lambda: harness.get(DEPLOYMENTS, "bot-stable"))
    await harness.ready("bot-stable")
    await eventually(lambda: harness.status("bot").get("phase") == "Ready")
    await asyncio.sleep(0.5)  # let the last status patch's own watch event settle
    before = len(harness.writes())
    reconciles = harness.metrics.reconciles.labels("unchanged")._value.get()
    await eventually(lambda: harness.metrics.reconciles.labels("unchanged")._value.get() >= reconciles + 3)
    assert len(harness.writes()) == before, [(r.method, str(r.url)) for r in harness.writes()[before:]]


async def test_spec_update_updates_children(harness: Harness) -> None:
    await harness.create(fraudmodel())
    await eventually(lambda: harness.get(DEPLOYMENTS, "bot-stable"))
    await harness.patch(FM, "bot", {"spec": {"serving": {"replicas": 5}}, "metadata": {"generation": 2}})
    await eventually(lambda: (harness.get(DEPLOYMENTS, "bot-stable") or {}).get("spec", {}).get("replicas") == 5)
    await eventually(lambda: harness.status("bot").get("observedGeneration") == 2)


async def test_child_deleted_by_hand_is_put_back(harness: Harness) -> None:
    await harness.create(fraudmodel())
    await eventually(lambda: harness.get(SERVICES, "bot-stable"))
    await harness.delete(SERVICES, "bot-stable")
    assert harness.get(SERVICES, "bot-stable") is None
    service = await eventually(lambda: harness.get(SERVICES, "bot-stable"))
    assert service["spec"]["selector"]["serving.riskml.io/track"] == "stable"


async def test_child_edited_by_hand_is_put_back(harness: Harness) -> None:
    await harness.create(fraudmodel())
    await eventually(lambda: harness.get(DEPLOYMENTS, "bot-stable"))
    await harness.patch(DEPLOYMENTS, "bot-stable", {"spec": {"replicas": 9}})
    await eventually(lambda: harness.get(DEPLOYMENTS, "bot-stable")["spec"]["replicas"] == 3)


async def test_autoscaling_makes_a_per_track_hpa_and_leaves_replicas_to_it(harness: Harness) -> None:
    await harness.create(fraudmodel(autoscaling={"minReplicas": 2, "maxReplicas": 8}))
    hpa = await eventually(lambda: harness.get(HPAS, "bot-stable"))
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    deployment = harness.get(DEPLOYMENTS, "bot-stable")
    assert deployment is not None
    assert "replicas" not in deployment["spec"], "the HPA owns replicas"


async def test_invalid_spec_sets_degraded_and_warns_without_touching_others(harness: Harness) -> None:
    bad = fraudmodel("bad")
    bad["spec"]["rollout"] = {"steps": [50, 10]}
    await harness.create(bad)
    await harness.create(fraudmodel("good"))
    await eventually(lambda: harness.status("bad").get("phase") == "Failed")
    degraded = next(c for c in harness.status("bad")["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True"
    assert degraded["reason"] == "InvalidSpec"
    assert "spec.rollout.steps" in degraded["message"]
    assert harness.get(DEPLOYMENTS, "bad-stable") is None
    warnings = await eventually(lambda: harness.events("InvalidSpec"))
    assert warnings[0]["type"] == "Warning"
    assert "spec.rollout.steps" in warnings[0]["message"]
    assert await eventually(lambda: harness.get(DEPLOYMENTS, "good-stable")), "the other FraudModel is served"


async def test_operator_never_writes_spec(harness: Harness) -> None:
    body = fraudmodel()
    await harness.create(copy.deepcopy(body))
    await eventually(lambda: harness.get(DEPLOYMENTS, "bot-stable"))
    await harness.ready("bot-stable")
    await eventually(lambda: harness.status("bot").get("phase") == "Ready")
    fm_writes = [r for r in harness.writes() if "/fraudmodels/" in str(r.url.path)]
    assert fm_writes, "status was written"
    for request in fm_writes:
        assert "spec" not in (request.data or {}), f"{request.method} {request.url} wrote spec"
    assert harness.get(FM, "bot")["spec"]["serving"] == body["spec"]["serving"]


async def test_router_missing_from_the_cluster_is_reported_not_crashed(harness: Harness) -> None:
    """The emulated cluster serves no Gateway API: the FraudModel says so, the operator carries on."""
    body = fraudmodel("routed")
    body["spec"]["rollout"] = {"trafficRouting": {"gatewayAPI": {"httpRoute": "routed"}}}
    await harness.create(body)
    await harness.create(fraudmodel("plain"))
    await eventually(lambda: harness.status("routed").get("phase") == "Failed")
    degraded = next(c for c in harness.status("routed")["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "RouterUnavailable"
    assert "HTTPRoute" in degraded["message"]
    warnings = await eventually(lambda: harness.events("RouterUnavailable"))
    assert warnings[0]["type"] == "Warning"
    await eventually(lambda: harness.get(DEPLOYMENTS, "plain-stable"))


async def test_one_status_write_per_change(harness: Harness) -> None:
    """`kubectl get fm -w` printed each row twice: a write with the replicas of the Deployment
    before the apply, then one catching up on the apply's own watch event."""
    await harness.create(fraudmodel())
    await eventually(lambda: harness.get(DEPLOYMENTS, "bot-stable"))
    await eventually(lambda: harness.status("bot").get("stable", {}).get("replicas") == 3)
    reconciles = harness.metrics.reconciles.labels("unchanged")._value.get()
    await eventually(lambda: harness.metrics.reconciles.labels("unchanged")._value.get() >= reconciles + 3)
    await harness.ready("bot-stable")
    await eventually(lambda: harness.status("bot").get("phase") == "Ready")
    reconciles = harness.metrics.reconciles.labels("unchanged")._value.get()
    await eventually(lambda: harness.metrics.reconciles.labels("unchanged")._value.get() >= reconciles + 3)
    status_writes = [r for r in harness.writes() if str(r.url.path).endswith("/status")]
    phases = [(r.data or {}).get("status", {}).get("phase") for r in status_writes]
    assert phases == ["Progressing", "Ready"], [r.data for r in status_writes]
