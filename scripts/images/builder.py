"""Build the project's images without a registry and cache them as OCI archives.

    scripts/images/build [all | base pause operator fraud-detector ...]
    python -m scripts.images.builder archives [names...]   # paths of the current archives (for load)

Images (see recipe.py): a Python 3.11 base made from Debian packages (mmdebstrap), the pause
image compiled from Kubernetes' source, the operator from the repository's Dockerfile, and
the bento from BentoML's own build (`bentoml build`, then the Dockerfile BentoML generates,
built with buildah), one tag per model version of the data plane (v1, v2, v2-miscalibrated).
Each archive lands in $FRAUDMODEL_CACHE/images/<name>-<key>.tar (OCI layout, uncompressed
layers, blobs shared between tags) with <name>-<key>.json beside it; the key hashes the
image's inputs, so an unchanged image is not rebuilt.

Python packages come from the host's package index: its pip/uv settings and CA bundle are
mounted into the build (never written into an image or the repository), and uv's cache is
shared with the host, so torch is downloaded once.

Settings (environment): FRAUDMODEL_BASE_IMAGE (build on this image instead of the local
Debian base, e.g. python:3.11-slim), FRAUDMODEL_TORCH_INDEX_URL (a CPU-only torch wheel
index), FRAUDMODEL_CACHE.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts.dataplane import MODELS
from scripts.images import recipe

ROOT = Path(__file__).resolve().parents[2]
BENTO = ROOT / "bentos" / "fraud_detector"
CACHE = Path(os.environ.get("FRAUDMODEL_CACHE", Path.home() / ".cache" / "fraudmodel-operator")) / "images"
GOMODCACHE = Path(os.environ.get("GOMODCACHE", Path.home() / "go" / "pkg" / "mod"))
HEARTBEAT_SECONDS = 15.0
T0 = time.monotonic()


def say(message: str) -> None:
    print(f"[images {time.monotonic() - T0:5.0f}s] {message}", file=sys.stderr, flush=True)


class StepFailed(Exception):
    """A build step failed; the message names the step and shows the end of its log."""


@dataclass
class Runner:
    """Runs a step's commands with their output in a log file and a heartbeat on the terminal."""

    logs: Path
    step: str = ""

    def run(
        self,
        cmd: Sequence[str | Path],
        *,
        log: str,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        nice: bool = True,
    ) -> str:
        argv = [str(c) for c in cmd]
        if nice:
            argv = ["nice", "-n", "10", *argv]
        path = self.logs / f"{log}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab") as out:
            out.write(f"\n$ {' '.join(argv)}\n".encode())
            out.flush()
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
            stop = threading.Event()
            beat = threading.Thread(target=self._heartbeat, args=(proc, path, stop), daemon=True)
            beat.start()
            code = proc.wait()
            stop.set()
            beat.join()
        if code != 0:
            tail = path.read_text(errors="replace").splitlines()[-25:]
            raise StepFailed(
                f"step {self.step!r} failed: {argv[3] if nice else argv[0]} exited {code} (log: {path})\n"
                + "\n".join(f"    {line}" for line in tail)
            )
        return path.read_text(errors="replace")

    def _heartbeat(self, proc: subprocess.Popen[bytes], path: Path, stop: threading.Event) -> None:
        started = time.monotonic()
        while not stop.wait(HEARTBEAT_SECONDS):
            last = _last_line(path)
            say(f"  {self.step}: {time.monotonic() - started:.0f}s, {last[:110]}")


def _last_line(path: Path) -> str:
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - 4096))
        lines = [line for line in f.read().decode(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no output yet)"


# --- buildah with the project's own storage (the cache), runc as its runtime


def buildah(*args: str | Path) -> list[str | Path]:
    storage = CACHE / "storage"
    return ["buildah", "--root", storage / "root", "--runroot", storage / "run", "--storage-driver", "overlay", *args]


def require_tools(names: Sequence[str]) -> None:
    """Debian packages the build needs; installed with apt-get when missing (as root)."""
    packages = {
        "buildah": "buildah",
        "runc": "runc",
        "mmdebstrap": "mmdebstrap",
        "gcc": "gcc",
        "tar": "tar",
    }
    missing = sorted({packages[n] for n in names if shutil.which(n) is None})
    if not missing:
        return
    if os.geteuid() != 0:
        raise StepFailed(f"step 'tools' failed: missing {', '.join(missing)}; install them (Debian packages)")
    say(f"installing {', '.join(missing)} (Debian packages)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "-o", "DPkg::Lock::Timeout=600", "--no-install-recommends", *missing],
    ):
        if subprocess.run(cmd, env=env, check=False).returncode != 0:
            raise StepFailed(f"step 'tools' failed: {' '.join(cmd)}")


# --- inputs of each image (what its key hashes)


def host_apt_sources() -> dict[str, bytes]:
    sources = Path("/etc/apt/sources.list.d")
    found = {p.name: p.read_bytes() for p in sorted(sources.glob("*.sources"))}
    legacy = Path("/etc/apt/sources.list")
    if legacy.is_file() and legacy.read_text().strip():
        found["sources.list"] = legacy.read_bytes()
    if not found:
        raise StepFailed("step 'base' failed: no apt sources on this host (/etc/apt/sources.list{,.d/*.sources})")
    return found


def pause_source() -> tuple[Path, str]:
    """Kubernetes' pause source in the Go module cache (the control plane's pinned version)."""
    versions = (ROOT / "scripts" / "cluster" / "versions.env").read_text()
    found = re.search(r"\$\{FRAUDMODEL_KUBE_VERSION:=([^}]+)\}", versions)
    kube = os.environ.get("FRAUDMODEL_KUBE_VERSION") or (found.group(1) if found else None)
    if kube is None:
        raise StepFailed("step 'pause' failed: no FRAUDMODEL_KUBE_VERSION in scripts/cluster/versions.env")
    directory = GOMODCACHE / f"k8s.io/kubernetes@{kube}" / "build" / "pause"
    if not (directory / "linux" / "pause.c").is_file():
        raise StepFailed(
            f"step 'pause' failed: {directory}/linux/pause.c not found: run scripts/cluster/build first "
            "(it downloads the k8s.io/kubernetes module)"
        )
    return directory, recipe.pause_tag((directory / "Makefile").read_text())


def revision(name: str) -> dict[str, str]:
    return {"revision": str(recipe.REVISIONS[name])}


@dataclass
class Plan:
    """The images and the key of each, from the working tree and the settings."""

    images: dict[str, recipe.Image]
    keys: dict[str, str] = field(default_factory=dict)
    base_image: str | None = None
    torch_index: str | None = None

    @classmethod
    def make(cls) -> Plan:
        try:
            pause_dir, pause_version = pause_source()
        except StepFailed:
            pause_dir, pause_version = None, "unknown"
        plan = cls(
            recipe.images(list(MODELS), pause_version),
            base_image=os.environ.get("FRAUDMODEL_BASE_IMAGE") or None,
            torch_index=os.environ.get("FRAUDMODEL_TORCH_INDEX_URL") or None,
        )
        recipe.torch_index_args(plan.torch_index)  # refuses a malformed URL before any work
        plan.keys["base"] = recipe.input_key(
            {
                "suite": recipe.DEBIAN_SUITE,
                "packages": " ".join(recipe.BASE_PACKAGES),
                "options": "\n".join(recipe.BASE_MMDEBSTRAP_OPTIONS),
                **{f"apt/{k}": v for k, v in host_apt_sources().items()},
                **revision("base"),
            }
        )
        if pause_dir is not None:
            plan.keys["pause"] = recipe.input_key(
                {
                    "pause.c": (pause_dir / "linux" / "pause.c").read_bytes(),
                    "tag": pause_version,
                    "cflags": " ".join(recipe.PAUSE_CFLAGS),
                    **revision("pause"),
                }
            )
        base = plan.base_image or plan.keys["base"]
        plan.keys["operator"] = recipe.input_key(
            {
                **recipe.tree_files(ROOT, ["Dockerfile", ".dockerignore", "pyproject.toml", "README.md"]),
                **recipe.tree_files(ROOT, ["operator/**/*"], exclude=["__pycache__", "*.egg-info", "*.pyc"]),
                "base": base,
                **revision("operator"),
            }
        )
        plan.keys["fraud-detector"] = recipe.input_key(
            {
                "models": plan.models_key,
                **recipe.tree_files(
                    BENTO, ["bentofile.yaml", "README.md", "fraud_detector/*.py", "fraud_detector/py.typed"]
                ),
                "base": base,
                "torch-index": plan.torch_index or "",
                **revision("fraud-detector"),
            }
        )
        return plan

    @property
    def models_key(self) -> str:
        """Training inputs: the bento's code and dependencies, and the versions with their arguments."""
        return recipe.input_key(
            {
                "models": json.dumps(MODELS, sort_keys=True),
                **recipe.tree_files(BENTO, ["pyproject.toml", *recipe.TRAINING_MODULES]),
            }
        )

    def archive(self, name: str) -> Path:
        return CACHE / recipe.archive_name(name, self.keys[name])

    def base_ref(self) -> str:
        return self.base_image or self.images["base"].refs[0]


# --- the host's index settings, mounted into builds


@contextlib.contextmanager
def index_mounts(staging: Path) -> Iterator[list[str]]:
    """`-v` options giving a build the host's pip/uv settings, CA bundle and uv cache."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
    ).stdout
    pip_config = {}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            pip_config[key.strip()] = value.strip().strip("'\"")
    settings = recipe.index_settings(pip_config, os.environ)
    # pip and uv read /etc/xdg/{pip/pip.conf,uv/uv.toml}: one directory mount, nothing left behind
    (staging / "xdg" / "pip").mkdir(parents=True, exist_ok=True)
    (staging / "xdg" / "uv").mkdir(parents=True, exist_ok=True)
    (staging / "xdg" / "pip" / "pip.conf").write_text(recipe.render_pip_conf(settings))
    (staging / "xdg" / "uv" / "uv.toml").write_text(recipe.render_uv_toml(settings))
    ca = next(
        (
            Path(p)
            for p in (
                os.environ.get("SSL_CERT_FILE"),
                os.environ.get("PIP_CERT"),
                pip_config.get("global.cert"),
                recipe.CA_IN_BUILD,
            )
            if p and Path(p).is_file()
        ),
        None,
    )
    uv_cache = Path(
        subprocess.run(["uv", "cache", "dir"], capture_output=True, text=True, check=False).stdout.strip()
        or Path.home() / ".cache" / "uv"
    )
    uv_cache.mkdir(parents=True, exist_ok=True)
    mounts = [
        f"--volume={staging / 'xdg'}:/etc/xdg:ro",
        # The host's uv on PATH (/usr/local/sbin is empty in Debian and python images): BentoML's
        # Dockerfile then uses it instead of installing its own, and finds the host's downloads
        # in the shared cache (uv versions keep separate cache buckets).
        f"--volume={host_uv(staging / 'uv')}:/usr/local/sbin:ro",
        f"--volume={uv_cache}:/root/.cache/uv",
    ]
    if ca is not None:
        mounts.append(f"--volume={ca}:{recipe.CA_IN_BUILD}:ro")
    try:
        yield mounts
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def host_uv(into: Path) -> Path:
    """A directory holding the host's uv binary (resolving a pyenv shim)."""
    found = shutil.which("uv")
    if found is None:
        raise StepFailed("step 'index settings' failed: no uv on PATH (python3 -m pip install uv)")
    with open(found, "rb") as f:
        if f.read(4) != b"\x7fELF":  # a shim script: ask pyenv for the executable
            found = subprocess.run(["pyenv", "which", "uv"], capture_output=True, text=True, check=False).stdout.strip()
    if not found or not Path(found).is_file():
        raise StepFailed("step 'index settings' failed: cannot find the uv executable behind the uv on PATH")
    into.mkdir(parents=True, exist_ok=True)
    shutil.copy2(found, into / "uv")
    return into


# --- the images


def build_base(plan: Plan, run: Runner, work: Path) -> None:
    ref = plan.images["base"].refs[0]
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources")) or [Path("/etc/apt/sources.list")]
    rootfs = work / "rootfs.tar"
    run.step = "base: mmdebstrap"
    say(f"  {run.step} {recipe.DEBIAN_SUITE} with {', '.join(recipe.BASE_PACKAGES)} (host's apt sources)")
    run.run(
        ["mmdebstrap", *recipe.BASE_MMDEBSTRAP_OPTIONS, f"--include={','.join(recipe.BASE_PACKAGES)}",
         recipe.DEBIAN_SUITE, rootfs, *sources],
        log="base",
        env={**os.environ, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},  # Debian's python3 for mmtarfilter
    )  # fmt: skip
    run.step = "base: buildah commit"
    say(f"  {run.step} {ref}")
    container = run.run(buildah("from", "--quiet", "scratch"), log="base", nice=False).splitlines()[-1].strip()
    try:
        run.run(buildah("add", container, rootfs, "/"), log="base")
        run.run(
            buildah("config", "--env", "LANG=C.UTF-8", "--env", "PYTHONUNBUFFERED=1", "--cmd", '["python3"]',
                    "--label", "org.opencontainers.image.description=Debian bookworm with Python 3.11",
                    "--os", "linux", "--arch", "amd64", container),
            log="base", nice=False,
        )  # fmt: skip
        run.run(buildah("commit", "--quiet", "--rm", container, ref), log="base")
    except StepFailed:
        subprocess.run(buildah("rm", container), capture_output=True, check=False)
        raise


def build_pause(plan: Plan, run: Runner, work: Path) -> None:
    ref = plan.images["pause"].refs[0]
    directory, version = pause_source()
    binary = work / "pause"
    run.step = "pause: gcc"
    say(f"  {run.step} {directory}/linux/pause.c (static)")
    run.run(["gcc", *recipe.PAUSE_CFLAGS, f"-DVERSION=v{version}-fraudmodel", "-o", binary,
             directory / "linux" / "pause.c"], log="pause")  # fmt: skip
    run.step = "pause: buildah commit"
    say(f"  {run.step} {ref}")
    container = run.run(buildah("from", "--quiet", "scratch"), log="pause", nice=False).splitlines()[-1].strip()
    run.run(buildah("copy", container, binary, "/pause"), log="pause", nice=False)
    run.run(
        buildah("config", "--entrypoint", '["/pause"]', "--user", f"{recipe.PAUSE_USER_ID}:{recipe.PAUSE_USER_ID}",
                "--os", "linux", "--arch", "amd64", container),
        log="pause", nice=False,
    )  # fmt: skip
    run.run(buildah("commit", "--quiet", "--rm", container, ref), log="pause", nice=False)


def buildah_build(run: Runner, *, dockerfile: Path, context: Path, ref: str, args: Mapping[str, str],
                  mounts: Sequence[str], log: str) -> None:  # fmt: skip
    argv: list[str | Path] = [
        "build", "--runtime", "runc", "--network", "host", "--layers", "--force-rm", "--format", "oci",
        "--file", dockerfile, "--tag", ref, *mounts,
    ]  # fmt: skip
    for key, value in args.items():
        argv += ["--build-arg", f"{key}={value}"]
    run.run(buildah(*argv, context), log=log)


def build_operator(plan: Plan, run: Runner, work: Path) -> None:
    ref = plan.images["operator"].refs[0]
    run.step = "operator: buildah build"
    say(f"  {run.step} {ref} from Dockerfile on {plan.base_ref()}")
    with index_mounts(work / "index") as mounts:
        buildah_build(run, dockerfile=ROOT / "Dockerfile", context=ROOT, ref=ref,
                      args={"BASE_IMAGE": plan.base_ref()}, mounts=mounts, log="operator")  # fmt: skip


BENTO_CONTEXT = """
import shutil, sys
import bentoml
from bentoml._internal.container import construct_containerfile
with construct_containerfile(bentoml.get(sys.argv[1]), enable_buildkit=False) as (context, _):
    shutil.copytree(context, sys.argv[2])
"""


def build_bento(plan: Plan, run: Runner, work: Path) -> None:
    image = plan.images["fraud-detector"]
    run.step = "fraud-detector: bento environment"
    say(f"  {run.step} (bentos/fraud_detector/scripts/setup-venv)")
    run.run([BENTO / "scripts" / "setup-venv"], log="fraud-detector")
    python = BENTO / ".venv" / "bin" / "python"
    home = CACHE / "bentoml" / plan.models_key
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    for version in image.tags:
        if not (home / "models" / "fraud_detector" / version).is_dir():
            run.step = f"fraud-detector: train {version}"
            say(f"  {run.step} {' '.join(MODELS[version])}".rstrip())
            run.run([python, "-m", "fraud_detector.train", "--version", version, "--force", *MODELS[version]],
                    log="fraud-detector", env=env, cwd=BENTO)  # fmt: skip
    args = {"BASE_IMAGE": plan.base_ref(), **recipe.torch_index_args(plan.torch_index)}
    first, ref = image.tags[0], image.refs[0]
    run.step = f"fraud-detector: bentoml build {first}"
    say(f"  {run.step} (with the models {', '.join(image.tags)})")
    shutil.rmtree(home / "bentos" / "fraud_detector" / first, ignore_errors=True)  # a rebuild replaces it
    run.run([python, "-m", "bentoml", "build", "--version", first, "."], log="fraud-detector",
            env={**env, "FRAUDMODEL_MODEL_TAG": f"fraud_detector:{first}"}, cwd=BENTO)  # fmt: skip
    context = work / "context"
    run.run([python, "-c", BENTO_CONTEXT, f"fraud_detector:{first}", context], log="fraud-detector", env=env)
    for version in image.tags[1:]:  # the bento's own model store gets the other versions too
        shutil.copytree(home / "models" / "fraud_detector" / version, context / "models" / "fraud_detector" / version)
    dockerfile = context / "env" / "docker" / "Dockerfile"
    try:
        dockerfile.write_text(recipe.render_bento_dockerfile(dockerfile.read_text()))
    except ValueError as error:
        raise StepFailed(f"step 'fraud-detector: render Dockerfile' failed: {error}") from error
    run.step = "fraud-detector: buildah build"
    say(f"  {run.step} {ref} on {plan.base_ref()} (installing torch takes minutes when not cached)")
    with index_mounts(work / "index") as mounts:
        buildah_build(run, dockerfile=dockerfile, context=context, ref=ref, args=args, mounts=mounts,
                      log="fraud-detector")  # fmt: skip


BUILDERS = {"base": build_base, "pause": build_pause, "operator": build_operator, "fraud-detector": build_bento}
TOOLS = {"base": ["mmdebstrap", "buildah"], "pause": ["gcc", "buildah"], "operator": ["buildah", "runc"],
         "fraud-detector": ["buildah", "runc"]}  # fmt: skip


# --- archives


def write_archive(plan: Plan, name: str, run: Runner, work: Path, started: float) -> dict[str, Any]:
    """Push the built image once into an OCI layout, add a manifest per tag (same layers, the
    tag's config), name them for containerd, tar it into the cache and drop the older
    archives of the image. Pushing each tag would read and write every layer again."""
    image = plan.images[name]
    layout = work / "layout"
    run.step = f"{name}: archive"
    say(f"  {run.step} {', '.join(image.refs)}")
    run.run(buildah("push", "--quiet", "--disable-compression", image.refs[0], f"oci:{layout}:built"), log=name)
    index = json.loads((layout / "index.json").read_text())
    blobs = layout / "blobs" / "sha256"
    (built,) = index["manifests"]
    manifest = json.loads((blobs / built["digest"].split(":", 1)[1]).read_bytes())
    config = json.loads((blobs / manifest["config"]["digest"].split(":", 1)[1]).read_bytes())
    layers = sum(layer["size"] for layer in manifest["layers"])
    index["manifests"], sizes = [], {}
    for tag, ref in zip(image.tags, image.refs, strict=True):
        config_data, config_digest = recipe.blob(recipe.tag_config(config, image.tag_env, tag))
        (blobs / config_digest.split(":", 1)[1]).write_bytes(config_data)
        tagged = {**manifest, "config": {**manifest["config"], "digest": config_digest, "size": len(config_data)}}
        manifest_data, manifest_digest = recipe.blob(tagged)
        (blobs / manifest_digest.split(":", 1)[1]).write_bytes(manifest_data)
        annotations = {"org.opencontainers.image.ref.name": ref, "io.containerd.image.name": ref}
        index["manifests"].append(
            {"mediaType": built["mediaType"], "digest": manifest_digest, "size": len(manifest_data),
             "annotations": annotations}
        )  # fmt: skip
        sizes[ref] = layers + len(config_data)
    if built["digest"] not in {m["digest"] for m in index["manifests"]}:  # only the tags stay
        (blobs / built["digest"].split(":", 1)[1]).unlink()
        (blobs / manifest["config"]["digest"].split(":", 1)[1]).unlink(missing_ok=True)
    (layout / "index.json").write_text(json.dumps(index))
    partial = plan.archive(name).with_suffix(".partial")
    run.run(["tar", "--create", "--file", partial, "--directory", layout, "."], log=name)
    for old in CACHE.glob(f"{name}-*.tar"):
        old.unlink()
        old.with_suffix(".json").unlink(missing_ok=True)
    partial.rename(plan.archive(name))
    meta = {
        "name": name,
        "key": plan.keys[name],
        "refs": list(image.refs),
        "digests": {m["annotations"]["io.containerd.image.name"]: m["digest"] for m in index["manifests"]},
        "image_bytes": sizes,
        "archive_bytes": plan.archive(name).stat().st_size,
        "build_seconds": round(time.monotonic() - started, 1),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    plan.archive(name).with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit in ("B", "KB") else f"{size:.2f} {unit}"
        size /= 1000
    return f"{size:.2f} GB"


@contextlib.contextmanager
def locked() -> Iterator[None]:
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / ".lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another image build ({CACHE / '.lock'})")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def build(names: Sequence[str], force: bool) -> int:
    plan = Plan.make()
    selected = recipe.select(names or ["all"], plan.images)
    if plan.base_image and "base" in selected:
        selected.remove("base")
        say(f"FRAUDMODEL_BASE_IMAGE={plan.base_image}: the local Debian base is not built")
    require_tools(sorted({t for n in selected for t in TOOLS[n]}))
    with locked():
        for stale in CACHE.glob("*-*/"):  # work directories of a build that was killed
            if stale.name.split("-")[0] in BUILDERS or stale.name.startswith("fraud-detector-"):
                shutil.rmtree(stale, ignore_errors=True)
        for number, name in enumerate(selected, 1):
            if name == "pause" and "pause" not in plan.keys:
                pause_source()  # raises, naming what is missing
            archive = plan.archive(name)
            if archive.is_file() and not force:
                say(f"step {number}/{len(selected)}: {name}: cached ({archive.name})")
                continue
            say(f"step {number}/{len(selected)}: {name} (key {plan.keys[name]})")
            started = time.monotonic()
            run = Runner(CACHE / "logs")
            (CACHE / "logs" / f"{name}.log").unlink(missing_ok=True)
            with tempfile.TemporaryDirectory(prefix=f"{name}-", dir=CACHE) as tmp:
                BUILDERS[name](plan, run, Path(tmp))
                meta = write_archive(plan, name, run, Path(tmp), started)
            sizes = ", ".join(f"{ref.rsplit('/', 1)[1]} {human(b)}" for ref, b in meta["image_bytes"].items())
            say(f"  {name}: built in {meta['build_seconds']:.0f}s: {sizes}; archive {human(meta['archive_bytes'])}")
    return 0


def archives(names: Sequence[str]) -> int:
    """Print the current archive of each loadable image (built for the working tree's inputs)."""
    plan = Plan.make()
    selected = [n for n in recipe.select(names or ["all"], plan.images) if plan.images[n].load or n in names]
    missing = [n for n in selected if n not in plan.keys or not plan.archive(n).is_file()]
    if missing:
        print(
            f"no current archive of {', '.join(missing)}: run scripts/images/build {' '.join(missing)}", file=sys.stderr
        )
        return 2
    for name in selected:
        print(plan.archive(name))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/images/build", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the images whose inputs changed")
    b.add_argument("names", nargs="*", help="all (default), base, pause, operator, fraud-detector")
    b.add_argument("--force", action="store_true", help="rebuild even when the archive is current")
    a = sub.add_parser("archives", help="print the current archives (for scripts/images/load)")
    a.add_argument("names", nargs="*")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            return build(args.names, args.force)
        return archives(args.names)
    except (StepFailed, ValueError) as error:
        say(f"ERROR: {error}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
