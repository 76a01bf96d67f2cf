"""The Argo CD health check (Lua) maps every FraudModel status sample to the expected health."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import yaml

from fraudmodel_operator.api import FraudModelStatus

ROOT = Path(__file__).parents[2]
HEALTH_LUA = ROOT / "charts" / "fraudmodel-operator" / "argocd" / "health.lua"
ARGOCD_CM_PATCH = ROOT / "examples" / "argocd" / "argocd-cm-health.yaml"
HEALTH_KEY = "resource.customizations.health.serving.riskml.io_FraudModel"
SAMPLES = sorted((Path(__file__).parent / "fixtures" / "status-samples").glob("*.yaml"))
ARGO_HEALTH = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}
#: Standard libraries Argo CD does not open for health checks: its VM (util/lua/lua.go in
#: v3.6.1) skips gopher-lua's defaults and opens only package, base and table. A check that
#: calls string.format there is Unknown ("attempt to index a non-table object(nil)"), as
#: the first real sync showed (tests/cluster/test_gitops.py).
NOT_IN_ARGOCD = ("string", "math", "os", "io", "coroutine", "debug", "bit", "bit32", "jit", "utf8")


def lua_runtime() -> Any:
    """Lua 5.1 when lupa ships it (Argo CD runs gopher-lua, a Lua 5.1), else lupa's default."""
    lupa = pytest.importorskip("lupa", reason="lupa (a Lua runtime) is in the dev extras")
    for name in ("lupa.lua51", "lupa.luajit21", "lupa.luajit20"):
        try:
            return importlib.import_module(name).LuaRuntime(unpack_returned_tuples=True)
        except ImportError:
            continue
    return lupa.LuaRuntime(unpack_returned_tuples=True)


def health(obj: dict[str, Any]) -> dict[str, Any]:
    """The check's result for ``obj``, run with only the libraries Argo CD opens."""
    lua = lua_runtime()
    lua.execute("getmetatable('').__index = nil")  # no string methods either ("x"):format(...)
    for library in NOT_IN_ARGOCD:
        lua.globals()[library] = None
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(HEALTH_LUA.read_text())
    return dict(result.items())


def load(path: Path) -> dict[str, Any]:
    sample: dict[str, Any] = yaml.safe_load(path.read_text())
    return sample


def test_there_are_samples_for_every_health_status() -> None:
    expected = {load(p)["expected"]["argocd"] for p in SAMPLES}
    assert expected == {"Healthy", "Progressing", "Degraded", "Suspended"}


@pytest.mark.parametrize("path", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_health_of_status_sample(path: Path) -> None:
    sample = load(path)
    got = health(sample["object"])
    assert got["status"] in ARGO_HEALTH
    assert got["status"] == sample["expected"]["argocd"], got
    assert sample["expected"]["argocdMessage"] in got["message"], got


@pytest.mark.parametrize("path", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_status_sample_is_a_valid_status(path: Path) -> None:
    obj = load(path)["object"]
    assert obj["apiVersion"] == "serving.riskml.io/v1alpha1"
    assert obj["kind"] == "FraudModel"
    if "status" in obj:
        FraudModelStatus.model_validate(obj["status"])


def test_argocd_cm_patch_embeds_the_same_script() -> None:
    patch = yaml.safe_load(ARGOCD_CM_PATCH.read_text())
    assert patch["kind"] == "ConfigMap"
    assert patch["metadata"]["name"] == "argocd-cm"
    assert patch["data"][HEALTH_KEY] == HEALTH_LUA.read_text(), (
        "examples/argocd/argocd-cm-health.yaml is stale: regenerate it from the chart's argocd/health.lua"
    )
