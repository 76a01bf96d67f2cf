"""Argo CD and a git server for the GitOps tests: what a user runs, on loopback.

* :class:`GitServer`: a bare repository served by ``git daemon`` on 127.0.0.1, and a work
  tree that commits and pushes to it (Argo CD sees only what was pushed).
* :class:`ArgoCD`: the repo-server and application-controller of ``scripts/cluster/argocd``,
  read through their Applications. Every read first asks for a refresh with the
  ``argocd.argoproj.io/refresh`` annotation, as ``argocd app get --refresh`` does, rather
  than wait for the next resync (minutes by default). A normal refresh compares with the
  branch's commit as the repo-server cached it (for 3 minutes: ``--revision-cache-expiration``);
  after a push the tests ask for a hard refresh, which re-reads it, as the git host's webhook
  to argocd-server does for a real installation.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from scripts.dataplane import free_port
from tests.cluster.conftest import CLUSTER_SCRIPTS, Cluster

REFRESH = "argocd.argoproj.io/refresh"


class GitServer:
    """``git daemon`` on loopback serving one repository, and a clone to commit into."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bare = root / "served" / "gitops.git"
        self.work = root / "work"
        self.port = free_port()
        self.url = f"git://127.0.0.1:{self.port}/gitops.git"
        self.proc: subprocess.Popen[bytes] | None = None

    def git(self, *args: str, cwd: Path | None = None) -> str:
        return subprocess.run(
            ["git", "-c", "user.name=GitOps Test", "-c", "user.email=gitops@test.invalid", *args],
            cwd=cwd or self.work,
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.strip()

    def start(self) -> None:
        self.bare.parent.mkdir(parents=True)
        self.git("init", "--bare", "--initial-branch=main", str(self.bare), cwd=self.root)
        self.git("init", "--initial-branch=main", str(self.work), cwd=self.root)
        self.git("remote", "add", "origin", self.url)
        with (self.root / "git-daemon.log").open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    "git",
                    "daemon",
                    "--listen=127.0.0.1",
                    f"--port={self.port}",
                    f"--base-path={self.bare.parent}",
                    "--export-all",
                    "--enable=receive-pack",
                    "--reuseaddr",
                    "--informative-errors",
                    str(self.bare.parent),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        Cluster.wait_until("git daemon to serve", self._serves, timeout=30, interval=0.2)

    def _serves(self) -> bool:
        probe = subprocess.run(["git", "ls-remote", self.url], capture_output=True, check=False, timeout=10)
        return probe.returncode == 0

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def commit(self, message: str, files: dict[str, str] | None = None, remove: tuple[str, ...] = ()) -> str:
        """Write ``files`` (path -> text), remove ``remove``, commit and push; the new commit's id."""
        for path, text in (files or {}).items():
            target = self.work / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        for path in remove:
            self.git("rm", "-q", path)
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)
        self.git("push", "-q", "origin", "main")
        return self.git("rev-parse", "HEAD")


@dataclass(frozen=True)
class AppState:
    """What `argocd app get` shows: an Application's sync and health at one moment."""

    at: float
    sync: str
    revision: str
    health: str
    operation: str
    operation_message: str
    resources: tuple[tuple[str, str, str, str], ...]  # (kind, name, health, message)

    @classmethod
    def of(cls, app: dict[str, Any], at: float) -> AppState:
        status = app.get("status") or {}
        op = status.get("operationState") or {}
        resources = tuple(
            (
                r.get("kind", ""),
                r.get("name", ""),
                (r.get("health") or {}).get("status", ""),
                (r.get("health") or {}).get("message", ""),
            )
            for r in status.get("resources") or []
        )
        return cls(
            at=at,
            sync=(status.get("sync") or {}).get("status", ""),
            revision=(status.get("sync") or {}).get("revision", ""),
            health=(status.get("health") or {}).get("status", ""),
            operation=op.get("phase", ""),
            operation_message=op.get("message", ""),
            resources=resources,
        )

    def resource(self, kind: str, name: str) -> tuple[str, str]:
        """(health, message) of one of the Application's resources."""
        for r_kind, r_name, health, message in self.resources:
            if (r_kind, r_name) == (kind, name):
                return health, message
        return "", ""

    def fraudmodels(self) -> tuple[tuple[str, str, str], ...]:
        """(name, health, message) of the FraudModels, as the health check reports them."""
        return tuple((name, health, message) for kind, name, health, message in self.resources if kind == "FraudModel")

    def key(self) -> tuple[object, ...]:
        return (self.sync, self.revision, self.health, self.operation, self.operation_message, self.fraudmodels())

    def line(self, since: float) -> str:
        models = "; ".join(f"{name} {health}: {message}" for name, health, message in self.fraudmodels())
        operation = self.operation
        if self.operation not in ("", "Succeeded") and self.operation_message:
            operation += f" ({self.operation_message})"
        return f"{self.at - since:6.1f}s | {self.revision[:7]} | {self.sync} | {self.health} | {operation} | {models}"


@dataclass
class ArgoCD:
    """The Applications in Argo CD's namespace, read the way the UI shows them."""

    cluster: Cluster
    state: Path
    namespace: str = "argocd"
    #: Every distinct state seen, per Application, in order.
    seen: dict[str, list[AppState]] = field(default_factory=dict)

    def apply(self, app: dict[str, Any]) -> None:
        self.cluster.apply(yaml.safe_dump(app))

    def get(self, name: str) -> dict[str, Any] | None:
        got = self.cluster.kubectl("get", "application", name, "-n", self.namespace, "-o", "json", check=False)
        if got.returncode != 0:
            return None
        result: dict[str, Any] = json.loads(got.stdout)
        return result

    def refresh(self, name: str, kind: str = "normal") -> None:
        """Ask for a refresh: ``normal`` compares with git again, ``hard`` also re-reads the branch's commit."""
        self.cluster.kubectl(
            "annotate", "application", name, "-n", self.namespace, f"{REFRESH}={kind}", "--overwrite", check=False
        )

    def refresh_pending(self, name: str) -> bool:
        app = self.get(name) or {"metadata": {}}
        return REFRESH in (app["metadata"].get("annotations") or {})

    def observe(self, name: str) -> AppState | None:
        """The Application's state now, after asking for a refresh when none is pending."""
        app = self.get(name)
        if app is None:
            return None
        if REFRESH not in (app["metadata"].get("annotations") or {}):
            self.refresh(name)
        state = AppState.of(app, time.monotonic())
        history = self.seen.setdefault(name, [])
        if not history or state.key() != history[-1].key():
            history.append(state)
        return state

    def wait(self, name: str, what: str, done: Callable[[AppState], bool], timeout: float = 180) -> AppState:
        """Observe ``name`` until ``done`` holds; fail with the states seen and the logs at the deadline."""

        def probe() -> AppState | None:
            state = self.observe(name)
            return state if state is not None and done(state) else None

        return Cluster.wait_until(
            f"Application {name}: {what}", probe, timeout=timeout, interval=1, diagnose=lambda: self.diagnose(name)
        )

    def sync(self, name: str, revision: str = "HEAD") -> None:
        """Start a sync, as `argocd app sync` does: an operation on the Application.

        The CLI copies the Application's syncOptions into the operation: a manual sync does
        not read them from the spec (without them CreateNamespace=true is not applied).
        """
        app = self.get(name) or {}
        options = ((app.get("spec") or {}).get("syncPolicy") or {}).get("syncOptions") or []
        sync = {"revision": revision, "syncOptions": options}
        operation = {"operation": {"initiatedBy": {"username": "gitops-test"}, "sync": sync}}
        self.cluster.kubectl(
            "patch", "application", name, "-n", self.namespace, "--type", "merge", "-p", yaml.safe_dump(operation)
        )

    def diagnose(self, name: str) -> str:
        history = "\n".join(s.line(self.seen[name][0].at) for s in self.seen.get(name, []))
        app = self.get(name) or {}
        status = yaml.safe_dump({k: v for k, v in (app.get("status") or {}).items() if k != "history"})[-3000:]
        logs = "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')[-1500:]}" for log in sorted(self.state.glob("*.log"))
        )
        return f"states seen:\n{history}\nstatus:\n{status}\n{logs}"


def argocd_script(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLUSTER_SCRIPTS / "argocd"), *args], capture_output=True, text=True, check=False, timeout=timeout
    )


def need_argocd_built(build: bool) -> None:
    """Skip (or build, when ``build``) unless scripts/cluster/argocd has built Argo CD."""
    if argocd_script("build", "--check", timeout=60).returncode == 0:
        return
    if not build:
        pytest.skip("Argo CD not built: run scripts/cluster/argocd build (~10 min cold), or set FRAUDMODEL_CLUSTER=1")
    built = argocd_script("build", timeout=60 * 60)
    if built.returncode != 0:
        pytest.fail(f"scripts/cluster/argocd build failed:\n{built.stderr[-4000:]}")
