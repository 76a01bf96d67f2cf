"""Serve what is declared, or refuse: real servers given a model that is not the declared one."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import yaml

from fraud_detector.data import payloads

from .conftest import GOOD, REFUSED, StartServer, Store

pytestmark = pytest.mark.server

BODY = payloads(1, seed=12)[0]

REFUSALS = [
    (
        "declared version is not the loaded one",
        {"FRAUDMODEL_MODEL_TAG": f"fraud_detector:{GOOD}", "FRAUDMODEL_VERSION": "v2"},
        "ModelVersionMismatch",
        ["declared version v2", f"fraud_detector:{GOOD} is version {GOOD}"],
    ),
    (
        "declared feature schema is not the model's",
        {"FRAUDMODEL_MODEL_TAG": f"fraud_detector:{GOOD}", "FRAUDMODEL_FEATURE_SCHEMA": "v2"},
        "FeatureSchemaMismatch",
        ["declared feature schema v2", "trained on v1"],
    ),
    (
        "model failed its release gate",
        {"FRAUDMODEL_MODEL_TAG": f"fraud_detector:{REFUSED}", "FRAUDMODEL_VERSION": REFUSED},
        "ModelNotPromotable",
        [f"fraud_detector:{REFUSED} failed its release gate", "roc_auc=", "below the floor 0.9"],
    ),
    ("nothing declared", {}, "ModelNotDeclared", ["no model declared", "spec.model.uri"]),
    (
        "uri that does not exist",
        {
            "FRAUDMODEL_MODEL_URI": "file:///nonexistent/fraud_detector-v7.bentomodel",
            "FRAUDMODEL_VERSION": "v7",
        },
        "ModelLoadFailed",
        ["cannot import file:///nonexistent/fraud_detector-v7.bentomodel"],
    ),
]


@pytest.mark.parametrize(("name", "env", "reason", "words"), REFUSALS, ids=[c[0] for c in REFUSALS])
def test_a_model_that_is_not_the_declared_one_is_never_ready(
    start_server: StartServer, name: str, env: dict[str, str], reason: str, words: list[str]
) -> None:
    server = start_server(ready=False, **env)
    assert httpx.get(server.url + "/livez").status_code == 200  # alive: no crash loop, no restarts
    ready = httpx.get(server.url + "/readyz")
    assert ready.status_code == 503
    body = ready.json()
    assert body["reason"] == reason, body
    for word in words:
        assert word in body["message"], body
    refused = httpx.post(server.url + "/predict", json=BODY, timeout=10)
    assert (refused.status_code, refused.json()["reason"]) == (503, reason)
    assert reason in server.logs()


def _export(store: Store, tag: str, target: Path) -> Path:
    done = store.run("-m", "bentoml", "models", "export", tag, str(target))
    assert done.returncode == 0, done.stdout + done.stderr
    (archive,) = target.parent.glob(target.name + "*")
    return archive


def test_model_from_an_exported_archive_at_a_file_uri(
    start_server: StartServer, store: Store, tmp_path: Path
) -> None:
    archive = _export(store, f"fraud_detector:{GOOD}", tmp_path / "fraud_detector-v1.bentomodel")
    server = start_server(
        FRAUDMODEL_MODEL_URI=archive.as_uri(), FRAUDMODEL_VERSION=GOOD, FRAUDMODEL_TRACK="canary"
    )
    out = httpx.post(server.url + "/predict", json=BODY, timeout=10).json()
    meta = yaml.safe_load((store.home / "models" / "fraud_detector" / GOOD / "model.yaml").read_text())[
        "metadata"
    ]
    # the threshold chosen at training, since the FraudModel sets none
    assert (out["version"], out["threshold"]) == (GOOD, meta["threshold"]["value"])
    assert meta["threshold"]["value"] != 0.5


def test_archive_holding_another_tag_than_declared_is_refused(
    start_server: StartServer, store: Store, tmp_path: Path
) -> None:
    archive = _export(store, f"fraud_detector:{GOOD}", tmp_path / "v1.bentomodel")
    server = start_server(
        ready=False, FRAUDMODEL_MODEL_URI=str(archive), FRAUDMODEL_MODEL_TAG="fraud_detector:v2"
    )
    body = httpx.get(server.url + "/readyz").json()
    assert body["reason"] == "ModelTagMismatch", body
