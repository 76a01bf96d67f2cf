"""Integration tier: real Prometheus (Debian's package) scraping real BentoML servers of the bento.

The processes come from `scripts/dataplane.py` (shared with the demo and the benchmarks), run
on loopback ports and are stopped by the fixtures. Needs `prometheus` on PATH and the bento's
environment (./scripts/test sets both up); without them the tier is skipped with the reason,
except under CI, where it fails instead.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from scripts.dataplane import BENTO, MODELS, Bento, Prometheus, Servers

GOOD, GOOD_NEXT, MISCALIBRATED = "v1", "v2", "v2-miscalibrated"


def _need(what: str, ok: bool) -> None:
    if ok:
        return
    if os.environ.get("CI"):
        pytest.fail(f"integration tier needs {what} (./scripts/test installs it)")
    pytest.skip(f"needs {what}: run ./scripts/test, which installs it")


@pytest.fixture(scope="session")
def bento() -> Bento:
    python = os.environ.get("FRAUDMODEL_BENTO_PYTHON", str(BENTO / ".venv" / "bin" / "python"))
    _need("the bento environment (bentos/fraud_detector/scripts/setup-venv)", Path(python).exists())
    b = Bento(python, Path(os.environ.get("FRAUDMODEL_BENTO_HOME", BENTO / ".bentoml")))
    b.train(list(MODELS))
    return b


@pytest.fixture
def servers(bento: Bento, tmp_path: Path) -> Iterator[Servers]:
    s = Servers(bento, tmp_path / "servers")
    try:
        yield s
    finally:
        s.stop_all()


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Prometheus]:
    _need("Prometheus (Debian package `prometheus`)", shutil.which("prometheus") is not None)
    prom = Prometheus(tmp_path / "prometheus")
    try:
        yield prom
    finally:
        prom.stop()
