"""What each local image is made of: names, inputs, cache keys and the rendered build files.

Pure functions and tables only (no subprocesses, no network), so tests/unit checks them in
milliseconds; `builder.py` does the building. An image is rebuilt only when the key of its
inputs changes; a key covers the files and settings that shape the image and the keys of the
images it is built on.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

REGISTRY = "localhost/fraudmodel"
# The base a user with a normal registry gets, and the one built here from Debian packages.
UPSTREAM_BASE = "python:3.11-slim"
DEBIAN_SUITE = "bookworm"  # its python3 is 3.11, like the bento's environment
BASE_PACKAGES: tuple[str, ...] = (
    "python3",  # 3.11 in bookworm
    "python3-venv",  # `python3 -m venv` (the operator's Dockerfile)
    "python3-pip",  # BentoML's Dockerfile installs uv with pip
    "ca-certificates",
    "passwd",  # groupadd/useradd (both Dockerfiles create their user)
)
# mmdebstrap options: no recommends, no docs/man pages/locales (copyright files stay).
BASE_MMDEBSTRAP_OPTIONS: tuple[str, ...] = (
    "--variant=minbase",
    '--aptopt=Apt::Install-Recommends "false"',
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--customize-hook=rm -rf $1/var/lib/apt/lists/* $1/var/cache/apt/*.bin",
)
# What a trained model depends on (bentos/fraud_detector: train.py and what it imports); the
# models are retrained only when these or the versions' arguments change.
TRAINING_MODULES: tuple[str, ...] = tuple(
    f"fraud_detector/{m}.py"
    for m in ("__init__", "train", "data", "model", "evaluation", "schema", "validation", "card", "metrics", "release")
)
PAUSE_CFLAGS: tuple[str, ...] = ("-Os", "-Wall", "-Werror", "-static")
# BentoML's default user (uid = gid = 1034 in its Dockerfile template); the image's USER is
# rendered numeric so a kubelet can check runAsNonRoot without a runAsUser.
BENTO_USER_ID = 1034
BENTOML_HOME_IN_POD = "/tmp/bentoml"  # the pod's emptyDir
OPERATOR_USER_ID = 65532  # the Dockerfile's and the chart's
PAUSE_USER_ID = 65535  # Kubernetes' own pause image


# Bump an image's revision when the way builder.py builds it changes (the key covers the
# inputs below, not the build scripts, so an edit elsewhere does not rebuild 6 GB).
REVISIONS: dict[str, int] = {"base": 1, "pause": 1, "operator": 1, "fraud-detector": 2}


def image_ref(name: str, tag: str) -> str:
    """`localhost/fraudmodel/<name>:<tag>`, refusing what a reference cannot hold."""
    if not re.fullmatch(r"[a-z0-9]+(?:[._-][a-z0-9]+)*", name):
        raise ValueError(f"image name {name!r}: lowercase letters, digits and single . _ - separators only")
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", tag):
        raise ValueError(f"image tag {tag!r}: letters, digits, _ . - (not first), at most 128")
    return f"{REGISTRY}/{name}:{tag}"


@dataclass(frozen=True)
class Image:
    """One archive in the cache: an image name, its tags and what it is built on."""

    name: str
    tags: tuple[str, ...]
    built_on: tuple[str, ...] = ()
    load: bool = True  # imported into containerd by scripts/images/load
    # Tags beyond the first are the same layers with this variable set per tag in the image
    # config (no layer is read or written again): (name, value with {tag}).
    tag_env: tuple[str, str] | None = None

    @property
    def refs(self) -> tuple[str, ...]:
        return tuple(image_ref(self.name, tag) for tag in self.tags)


def pause_tag(makefile: str) -> str:
    """The pause image's version from Kubernetes' build/pause/Makefile (`TAG ?= 3.10.1`)."""
    found = re.search(r"^TAG\s*\?=\s*(\S+)\s*$", makefile, re.M)
    if not found:
        raise ValueError("build/pause/Makefile has no `TAG ?= <version>` line")
    return found.group(1)


def images(model_versions: Sequence[str], pause_version: str) -> dict[str, Image]:
    """Every image, in build order. The bento image has one tag per model version."""
    return {
        "base": Image("base", (DEBIAN_SUITE,), load=False),
        "pause": Image("pause", (pause_version,)),
        "operator": Image("operator", ("dev",), built_on=("base",)),
        # One bento holding every model; each tag's default model is its version.
        "fraud-detector": Image(
            "fraud-detector",
            tuple(model_versions),
            built_on=("base",),
            tag_env=("FRAUDMODEL_MODEL_TAG", "fraud_detector:{tag}"),
        ),
    }


def select(names: Iterable[str], known: Mapping[str, Image]) -> list[str]:
    """The images asked for (`all` = every one) plus what they are built on, in build order."""
    wanted: set[str] = set()
    for name in names:
        if name == "all":
            wanted.update(known)
        elif name in known:
            wanted.add(name)
            wanted.update(known[name].built_on)
        else:
            raise ValueError(f"unknown image {name!r}: expected one of all, {', '.join(known)}")
    return [name for name in known if name in wanted]


def input_key(parts: Mapping[str, bytes | str]) -> str:
    """A content hash of named inputs: the same parts give the same key, any change another."""
    digest = hashlib.sha256()
    for name in sorted(parts):
        value = parts[name]
        data = value.encode() if isinstance(value, str) else value
        for chunk in (name.encode(), b"\0", str(len(data)).encode(), b"\0", data):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def tree_files(root: Path, include: Sequence[str], exclude: Sequence[str] = ()) -> dict[str, bytes]:
    """Files under `root` matching `include` globs and no `exclude` glob, by relative path."""
    found: dict[str, bytes] = {}
    for pattern in include:
        for path in sorted(root.glob(pattern)):
            rel = path.relative_to(root).as_posix()
            if path.is_file() and not any(fnmatch(part, ex) for part in rel.split("/") for ex in exclude):
                found[rel] = path.read_bytes()
    return found


def archive_name(name: str, key: str) -> str:
    return f"{name}-{key}.tar"


# --- BentoML's generated Dockerfile, rendered for a base image and an index given at build time


def render_bento_dockerfile(generated: str) -> str:
    """BentoML's generated Dockerfile with four changes, each checked to apply exactly once:

    * the base image is the build argument `BASE_IMAGE` (default: the one BentoML chose,
      `python:3.11-slim`), so the same file builds on a locally built base;
    * `UV_EXTRA_INDEX_URL` and `UV_INDEX_STRATEGY` are build arguments of the package
      install step (e.g. a CPU-only torch wheel index; unset, nothing changes);
    * `USER` is numeric (`1034:1034`, BentoML's uid/gid), so a kubelet can verify
      `runAsNonRoot` without the pod naming a `runAsUser`;
    * `BENTOML_HOME` (BentoML's Prometheus multiprocess files, its temporary stores) is
      under /tmp, the one writable path of the planner's pods (read-only root filesystem);
      the bento and its models stay where BentoML put them (`BENTO_PATH`).
    """
    text = generated
    base = _one(r"^FROM (\S+) AS base-container$", text, "the FROM ... AS base-container line")
    text = _replace_line(
        text,
        f"FROM {base.group(1)} AS base-container",
        f"ARG BASE_IMAGE={base.group(1)}\nFROM ${{BASE_IMAGE}} AS base-container",
    )
    _one(r"^# install python packages$", text, "the '# install python packages' step")
    text = _replace_line(
        text,
        "# install python packages",
        "# install python packages (optional build arguments: another wheel index, e.g. CPU-only torch)\n"
        "ARG UV_EXTRA_INDEX_URL\nARG UV_INDEX_STRATEGY",
    )
    home = _one(r"^ENV BENTOML_HOME=(\S+)$", text, "ENV BENTOML_HOME").group(0)
    text = _replace_line(text, home, f"ENV BENTOML_HOME={BENTOML_HOME_IN_POD}")
    uid = _one(r"^ARG BENTO_USER_UID=(\d+)$", text, "ARG BENTO_USER_UID").group(1)
    gid = _one(r"^ARG BENTO_USER_GID=(\d+)$", text, "ARG BENTO_USER_GID").group(1)
    user = _one(r"^USER (\S+)$", text, "the USER line").group(1)
    return _replace_line(text, f"USER {user}", f"USER {uid}:{gid}")


def _one(pattern: str, text: str, what: str) -> re.Match[str]:
    found = list(re.finditer(pattern, text, re.M))
    if len(found) != 1:
        raise ValueError(
            f"BentoML's generated Dockerfile has {len(found)} of {what} (expected 1): "
            "its template changed, update scripts/images/recipe.py"
        )
    return found[0]


def _replace_line(text: str, old: str, new: str) -> str:
    lines = text.split("\n")
    return "\n".join(new if line == old else line for line in lines)


# --- The host's package-index settings, handed to pip and uv inside a build (never stored)

CA_IN_BUILD = "/etc/ssl/certs/ca-certificates.crt"  # where the host's CA bundle is mounted


@dataclass(frozen=True)
class IndexSettings:
    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    trusted_hosts: tuple[str, ...] = ()


def index_settings(pip_config: Mapping[str, str], env: Mapping[str, str]) -> IndexSettings:
    """The host's index from uv's environment, else pip's configuration (`pip config list`).

    `pip_config` maps `pip config list` keys (`global.index-url`, `:env:.extra-index-url`, ...)
    to values; pip's own precedence (environment over files) is kept.
    """

    def pip(option: str) -> str | None:
        for scope in (":env:", "install", "global"):
            if f"{scope}.{option}" in pip_config:
                return pip_config[f"{scope}.{option}"]
        return None

    index = env.get("UV_DEFAULT_INDEX") or env.get("UV_INDEX_URL") or pip("index-url")
    extra = env.get("UV_INDEX") or env.get("UV_EXTRA_INDEX_URL") or pip("extra-index-url") or ""
    trusted = pip("trusted-host") or ""
    return IndexSettings(index, tuple(extra.split()), tuple(trusted.split()))


def render_pip_conf(settings: IndexSettings) -> str:
    """pip.conf for a build: the host's index, its CA bundle, and pip allowed to install
    into Debian's Python (BentoML's Dockerfile installs uv with the system pip)."""
    lines = ["[global]", f"cert = {CA_IN_BUILD}", "break-system-packages = true"]
    if settings.index_url:
        lines.append(f"index-url = {settings.index_url}")
    if settings.extra_index_urls:
        lines.append(f"extra-index-url = {' '.join(settings.extra_index_urls)}")
    if settings.trusted_hosts:
        lines.append(f"trusted-host = {' '.join(settings.trusted_hosts)}")
    return "\n".join(lines) + "\n"


def render_uv_toml(settings: IndexSettings) -> str:
    """uv.toml for a build: the host's index, the system CA store (the host's bundle
    is mounted over it), copies from the host's cache (another filesystem), no Python
    downloads (the base image has Python 3.11)."""
    lines = ["native-tls = true", 'link-mode = "copy"', 'python-downloads = "never"']
    if settings.index_url:
        lines.append(f"index-url = {_toml_str(settings.index_url)}")
    if settings.extra_index_urls:
        lines.append(f"extra-index-url = [{', '.join(_toml_str(u) for u in settings.extra_index_urls)}]")
    if settings.trusted_hosts:
        lines.append(f"allow-insecure-host = [{', '.join(_toml_str(h) for h in settings.trusted_hosts)}]")
    return "\n".join(lines) + "\n"


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def torch_index_args(torch_index_url: str | None) -> dict[str, str]:
    """Build arguments for a CPU-only (or any other) torch wheel index: searched with PyPI,
    the best match wins (`2.15.0+cpu` over `2.15.0` for `torch==2.15.0`)."""
    if not torch_index_url:
        return {}
    if not re.match(r"^(https?|file)://\S+$", torch_index_url):
        raise ValueError(f"FRAUDMODEL_TORCH_INDEX_URL={torch_index_url!r}: expected an http(s):// or file:// URL")
    return {"UV_EXTRA_INDEX_URL": torch_index_url, "UV_INDEX_STRATEGY": "unsafe-best-match"}


# --- per-tag images derived from one built image (config-only differences)


def tag_config(config: Mapping[str, object], env: tuple[str, str] | None, tag: str) -> dict[str, object]:
    """The image config of `tag`: the built one with the tag's variable set (replacing any
    value it had), everything else (layers, history, user, entrypoint) unchanged."""
    derived = json.loads(json.dumps(config))
    if env is not None:
        name, template = env
        settings = derived.setdefault("config", {})
        kept = [item for item in settings.get("Env") or [] if not item.startswith(f"{name}=")]
        settings["Env"] = [*kept, f"{name}={template.format(tag=tag)}"]
    return dict(derived)


def blob(document: Mapping[str, object]) -> tuple[bytes, str]:
    """A JSON document as an OCI blob and its digest."""
    data = json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
    return data, "sha256:" + hashlib.sha256(data).hexdigest()
