"""GitOps as a user lives it: Argo CD (built from Go modules) syncs the chart and FraudModels from git.

Argo CD's repo-server and application-controller run out of cluster against the kwok cluster
(``scripts/cluster/argocd``), with the FraudModel health check installed from
``examples/argocd/argocd-cm-health.yaml``. The repository is served by ``git daemon`` on
127.0.0.1 and laid out like this one (``charts/``, ``examples/``), so the Applications are
those of ``examples/argocd/`` with only the repository URL and destinations changed.

The chart's operator pods are kwok pods (no containers): the operator that acts is the
session's ``fraudmodel-operator run`` out of cluster, as in the rest of the cluster tier. The
canary analysis reads a stub of the Prometheus HTTP API (``test_rollout_capacity.py``) that
answers per FraudModel: no data while a canary starts (inconclusive: held at its first step,
so Argo CD is seen Progressing), then the component tier's canned healthy or regressed
measurements, which promote or roll back at the next look.

Refreshes are driven explicitly (``gitops.py``): each push is followed by a hard refresh, as
the git host's webhook to argocd-server would do (the repo-server caches a branch's commit for
3 minutes), and every read asks for a normal refresh (the default resync is minutes). The
tests run in file order and share one Application: the timeline each one records is printed
(``pytest -s``) and, with ``FRAUDMODEL_GITOPS_TIMELINE=FILE``, appended to FILE.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.cluster.conftest import REPO_ROOT, TEST_CLUSTER_NAME, Cluster, Operator
from tests.cluster.gitops import AppState, ArgoCD, GitServer, argocd_script, need_argocd_built
from tests.cluster.test_chart_install import monitoring_crds  # noqa: F401 (a fixture used below)
from tests.cluster.test_rollout_capacity import FakePrometheus
from tests.component.test_rollout import metrics

pytestmark = pytest.mark.cluster

EXAMPLES = REPO_ROOT / "examples"
ENVIRONMENTS = ("dev", "staging", "prod")
INVALID = EXAMPLES / "invalid" / "steps-descending.yaml"
#: The FraudModels of the folder Application: one promoted, one rolled back.
PROMOTED, ROLLED_BACK = "fd-good", "fd-bad"

Answer = Callable[[str], list[tuple[dict[str, str], float]]]
#: What the stub Prometheus answers for a FraudModel's queries.
NO_DATA: Answer = lambda _promql: []  # noqa: E731 (a table entry)
HEALTHY: Answer = metrics({"stable": 0.03, "canary": 0.03})
REGRESSED: Answer = metrics({"stable": 0.03, "canary": 0.15})  # the canary flags five times more


# ---------------------------------------------------------------- Argo CD and the repository


@pytest.fixture(scope="module")
def argocd(cluster: Cluster, crd: None) -> Iterator[ArgoCD]:
    need_argocd_built(build=bool(os.environ.get("FRAUDMODEL_CLUSTER")))
    up = argocd_script("up", "--name", TEST_CLUSTER_NAME, "--kubeconfig", str(cluster.kubeconfig), timeout=300)
    if up.returncode != 0:
        pytest.fail(f"scripts/cluster/argocd up failed:\n{up.stderr[-4000:]}")
    try:
        yield ArgoCD(cluster, Path(up.stdout.strip().splitlines()[-1]))
    finally:
        argocd_script("down", "--name", TEST_CLUSTER_NAME, timeout=120)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitServer]:
    """This repository's chart and examples, pushed to a git daemon on loopback."""
    server = GitServer(tmp_path_factory.mktemp("git"))
    server.start()
    try:
        shutil.copytree(REPO_ROOT / "charts", server.work / "charts")
        shutil.copytree(EXAMPLES, server.work / "examples")
        server.commit("The chart and the examples")
        yield server
    finally:
        server.stop()


def application(example: str, repo: GitServer, **changes: Any) -> dict[str, Any]:
    """An Application of examples/argocd/, pointed at the test repository, with ``changes`` merged in."""
    app: dict[str, Any] = yaml.safe_load((EXAMPLES / "argocd" / example).read_text())
    app["spec"]["source"]["repoURL"] = repo.url
    return merge(app, changes)


def merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        out[key] = merge(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def synced_and_healthy(state: AppState) -> bool:
    return state.sync == "Synced" and state.health == "Healthy" and state.operation in ("", "Succeeded")


def record(title: str, commit_at: float, states: list[AppState]) -> None:
    """Print the timeline (seconds after the commit), and append it to $FRAUDMODEL_GITOPS_TIMELINE."""
    lines = [f"## {title}", *(s.line(commit_at) for s in states if s.at >= commit_at)]
    text = "\n".join(lines) + "\n"
    print(text)
    if path := os.environ.get("FRAUDMODEL_GITOPS_TIMELINE"):
        with open(path, "a") as out:
            out.write(text)


# ---------------------------------------------------------------- the chart, per environment


@pytest.fixture(scope="module")
def chart_apps(
    cluster: Cluster, argocd: ArgoCD, repo: GitServer, request: pytest.FixtureRequest
) -> Iterator[dict[str, dict[str, Any]]]:
    """One Application per environment, each in its own namespace.

    The three would live in three clusters; sharing one here, each gets its own release,
    namespace and peering object, and only dev installs the CRDs (as the first install in a
    cluster would).
    """
    request.getfixturevalue("monitoring_crds")  # staging and prod create ServiceMonitors and PrometheusRules
    run = uuid.uuid4().hex[:6]  # fresh namespaces: a namespace of an earlier run may still be terminating
    apps = {}
    for env in ENVIRONMENTS:
        values = yaml.safe_load((EXAMPLES / f"values-{env}.yaml").read_text())
        for watched in values.get("watchNamespaces") or []:
            cluster.kubectl("create", "namespace", watched, check=False)
        helm: dict[str, Any] = {
            "releaseName": f"fmo-{env}",
            "parameters": [{"name": "peering.name", "value": f"fmo-{env}"}],
        }
        if env != "dev":
            helm["skipCrds"] = True
        apps[env] = application(
            f"fraudmodel-operator-{env}.yaml",
            repo,
            spec={"source": {"helm": helm}, "destination": {"namespace": f"fmo-gitops-{env}-{run}"}},
        )
    try:
        yield apps
    finally:
        for env, app in apps.items():
            name = app["metadata"]["name"]
            if env == "dev":  # keep the CRDs the rest of the session uses: delete without cascade
                cluster.kubectl("patch", "application", name, "-n", "argocd", "--type", "json", "-p",
                                '[{"op": "remove", "path": "/metadata/finalizers"}]', check=False)  # fmt: skip
            cluster.kubectl("delete", "application", name, "-n", "argocd", "--wait=false", check=False)
            cluster.kubectl("delete", "namespace", app["spec"]["destination"]["namespace"], "--wait=false", check=False)


def test_chart_per_environment_syncs_synced_and_healthy(
    cluster: Cluster, argocd: ArgoCD, chart_apps: dict[str, dict[str, Any]]
) -> None:
    # One after the other: dev installs the CRDs that staging's and prod's KopfPeering need
    # (in their own clusters each would install them; here they share one).
    for env, app in chart_apps.items():
        start = time.monotonic()
        argocd.apply(app)
        if env == "prod":
            # Manual sync, as `argocd app sync fraudmodel-operator-prod` does.
            assert "automated" not in (app["spec"].get("syncPolicy") or {})
            argocd.wait(app["metadata"]["name"], "OutOfSync before its manual sync", lambda s: s.sync == "OutOfSync")
            argocd.sync(app["metadata"]["name"])
        state = argocd.wait(app["metadata"]["name"], "Synced and Healthy", synced_and_healthy, timeout=240)
        record(f"chart, {env}: Application created -> Synced/Healthy", start, argocd.seen[app["metadata"]["name"]])
        assert state.resource("Deployment", f"fmo-{env}-fraudmodel-operator")[0] == "Healthy", state.resources

    # Each environment's values made it into what was applied.
    def operator_deployment(env: str) -> dict[str, Any]:
        namespace = chart_apps[env]["spec"]["destination"]["namespace"]
        found: dict[str, Any] = cluster.get_json("deployment", f"fmo-{env}-fraudmodel-operator", "-n", namespace)
        return found

    dev, staging, prod = (operator_deployment(env) for env in ENVIRONMENTS)
    assert [d["spec"]["replicas"] for d in (dev, staging, prod)] == [1, 2, 2]
    assert [d["status"].get("availableReplicas") for d in (dev, staging, prod)] == [1, 2, 2]
    assert dev["spec"]["template"]["spec"]["containers"][0]["image"] == "fraudmodel-operator:dev"
    assert prod["spec"]["template"]["spec"].get("priorityClassName") == "system-cluster-critical"
    assert cluster.get_json("roles", "-n", "fraud-serving")["items"], "prod is namespaced: a Role where it watches"


# ---------------------------------------------------------------- a folder of FraudModels


@dataclass
class Metrics:
    """The stub Prometheus, answering each FraudModel's queries (selected by its name label) as set."""

    fake: FakePrometheus = field(default_factory=FakePrometheus)
    answers: dict[str, Answer] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.fake.answer = self.answer

    def answer(self, promql: str) -> list[tuple[dict[str, str], float]]:
        for name, answer in list(self.answers.items()):
            if f'fraudmodel="{name}"' in promql:
                return answer(promql)
        return []


def fraudmodel(name: str, version: str, prometheus: str) -> dict[str, Any]:
    """A FraudModel as a team keeps it in git: two steps, each judged on Prometheus after 2 s.

    Held while inconclusive (no data yet) for as long as the test needs: inconclusiveLimit 1000.
    """
    return {
        "apiVersion": "serving.riskml.io/v1alpha1",
        "kind": "FraudModel",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": "fraud-detector", "version": version, "image": f"fraud-detector:{version}"},
            "serving": {"replicas": 2},
            "rollout": {
                "steps": [25, 50],
                "interval": "2s",
                "analysis": {
                    "prometheus": {"address": prometheus},
                    "minSamples": 100,
                    "failureLimit": 1,
                    "inconclusiveLimit": 1000,
                },
                "onRollback": {"scaleDownDelay": "2s"},
            },
        },
    }


@dataclass
class Story:
    """The folder Application and what it deploys, shared by the tests below in file order."""

    argocd: ArgoCD
    repo: GitServer
    cluster: Cluster
    operator: Operator
    namespace: str
    metrics: Metrics
    name: str = "fraudmodels"

    def manifest(self, fraudmodel_name: str, version: str) -> str:
        return yaml.safe_dump(fraudmodel(fraudmodel_name, version, self.metrics.fake.url))

    def push(
        self, message: str, files: dict[str, str] | None = None, remove: tuple[str, ...] = ()
    ) -> tuple[str, float]:
        """Commit and push, then hard-refresh (what the git host's webhook does); the commit and when it was pushed."""
        revision = self.repo.commit(message, files, remove)
        pushed = time.monotonic()
        self.argocd.refresh(self.name, "hard")
        return revision, pushed

    def commit_version(self, fraudmodel_name: str, version: str) -> tuple[str, float]:
        return self.push(
            f"{fraudmodel_name}: {version}",
            {f"fraudmodels/{fraudmodel_name}.yaml": self.manifest(fraudmodel_name, version)},
        )

    def wait(self, what: str, done: Callable[[AppState], bool], timeout: float = 240) -> AppState:
        return self.argocd.wait(self.name, what, done, timeout=timeout)

    def fraudmodel(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.cluster.get_json("fraudmodel", name, "-n", self.namespace)
        return found

    def annotate(self, name: str, annotation: str) -> None:
        self.cluster.kubectl("annotate", "fraudmodel", name, "-n", self.namespace, annotation, "--overwrite")

    def no_drift(self, revision: str, operations: int) -> None:
        """Compared with git afresh: still Synced at ``revision``, and no sync started since."""
        self.argocd.refresh(self.name, "hard")
        Cluster.wait_until("the refresh to be done", lambda: not self.argocd.refresh_pending(self.name), timeout=60)
        app = self.argocd.get(self.name) or {}
        state = AppState.of(app, time.monotonic())
        assert state.sync == "Synced", state
        assert state.revision == revision, state
        assert len(app["status"].get("history") or []) == operations, "no sync since"


@pytest.fixture(scope="module")
def story(cluster: Cluster, operator: Operator, argocd: ArgoCD, repo: GitServer) -> Iterator[Story]:
    """Two FraudModels at v1 in a folder of the repository, judged on the stub Prometheus."""
    namespace = f"gitops-{uuid.uuid4().hex[:6]}"
    metrics_ = Metrics()
    s = Story(argocd, repo, cluster, operator, namespace, metrics_)
    try:
        s.repo.commit(
            "FraudModels at v1", {f"fraudmodels/{n}.yaml": s.manifest(n, "v1") for n in (PROMOTED, ROLLED_BACK)}
        )
        yield s
    finally:
        cluster.kubectl("delete", "application", s.name, "-n", "argocd", "--wait=false", check=False)
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        metrics_.fake.stop()


def test_folder_of_fraudmodels_syncs_synced_and_healthy(story: Story) -> None:
    start = time.monotonic()
    story.argocd.apply(
        application(
            "fraudmodels.yaml",
            story.repo,
            spec={
                "source": {"path": "fraudmodels", "directory": {"include": "*.yaml"}},
                "destination": {"namespace": story.namespace},
            },
        )
    )
    state = story.wait("Synced and Healthy", synced_and_healthy)
    record("Application created -> Synced/Healthy", start, story.argocd.seen[story.name])
    for name in (PROMOTED, ROLLED_BACK):
        assert state.resource("FraudModel", name)[0] == "Healthy", state.resources
        assert story.fraudmodel(name)["status"]["phase"] == "Ready"
    # Argo CD runs the check with the base, table and package libraries only: a call into
    # string.* made every new FraudModel Unknown until the operator's first status.
    unknown = [m for s in story.argocd.seen[story.name] for m in s.fraudmodels() if m[1] == "Unknown"]
    assert not unknown, f"the health check failed in Argo CD: {unknown}"


def canary_progressing(name: str, revision: str) -> Callable[[AppState], bool]:
    """At ``revision``, the Application and FraudModel ``name`` Progressing on the operator's word
    (not the health check's "Waiting for the operator" before the operator has seen the change)."""

    def done(state: AppState) -> bool:
        health, message = state.resource("FraudModel", name)
        return (
            state.revision == revision
            and state.health == "Progressing"
            and health == "Progressing"
            and not message.startswith("Waiting for the operator")
        )

    return done


def rollout_states(story: Story, revision: str, since: float) -> list[AppState]:
    return [s for s in story.argocd.seen[story.name] if s.revision == revision and s.at >= since]


def test_commit_of_a_new_version_is_progressing_then_healthy_after_promotion(story: Story) -> None:
    story.metrics.answers[PROMOTED] = NO_DATA  # the canary has no traffic yet: held at its first step
    revision, pushed = story.commit_version(PROMOTED, "v2")
    progressing = story.wait("the canary Progressing at the new revision", canary_progressing(PROMOTED, revision))
    assert progressing.sync == "Synced", "the operator's progress is status: no drift"
    assert progressing.resource("FraudModel", PROMOTED)[0] == "Progressing"

    story.metrics.answers[PROMOTED] = HEALTHY
    healthy = story.wait("Healthy after promotion", lambda s: s.revision == revision and synced_and_healthy(s))
    record("commit v2 -> canary -> promoted", pushed, story.argocd.seen[story.name])
    assert story.fraudmodel(PROMOTED)["status"]["stable"]["version"] == "v2"
    assert {s.sync for s in rollout_states(story, revision, progressing.at)} == {"Synced"}
    assert healthy.resource("FraudModel", PROMOTED)[0] == "Healthy"


def test_regressed_version_rolled_back_is_degraded_with_the_operators_message_and_synced(story: Story) -> None:
    story.metrics.answers[ROLLED_BACK] = NO_DATA
    revision, pushed = story.commit_version(ROLLED_BACK, "v2-miscalibrated")
    progressing = story.wait("the canary Progressing at the new revision", canary_progressing(ROLLED_BACK, revision))
    story.metrics.answers[ROLLED_BACK] = REGRESSED
    degraded = story.wait("Degraded", lambda s: s.revision == revision and s.health == "Degraded")
    record("commit v2-miscalibrated -> canary -> rolled back", pushed, story.argocd.seen[story.name])
    assert {s.sync for s in rollout_states(story, revision, progressing.at)} == {"Synced"}, (
        "a rollback writes status only: Argo CD sees no drift"
    )
    fm = story.fraudmodel(ROLLED_BACK)
    assert fm["status"]["phase"] == "RolledBack"
    assert fm["spec"]["model"]["version"] == "v2-miscalibrated", "the operator never writes spec"
    assert fm["status"]["stable"]["version"] == "v1"
    condition = next(c for c in fm["status"]["conditions"] if c["type"] == "Degraded")
    health, message = degraded.resource("FraudModel", ROLLED_BACK)
    assert health == "Degraded"
    assert message == f"{condition['reason']}: {condition['message']}"
    assert story.fraudmodel(PROMOTED)["status"]["phase"] == "Ready", "the other FraudModel is untouched"
    story.no_drift(revision, operations=len((story.argocd.get(story.name) or {})["status"].get("history") or []))


def test_retry_pause_and_abort_annotations_cause_no_drift(story: Story) -> None:
    app = story.argocd.get(story.name) or {}
    revision = app["status"]["sync"]["revision"]
    operations = len(app["status"].get("history") or [])
    start = time.monotonic()

    story.metrics.answers[ROLLED_BACK] = NO_DATA  # the retried canary is held at its first step
    story.annotate(ROLLED_BACK, f"serving.riskml.io/retry={int(time.time())}")
    story.wait("Progressing again (retry)", canary_progressing(ROLLED_BACK, revision))
    story.no_drift(revision, operations)

    story.annotate(ROLLED_BACK, "serving.riskml.io/pause=true")
    suspended = story.wait("Suspended (paused)", lambda s: s.health == "Suspended")
    assert suspended.resource("FraudModel", ROLLED_BACK)[0] == "Suspended"
    story.no_drift(revision, operations)

    story.annotate(ROLLED_BACK, "serving.riskml.io/abort=v2-miscalibrated")
    story.cluster.kubectl("annotate", "fraudmodel", ROLLED_BACK, "-n", story.namespace, "serving.riskml.io/pause-")
    degraded = story.wait("Degraded (aborted)", lambda s: s.resource("FraudModel", ROLLED_BACK)[0] == "Degraded")
    record("retry -> pause -> abort (annotations, no commit)", start, story.argocd.seen[story.name])
    assert degraded.health == "Degraded"
    story.no_drift(revision, operations)
    fm = story.fraudmodel(ROLLED_BACK)
    assert fm["status"]["phase"] == "RolledBack"
    assert "serving.riskml.io/retry" in fm["metadata"]["annotations"], "self-heal kept it"
    assert "serving.riskml.io/abort" in fm["metadata"]["annotations"], "self-heal kept it"


def test_fraudmodel_the_api_server_rejects_is_a_sync_failure_with_its_message(story: Story) -> None:
    expected = re.search(r"^# expect-message: (.+)$", INVALID.read_text(), re.M)
    assert expected is not None
    revision, pushed = story.push("An invalid FraudModel", {f"fraudmodels/{INVALID.name}": INVALID.read_text()})
    failed = story.wait(
        "a failed sync naming the API server's message",
        lambda s: s.revision == revision and expected.group(1).strip() in s.operation_message,
    )
    record("commit of an invalid FraudModel -> sync failure", pushed, story.argocd.seen[story.name])
    assert failed.sync == "OutOfSync", failed
    assert failed.operation in ("Running", "Failed", "Error"), failed
    assert story.cluster.kubectl("get", "fraudmodel", "bad-steps", "-n", story.namespace, check=False).returncode != 0

    fixed, _ = story.push("Remove the invalid FraudModel", remove=(f"fraudmodels/{INVALID.name}",))
    story.wait("Synced again once it is removed", lambda s: s.revision == fixed and s.sync == "Synced")


def test_deleting_the_application_prunes_the_fraudmodels_and_their_children(story: Story) -> None:
    children = story.cluster.get_json("deployments", "-n", story.namespace)["items"]
    assert {d["metadata"]["name"] for d in children} >= {f"{PROMOTED}-stable", f"{ROLLED_BACK}-stable"}
    story.cluster.kubectl("delete", "application", story.name, "-n", "argocd", "--wait=false")

    def gone() -> bool:
        left = story.cluster.kubectl("get", "fraudmodels,deployments,services", "-n", story.namespace, "-o", "name")
        return story.argocd.get(story.name) is None and not left.stdout.strip()

    Cluster.wait_until("the Application, FraudModels and children to be gone", gone, timeout=180)
