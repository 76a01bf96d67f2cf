"""`bentoml build` offline, the generated bento.yaml and Dockerfile, and serving the bento."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from fraud_detector.data import payloads

from .conftest import BENTO_DIR, GOOD, StartServer, Store

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def bento(store: Store) -> tuple[str, Path]:
    done = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", ".", "--output", "tag"],
        cwd=BENTO_DIR,
        env=store.env(FRAUDMODEL_MODEL_TAG=f"fraud_detector:{GOOD}"),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    match = re.search(r"(fraud_detector:[a-z0-9]+)", done.stdout)
    assert match, done.stdout
    tag = match.group(1)
    path = store.home / "bentos" / "fraud_detector" / tag.split(":")[1]
    assert path.is_dir()
    return tag, path


def test_bento_yaml(bento: tuple[str, Path]) -> None:
    _, path = bento
    info = yaml.safe_load((path / "bento.yaml").read_text())
    assert info["service"] == "fraud_detector.service:FraudDetector"
    assert info["bentoml_version"] == "1.4.40"
    (svc,) = info["services"]
    assert [m["tag"] for m in svc["models"]] == [f"fraud_detector:{GOOD}"]
    assert svc["config"]["endpoints"] == {"livez": "/livez", "readyz": "/readyz"}
    envs = {e["name"] for e in info["envs"]}
    assert envs >= {"FRAUDMODEL_NAME", "FRAUDMODEL_TRACK"}
    assert "FRAUDMODEL_THRESHOLD" not in envs  # the model's own threshold unless the FraudModel sets one
    routes = {r["route"]: r for r in info["schema"]["routes"]}
    assert "/predict_batch" in routes
    reqs = info["image"]["python_requirements"]
    for pkg in ("bentoml==1.4.40", "torch==", "pydantic==", "prometheus-client=="):
        assert pkg in reqs, pkg
    # BentoML 1.4 references the model (copied into the image by containerize/export)
    assert (path / "src" / "fraud_detector" / "service.py").is_file()
    assert not (path / "src" / "tests").exists()


def test_dockerfile(bento: tuple[str, Path]) -> None:
    _, path = bento
    dockerfile = (path / "env" / "docker" / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", dockerfile, re.M)
    assert "ENV FRAUDMODEL_TRACK=$FRAUDMODEL_TRACK" in dockerfile
    assert "FRAUDMODEL_THRESHOLD" not in dockerfile
    assert "requirements.txt" in dockerfile
    assert re.search(r"^ENTRYPOINT .*entrypoint\.sh", dockerfile, re.M)
    assert re.search(r"^USER bentoml", dockerfile, re.M)
    assert (path / "env" / "docker" / "entrypoint.sh").is_file()


def test_service_starts_from_the_bento(bento: tuple[str, Path], start_server: StartServer) -> None:
    tag, _ = bento
    served = start_server(tag)  # no FRAUDMODEL_MODEL_TAG: "latest" in the bento's own store
    r = httpx.post(served.url + "/predict", json=payloads(1, seed=8)[0], timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["version"] == GOOD
