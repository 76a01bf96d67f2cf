"""Run `fraudmodel-operator` under tracemalloc; SIGUSR1 writes where its live memory was allocated.

    FRAUDMODEL_MEMTRACE=/tmp/trace.txt python benchmarks/memtrace.py run --standalone ...
    kill -USR1 <pid>     # writes /tmp/trace.txt: the top allocation sites, by traceback

`benchmarks/cluster_scale.py --memtrace FILE` does this for the scale benchmark. tracemalloc
costs CPU and memory of its own, so RSS figures come from runs without it.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import tracemalloc
from pathlib import Path
from types import FrameType

FRAMES = 12
TOP = 40


def dump(path: Path) -> None:
    gc.collect()
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen importlib._bootstrap*>")]
    )
    total = sum(stat.size for stat in snapshot.statistics("filename"))
    lines = [f"traced live memory: {total / 2**20:.1f} MiB", "", "by file:"]
    for stat in snapshot.statistics("filename")[:TOP]:
        lines.append(f"  {stat.size / 2**20:8.1f} MiB {stat.count:9d} blocks  {stat.traceback[0].filename}")
    lines += ["", "by allocation site (innermost frame first):"]
    for stat in snapshot.statistics("traceback")[:TOP]:
        lines.append(f"{stat.size / 2**20:8.1f} MiB {stat.count:9d} blocks")
        lines += [f"    {frame.filename}:{frame.lineno}" for frame in stat.traceback]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    path = Path(os.environ["FRAUDMODEL_MEMTRACE"])
    tracemalloc.start(FRAMES)

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        dump(path)

    signal.signal(signal.SIGUSR1, on_signal)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))
    from fraudmodel_operator.cli import main as cli

    raise SystemExit(cli(sys.argv[1:]))


if __name__ == "__main__":
    main()
