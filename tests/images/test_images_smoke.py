"""Each built image's entrypoint, run with Debian's runc the way a kubelet runs it under the
planner's securityContext: a numeric non-root user, a read-only root filesystem, every
capability dropped, no new privileges, and /tmp the only writable path (the pod's emptyDir).

The bento must answer /readyz and /predict with its own model version, the operator must print
its help, the pause container must keep running until told to stop.
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from scripts.images import recipe

from .conftest import meta

pytestmark = pytest.mark.images

TRANSACTION = {
    "transaction_id": "t-1", "amount": 42.5, "txn_count_1h": 0, "txn_count_24h": 3, "amount_sum_24h": 130.0,
    "account_age_days": 800, "device_accounts_7d": 1, "ip_accounts_24h": 1, "geo_mismatch": False,
    "distance_from_home_km": 4.2, "promo_redemptions_30d": 0, "chargebacks_180d": 0, "failed_logins_24h": 0,
    "is_new_device": False, "card_present": True, "hour_of_day": 14,
}  # fmt: skip


def free_port() -> int:
    """A port free on every address (the server binds 0.0.0.0) and below the ephemeral range,
    so no outgoing connection on this busy machine takes it before the server starts."""
    for port in random.sample(range(20000, 32000), 200):
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port in 20000-32000")


def unpack(layout: Path, ref: str, into: Path) -> dict[str, Any]:
    """umoci's runtime bundle of `ref`; returns its config.json (from the image's config).
    The raw commands skip umoci's mtree of every file (minutes for the bento)."""
    image = f"{layout}:{ref}"
    into.mkdir(parents=True)
    subprocess.run(["umoci", "raw", "unpack", "--image", image, str(into / "rootfs")], check=True, capture_output=True)
    rootfs, config_path = str(into / "rootfs"), str(into / "config.json")
    subprocess.run(
        ["umoci", "raw", "runtime-config", "--image", image, "--rootfs", rootfs, config_path],
        check=True,
        capture_output=True,
    )
    config: dict[str, Any] = json.loads((into / "config.json").read_text())
    return config


def as_kubelet(bundle: Path, config: dict[str, Any], *, uid: int, gid: int, args: list[str] | None = None,
               env: dict[str, str] | None = None) -> None:  # fmt: skip
    """What the planner's securityContext makes of the container, written into config.json."""
    process = config["process"]
    process["terminal"] = False
    process["user"] = {"uid": uid, "gid": gid}  # runAsUser / runAsGroup
    process["noNewPrivileges"] = True  # allowPrivilegeEscalation: false
    process["capabilities"] = {k: [] for k in ("bounding", "effective", "inheritable", "permitted", "ambient")}
    if args is not None:
        process["args"] = args
    process["env"] = [*process["env"], *(f"{k}={v}" for k, v in (env or {}).items())]
    config["root"]["readonly"] = True  # readOnlyRootFilesystem: true
    config["mounts"].append(
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]}
    )  # the pod's emptyDir
    # The files a kubelet mounts into every container.
    (bundle / "hosts").write_text("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
    (bundle / "hostname").write_text("smoke\n")
    for name in ("hosts", "hostname"):
        config["mounts"].append(
            {"destination": f"/etc/{name}", "type": "bind", "source": str(bundle / name), "options": ["rbind", "ro"]}
        )
    # The host's network namespace, so the test reaches the server on loopback.
    config["linux"]["namespaces"] = [ns for ns in config["linux"]["namespaces"] if ns["type"] != "network"]
    (bundle / "config.json").write_text(json.dumps(config))


@dataclass
class Container:
    proc: subprocess.Popen[bytes]
    runc: list[str]
    name: str

    def status(self) -> str:
        out = subprocess.run([*self.runc, "state", self.name], capture_output=True, text=True, check=False)
        status: str = json.loads(out.stdout)["status"] if out.returncode == 0 else "absent"
        return status


@contextlib.contextmanager
def running(bundle: Path, log: Path) -> Iterator[Container]:
    runc = ["runc", "--root", str(bundle.parent / "runc-state")]
    name = f"fraudmodel-smoke-{uuid.uuid4().hex[:8]}"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*runc, "run", "--bundle", str(bundle), name],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            yield Container(proc, runc, name)
        finally:
            subprocess.run([*runc, "kill", name, "TERM"], capture_output=True, check=False)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                subprocess.run([*runc, "kill", name, "KILL"], capture_output=True, check=False)
                proc.wait(timeout=30)
            subprocess.run([*runc, "delete", "--force", name], capture_output=True, check=False)


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the container exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{url} not ready within {within:.0f}s:\n{log.read_text()[-3000:]}")


def test_the_images_run_as_their_numeric_non_root_user(layouts: dict[str, Path]) -> None:
    """The image config's USER is numeric, so a kubelet can check runAsNonRoot without runAsUser."""
    expected = {
        "pause": recipe.PAUSE_USER_ID,
        "operator": recipe.OPERATOR_USER_ID,
        "fraud-detector": recipe.BENTO_USER_ID,
    }
    for name, uid in expected.items():
        index = json.loads((layouts[name] / "index.json").read_text())
        for manifest in index["manifests"]:
            config = image_config(layouts[name], manifest["digest"])
            assert config["config"]["User"] == f"{uid}:{uid}", (name, manifest["annotations"])


def image_config(layout: Path, digest: str) -> dict[str, Any]:
    blob = layout / "blobs" / "sha256"
    manifest = json.loads((blob / digest.split(":", 1)[1]).read_text())
    config: dict[str, Any] = json.loads((blob / manifest["config"]["digest"].split(":", 1)[1]).read_text())
    return config


def test_the_bento_answers_readyz_and_predict_as_the_kubelet_runs_it(
    layouts: dict[str, Path], built: dict[str, Path], scratch: Path
) -> None:
    ref = recipe.image_ref("fraud-detector", "v2")  # the bento pins v1: v2 comes from the tag's config
    bundle = scratch / "bundle"
    config = unpack(layouts["fraud-detector"], ref, bundle)
    port = free_port()
    env = {"BENTOML_PORT": str(port), "FRAUDMODEL_TRACK": "canary"}
    as_kubelet(bundle, config, uid=recipe.BENTO_USER_ID, gid=recipe.BENTO_USER_ID, env=env)
    log = scratch / "bento.log"
    with running(bundle, log) as container:
        wait_ready(f"http://127.0.0.1:{port}/readyz", container.proc, log, within=240)
        answer = httpx.post(f"http://127.0.0.1:{port}/predict", json=TRANSACTION, timeout=10)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["version"] == "v2"
        assert body["transaction_id"] == "t-1"
        assert 0 <= body["score"] <= 1
        assert body["decision"] in ("flag", "allow")
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert 'track="canary"' in metrics
        assert "fraud_model_predictions_total" in metrics


def test_the_bento_tags_share_their_layers_and_each_defaults_to_its_own_model(layouts: dict[str, Path]) -> None:
    layout = layouts["fraud-detector"]
    index = json.loads((layout / "index.json").read_text())
    by_ref = {m["annotations"]["io.containerd.image.name"]: m["digest"] for m in index["manifests"]}
    versions = ("v1", "v2", "v2-miscalibrated")
    assert set(by_ref) == {recipe.image_ref("fraud-detector", v) for v in versions}
    blob = layout / "blobs" / "sha256"
    layers = set()
    for version in versions:
        manifest = json.loads((blob / by_ref[recipe.image_ref("fraud-detector", version)].split(":", 1)[1]).read_text())
        layers.add(tuple(layer["digest"] for layer in manifest["layers"]))
        env = image_config(layout, by_ref[recipe.image_ref("fraud-detector", version)])["config"]["Env"]
        assert f"FRAUDMODEL_MODEL_TAG=fraud_detector:{version}" in env
    assert len(layers) == 1, "the tags differ only in their config"
    (shared,) = layers
    with tarfile.open(blob / shared[-2].split(":", 1)[1]) as layer:  # the bento (before the chmod layer)
        names = layer.getnames()
    for version in versions:
        assert any(f"models/fraud_detector/{version}/model.pt" in name for name in names), version


def test_the_operator_prints_its_help_as_the_kubelet_runs_it(layouts: dict[str, Path], scratch: Path) -> None:
    bundle = scratch / "bundle"
    config = unpack(layouts["operator"], recipe.image_ref("operator", "dev"), bundle)
    assert config["process"]["args"][:1] == ["fraudmodel-operator"]
    uid = recipe.OPERATOR_USER_ID
    as_kubelet(bundle, config, uid=uid, gid=uid, args=["fraudmodel-operator", "--help"])
    log = scratch / "operator.log"
    with running(bundle, log) as container:
        assert container.proc.wait(timeout=120) == 0, log.read_text()
    out = log.read_text()
    assert "usage" in out.lower(), out
    assert "run" in out, out


def test_the_pause_container_runs_until_stopped(
    layouts: dict[str, Path], built: dict[str, Path], scratch: Path
) -> None:
    bundle = scratch / "bundle"
    config = unpack(layouts["pause"], meta(built["pause"]).refs[0], bundle)
    assert config["process"]["args"] == ["/pause"]
    as_kubelet(bundle, config, uid=recipe.PAUSE_USER_ID, gid=recipe.PAUSE_USER_ID)
    log = scratch / "pause.log"
    with running(bundle, log) as container:
        deadline = time.monotonic() + 30
        while container.status() != "running" and container.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert container.status() == "running", log.read_text()
        subprocess.run([*container.runc, "kill", container.name, "TERM"], check=True)
        assert container.proc.wait(timeout=30) == 0, "pause exits cleanly on SIGTERM"
