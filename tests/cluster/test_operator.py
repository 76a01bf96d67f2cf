"""The operator against a real kube-apiserver, controller-manager, scheduler and kwok nodes.

What the emulated API cannot prove: the API server accepts our CRD, our examples and
rejects the invalid ones (schema and CEL), takes our server-side applies and status
patches, the garbage collector follows our owner references, the HPA controller scales
what we leave to it, and the real `fraudmodel-operator run` resumes after SIGKILL.
"""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.cluster.conftest import REPO_ROOT, Cluster, Operator
from tests.unit.test_api import RULE_CASES

pytestmark = pytest.mark.cluster

EXAMPLES = REPO_ROOT / "examples"
VALID = sorted(p for p in EXAMPLES.glob("*.yaml") if "kind: FraudModel" in p.read_text())
INVALID = sorted((EXAMPLES / "invalid").glob("*.yaml"))
# What the API server cannot check (a custom check's PromQL) is caught by the operator.
OPERATOR_ONLY = [p for p in INVALID if re.search(r"^# expect-caught-by: operator$", p.read_text(), re.M)]
AT_ADMISSION = [p for p in INVALID if p not in OPERATOR_ONLY]


def fraudmodel(name: str, version: str = "v1", **spec: Any) -> str:
    body: dict[str, Any] = {
        "apiVersion": "serving.riskml.io/v1alpha1",
        "kind": "FraudModel",
        "metadata": {"name": name},
        "spec": {"model": {"name": "fraud-detector", "version": version, "image": f"fraud-detector:{version}"}, **spec},
    }
    return yaml.safe_dump(body)


def status(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = cluster.get_json("fraudmodel", name, "-n", namespace).get("status") or {}
    return result


def wait_ready(cluster: Cluster, namespace: str, name: str, operator: Operator) -> None:
    done = cluster.kubectl(
        "wait",
        "--for=condition=Ready",
        f"fraudmodel/{name}",
        "-n",
        namespace,
        "--timeout=120s",
        check=False,
        timeout=130,
    )
    assert done.returncode == 0, f"{done.stderr}\noperator log:\n{operator.tail()}"


# ---------------------------------------------------------------- the API server's verdict


@pytest.mark.parametrize("path", VALID, ids=[p.stem for p in VALID])
def test_api_server_accepts_each_valid_example(cluster: Cluster, crd: None, path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    ns = doc["metadata"].get("namespace", "default")
    cluster.kubectl("create", "namespace", ns, check=False)
    result = cluster.kubectl("apply", "--dry-run=server", "-f", str(path), check=False)
    assert result.returncode == 0, result.stderr


def expected_message(path: Path) -> str:
    expected = re.search(r"^# expect-message: (.+)$", path.read_text(), re.M)
    assert expected is not None, f"{path.name} lacks an expect-message comment"
    return expected.group(1).strip()


@pytest.mark.parametrize("path", AT_ADMISSION, ids=[p.stem for p in AT_ADMISSION])
def test_api_server_rejects_each_invalid_example(cluster: Cluster, crd: None, path: Path) -> None:
    result = cluster.kubectl("apply", "--dry-run=server", "-f", str(path), check=False)
    assert result.returncode != 0, f"{path.name} was accepted"
    assert expected_message(path).lower() in result.stderr.lower(), result.stderr


@pytest.mark.parametrize(("doc", "rule"), [(c[1], c[3]) for c in RULE_CASES], ids=[c[0] for c in RULE_CASES])
def test_api_server_and_operator_agree_on_every_rule(cluster: Cluster, crd: None, doc: Any, rule: str | None) -> None:
    """The CEL rules and the operator's checks accept and refuse the same FraudModels (tests/unit/test_api.py)."""
    manifest = {"apiVersion": "serving.riskml.io/v1alpha1", "kind": "FraudModel", **doc}
    manifest["metadata"] = {"name": doc["metadata"]["name"], "namespace": "default"}
    result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", stdin=json.dumps(manifest), check=False)
    assert (result.returncode == 0) is (rule is None), result.stderr or "accepted"


@pytest.mark.parametrize("path", OPERATOR_ONLY, ids=[p.stem for p in OPERATOR_ONLY])
def test_operator_fails_what_the_api_server_cannot_check(
    cluster: Cluster, operator: Operator, namespace: str, path: Path
) -> None:
    """Accepted by the API server, refused by the operator: Failed, Degraded=InvalidSpec, a Warning Event."""
    cluster.apply(path.read_text(), namespace)
    name = yaml.safe_load(path.read_text())["metadata"]["name"]
    failed = cluster.wait_until(
        f"{name} to be Failed",
        lambda: (s := status(cluster, namespace, name)).get("phase") == "Failed" and s,
        timeout=60,
        diagnose=operator.tail,
    )
    assert expected_message(path) in failed["message"], failed["message"]
    degraded = {c["type"]: c for c in failed["conditions"]}["Degraded"]
    assert (degraded["status"], degraded["reason"]) == ("True", "InvalidSpec")
    events = cluster.get_json("events", "-n", namespace, "--field-selector", f"involvedObject.name={name}")["items"]
    warnings = [e for e in events if (e["type"], e["reason"]) == ("Warning", "InvalidSpec")]
    assert warnings, events
    assert expected_message(path) in warnings[0]["message"]
    children = cluster.get_json("deployments,services", "-n", namespace)["items"]
    assert children == [], "nothing is created for a spec the operator refused"


# ---------------------------------------------------------------- the operator, for real


def test_operator_reconciles_an_example_to_ready(cluster: Cluster, operator: Operator, namespace: str) -> None:
    cluster.apply(fraudmodel("bot", serving={"replicas": 2}), namespace)
    wait_ready(cluster, namespace, "bot", operator)
    fm = cluster.get_json("fraudmodel", "bot", "-n", namespace, "--show-managed-fields")
    uid = fm["metadata"]["uid"]
    children = cluster.get_json("deployments,services,poddisruptionbudgets", "-n", namespace, "--show-managed-fields")[
        "items"
    ]
    names = sorted(f"{c['kind']}/{c['metadata']['name']}" for c in children)
    assert names == ["Deployment/bot-stable", "PodDisruptionBudget/bot-stable", "Service/bot", "Service/bot-stable"]
    for child in children:
        owner = child["metadata"]["ownerReferences"][0]
        assert (owner["uid"], owner["controller"]) == (uid, True)
        managers = {(f["manager"], f["operation"]) for f in child["metadata"]["managedFields"]}
        assert ("fraudmodel-operator", "Apply") in managers, managers
    deployment = cluster.get_json("deployment", "bot-stable", "-n", namespace)
    available = {c["type"]: c["status"] for c in deployment["status"]["conditions"]}
    assert available["Available"] == "True", "kwok nodes ran the pods"
    row = cluster.kubectl("get", "fraudmodel", "bot", "-n", namespace, "--no-headers").stdout.split()
    assert row[:3] == ["bot", "Ready", "v1"], row
    assert fm["status"]["observedGeneration"] == fm["metadata"]["generation"]
    ours = [f for f in fm["metadata"]["managedFields"] if not f["manager"].startswith("kubectl")]
    assert ours, "the operator's status writes are recorded"
    assert all(f.get("subresource") == "status" or "f:spec" not in json.dumps(f) for f in ours), ours
    events = cluster.get_json("events", "-n", namespace, "--field-selector", "involvedObject.name=bot")["items"]
    assert {"Deploying", "Ready"} <= {e["reason"] for e in events}


def test_child_deleted_by_hand_comes_back_and_deletion_collects_children(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    cluster.apply(fraudmodel("gc"), namespace)
    wait_ready(cluster, namespace, "gc", operator)
    old_uid = cluster.get_json("service", "gc-stable", "-n", namespace)["metadata"]["uid"]
    cluster.kubectl("delete", "service", "gc-stable", "-n", namespace)
    cluster.wait_until(
        "the Service to be recreated",
        lambda: (
            (
                cluster.kubectl(
                    "get", "service", "gc-stable", "-n", namespace, "-o", "jsonpath={.metadata.uid}", check=False
                ).stdout
                or ""
            )
            not in ("", old_uid)
        ),
        timeout=60,
    )
    cluster.kubectl("delete", "fraudmodel", "gc", "-n", namespace, "--timeout=60s", timeout=70)
    cluster.wait_until(
        "every child to be garbage-collected",
        lambda: not cluster.get_json("deployments,services,poddisruptionbudgets", "-n", namespace)["items"],
        timeout=90,
    )


def test_hpa_scales_the_stable_track_and_the_operator_does_not_fight(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    cluster.apply(
        fraudmodel(
            "hot",
            serving={
                "autoscaling": {"minReplicas": 1, "maxReplicas": 4, "targetCpuUtilization": 50},
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                "podAnnotations": {"kwok.x-k8s.io/usage-cpu": "150m"},  # 150% of the request
            },
        ),
        namespace,
    )
    wait_ready(cluster, namespace, "hot", operator)
    scaled = cluster.wait_until(
        "the HPA to scale hot-stable above 1",
        lambda: (cluster.get_json("deployment", "hot-stable", "-n", namespace)["spec"].get("replicas", 1) > 1) or None,
        timeout=240,
        interval=3,
    )
    assert scaled
    for _ in range(5):  # several reconcile intervals: the replicas the HPA chose stay
        time.sleep(2)
        assert cluster.get_json("deployment", "hot-stable", "-n", namespace)["spec"]["replicas"] > 1


def test_sigkill_mid_rollout_resumes_at_the_same_step(cluster: Cluster, operator: Operator, namespace: str) -> None:
    rollout = {
        "steps": [20, 60],
        "interval": "5s",
        "progressDeadline": "1h",
        "analysis": {"prometheus": {"address": "http://127.0.0.1:9"}, "inconclusiveLimit": 1000},
    }
    cluster.apply(fraudmodel("resume", rollout=rollout), namespace)
    wait_ready(cluster, namespace, "resume", operator)
    cluster.apply(fraudmodel("resume", "v2", rollout=rollout), namespace)
    before = cluster.wait_until(
        "the canary at its first step",
        lambda: (
            (status(cluster, namespace, "resume").get("canary") or {}).get("weight") == 20
            and status(cluster, namespace, "resume")
        ),
        timeout=120,
    )
    operator.kill(signal.SIGKILL)
    operator.start()
    cluster.wait_until(
        "the restarted operator to analyse again",
        lambda: (
            (status(cluster, namespace, "resume").get("canary") or {}).get("analyzedAt")
            != before["canary"].get("analyzedAt")
            or None
        ),
        timeout=60,
    )
    after = status(cluster, namespace, "resume")
    for key in ("version", "step", "weight", "startedAt", "stepStartedAt"):
        assert after["canary"][key] == before["canary"][key], key
    assert after["lastAnalysis"]["verdict"] == "Inconclusive", "Prometheus is unreachable: never a pass"
    assert after["stable"]["version"] == "v1"


def test_a_field_removed_from_the_spec_leaves_the_deployment(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    """Applied as declared: a pod annotation removed from spec.serving is removed from the Deployment."""
    annotated = {"podAnnotations": {"example.com/owner": "risk"}, "tolerations": [{"operator": "Exists"}]}
    cluster.apply(fraudmodel("declared", serving=annotated), namespace)

    def template() -> dict[str, Any]:
        found = cluster.kubectl("get", "deployment", "declared-stable", "-n", namespace, "-o", "json", check=False)
        result: dict[str, Any] = json.loads(found.stdout)["spec"]["template"] if found.returncode == 0 else {}
        return result

    applied = cluster.wait_until("the Deployment", template, timeout=60, diagnose=operator.tail)
    assert applied["metadata"]["annotations"]["example.com/owner"] == "risk"
    assert applied["spec"]["tolerations"] == [{"operator": "Exists"}]
    cluster.apply(fraudmodel("declared"), namespace)
    cluster.wait_until(
        "the annotation and the toleration to leave the Deployment",
        lambda: (
            "example.com/owner" not in template()["metadata"].get("annotations", {})
            and "tolerations" not in template()["spec"]
        ),
        timeout=60,
        diagnose=operator.tail,
    )


def test_an_object_with_our_labels_but_another_owner_is_left_alone(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    """Ownership is the controller owner reference's uid, not labels: a look-alike is neither adopted nor deleted."""
    cluster.apply(fraudmodel("owner"), namespace)
    cluster.wait_until(
        "the FraudModel's Services",
        lambda: cluster.kubectl("get", "service", "owner-stable", "-n", namespace, check=False).returncode == 0,
        timeout=60,
        diagnose=operator.tail,
    )
    look_alike = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "owner-debug",
            "labels": {"app.kubernetes.io/managed-by": "fraudmodel-operator", "serving.riskml.io/fraudmodel": "owner"},
        },
        "spec": {"selector": {"serving.riskml.io/fraudmodel": "owner"}, "ports": [{"port": 80}]},
    }
    cluster.apply(yaml.safe_dump(look_alike), namespace)
    uid = cluster.get_json("service", "owner-debug", "-n", namespace)["metadata"]["uid"]
    # A change of the FraudModel makes the operator apply and prune its children: the look-alike must survive.
    cluster.apply(fraudmodel("owner", serving={"podAnnotations": {"example.com/touch": "1"}}), namespace)
    cluster.wait_until(
        "the operator to apply the change",
        lambda: (
            "example.com/touch"
            in cluster.get_json("deployment", "owner-stable", "-n", namespace)["spec"]["template"]["metadata"].get(
                "annotations", {}
            )
        ),
        timeout=60,
        diagnose=operator.tail,
    )
    survivor = cluster.get_json("service", "owner-debug", "-n", namespace)["metadata"]
    assert survivor["uid"] == uid
    assert "ownerReferences" not in survivor
