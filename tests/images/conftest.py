"""Fixtures of the image tier: the images of scripts/images/build, run the way a kubelet runs them.

The tier runs with ``FRAUDMODEL_IMAGES=1`` (it builds what is not cached: tens of minutes cold,
seconds warm) or when every archive is already built for the working tree; otherwise it is
skipped, saying why. Running a container needs root, Debian's ``runc`` and ``umoci``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "scripts" / "images" / "build"


def archives() -> dict[str, Path] | str:
    """The current archive of every image, or why there is none."""
    result = subprocess.run(
        [os.environ.get("FRAUDMODEL_VENV_PYTHON", str(ROOT / ".venv" / "bin" / "python")), "-m",
         "scripts.images.builder", "archives", "all", "base"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        return result.stderr.strip() or result.stdout.strip()
    paths = [Path(line) for line in result.stdout.split()]
    return {path.name.rsplit("-", 1)[0]: path for path in paths}


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "the image tier runs containers with runc: needs root"
    for tool in ("runc", "umoci"):
        if shutil.which(tool) is None:
            return f"the image tier needs {tool} (Debian package {tool})"
    if not os.environ.get("FRAUDMODEL_IMAGES"):
        found = archives()
        if isinstance(found, str):
            return f"{found} (or set FRAUDMODEL_IMAGES=1 to build them)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mine = [item for item in items if item.get_closest_marker("images")]
    reason = skip_reason() if mine else None
    if reason:
        for item in mine:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def built() -> dict[str, Path]:
    """Every image built for the working tree (a no-op when the cache is current)."""
    if os.environ.get("FRAUDMODEL_IMAGES"):
        subprocess.run([str(BUILD), "all"], cwd=ROOT, check=True, timeout=3 * 3600)
    found = archives()
    assert not isinstance(found, str), found
    return found


@dataclass(frozen=True)
class Meta:
    refs: list[str]
    digests: dict[str, str]


def meta(archive: Path) -> Meta:
    data = json.loads(archive.with_suffix(".json").read_text())
    return Meta(data["refs"], data["digests"])


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    """Scratch space of the session beside the archives, not under pytest's base temp: on a
    machine shared by several pytest sessions, each removes all but the newest three base
    temps, and these tests run for minutes (a container's root filesystem vanished mid-run)."""
    cache = Path(os.environ.get("FRAUDMODEL_CACHE", Path.home() / ".cache" / "fraudmodel-operator")) / "images"
    cache.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="smoke-", dir=cache))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def scratch(workdir: Path, request: pytest.FixtureRequest) -> Path:
    path: Path = workdir / str(request.node.name)[:60]
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def layouts(workdir: Path, built: dict[str, Path]) -> Iterator[dict[str, Path]]:
    """Each archive unpacked into an OCI layout (what umoci reads), once per session."""
    root = workdir / "layouts"
    out: dict[str, Path] = {}
    for name, archive in built.items():
        with tarfile.open(archive) as tar:
            tar.extractall(root / name, filter="tar")
        out[name] = root / name
    yield out
    shutil.rmtree(root, ignore_errors=True)
