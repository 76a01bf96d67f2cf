"""The build inputs of the local images (scripts/images/recipe.py): names, selection, cache keys,
BentoML's Dockerfile as rendered for a base image and an index given at build time, and the
host's index settings handed to pip and uv inside a build. No image is built here."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import pytest
from scripts.images import recipe

ROOT = Path(__file__).resolve().parents[2]

# What BentoML 1.4.40 generates for bentos/fraud_detector (the lines the renderer touches).
GENERATED = """\
# Block SETUP_BENTO_BASE_IMAGE
FROM python:3.11-slim AS base-container

ENV LANG=C.UTF-8
ARG BENTO_USER=bentoml
ENV BENTOML_HOME=/home/bentoml/
ARG BENTO_USER_UID=1034
ARG BENTO_USER_GID=1034
RUN groupadd -g $BENTO_USER_GID -o $BENTO_USER && useradd -m -u $BENTO_USER_UID -g $BENTO_USER_GID -o -r $BENTO_USER
COPY --chown=bentoml:bentoml ./env/python ./env/python/
# install python packages
RUN uv --directory ./src pip install -r $BENTO_PATH/env/python/requirements.txt

COPY --chown=bentoml:bentoml . ./
USER bentoml

ENTRYPOINT [ "/home/bentoml/bento/env/docker/entrypoint.sh" ]
"""


def test_rendered_bento_dockerfile_takes_the_base_as_a_build_argument_defaulting_to_bentomls() -> None:
    text = recipe.render_bento_dockerfile(GENERATED)
    assert "ARG BASE_IMAGE=python:3.11-slim\nFROM ${BASE_IMAGE} AS base-container\n" in text
    assert "FROM python:3.11-slim" not in text


def test_rendered_bento_dockerfile_declares_the_index_arguments_right_before_the_install() -> None:
    lines = recipe.render_bento_dockerfile(GENERATED).splitlines()
    install = next(i for i, line in enumerate(lines) if line.startswith("RUN uv --directory"))
    assert lines[install - 2 : install] == ["ARG UV_EXTRA_INDEX_URL", "ARG UV_INDEX_STRATEGY"]


def test_rendered_bento_dockerfile_runs_as_bentomls_numeric_uid_and_gid() -> None:
    text = recipe.render_bento_dockerfile(GENERATED)
    assert re.findall(r"^USER .*$", text, re.M) == ["USER 1034:1034"]
    assert recipe.BENTO_USER_ID == 1034


def test_rendered_bento_dockerfile_keeps_bentomls_state_under_the_pods_writable_tmp() -> None:
    text = recipe.render_bento_dockerfile(GENERATED)
    assert re.findall(r"^ENV BENTOML_HOME=.*$", text, re.M) == ["ENV BENTOML_HOME=/tmp/bentoml"]


def test_rendering_keeps_every_other_line() -> None:
    rendered = recipe.render_bento_dockerfile(GENERATED).splitlines()
    touched = {
        "FROM python:3.11-slim AS base-container",
        "# install python packages",
        "USER bentoml",
        "ENV BENTOML_HOME=/home/bentoml/",
    }
    assert [line for line in GENERATED.splitlines() if line not in touched] == [
        line for line in rendered if line in GENERATED.splitlines()
    ]


@pytest.mark.parametrize(
    ("change", "missing"),
    [
        (("FROM python:3.11-slim AS base-container", "FROM python:3.11-slim"), "FROM ... AS base-container"),
        (("# install python packages", "# deps"), "install python packages"),
        (("USER bentoml", ""), "the USER line"),
        (("ARG BENTO_USER_UID=1034", "ARG BENTO_USER_UID"), "BENTO_USER_UID"),
        (("USER bentoml", "USER bentoml\nUSER root"), "the USER line"),
        (("ENV BENTOML_HOME=/home/bentoml/", ""), "ENV BENTOML_HOME"),
    ],
    ids=["from-without-stage", "no-install-step", "no-user", "uid-without-default", "two-users", "no-home"],
)
def test_a_changed_bentoml_template_fails_naming_what_is_missing(change: tuple[str, str], missing: str) -> None:
    with pytest.raises(ValueError, match=re.escape(missing)) as error:
        recipe.render_bento_dockerfile(GENERATED.replace(*change))
    assert "scripts/images/recipe.py" in str(error.value)


def test_the_operator_dockerfile_takes_the_base_as_a_build_argument_defaulting_to_python_slim() -> None:
    text = (ROOT / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    assert args["BASE_IMAGE"].replace("${PYTHON_VERSION}", args["PYTHON_VERSION"]) == recipe.UPSTREAM_BASE
    assert re.findall(r"^FROM (\S+)", text, re.M) == ["${BASE_IMAGE}", "${BASE_IMAGE}"]
    assert f"USER {recipe.OPERATOR_USER_ID}:{recipe.OPERATOR_USER_ID}" in text
    assert "find_spec('torch') is None" in text, "the operator image must not carry the bento's torch"


def test_the_bentofile_pins_what_the_image_installs() -> None:
    text = (ROOT / "bentos" / "fraud_detector" / "bentofile.yaml").read_text()
    packages = re.findall(r'^\s+- "([\w-]+)==([\w.]+)"$', text, re.M)
    assert {name for name, _ in packages} >= {"torch", "numpy", "pydantic", "prometheus-client", "httptools", "uvloop"}
    assert 'python_version: "3.11"' in text


def test_input_key_is_stable_and_changes_with_any_part() -> None:
    parts: dict[str, bytes | str] = {"Dockerfile": b"FROM x\n", "base": "abc"}
    key = recipe.input_key(parts)
    assert key == recipe.input_key(dict(reversed(list(parts.items()))))
    assert re.fullmatch(r"[0-9a-f]{16}", key)
    assert recipe.input_key({**parts, "base": "abd"}) != key
    assert recipe.input_key({**parts, "Dockerfile": b"FROM y\n"}) != key
    assert recipe.input_key({**parts, "extra": ""}) != key


def test_input_key_keeps_names_and_contents_apart() -> None:
    assert recipe.input_key({"ab": "c"}) != recipe.input_key({"a": "bc"})
    assert recipe.input_key({"a": "b", "c": ""}) != recipe.input_key({"a": "", "c": "b"})


def test_tree_files_follows_includes_and_excludes(tmp_path: Path) -> None:
    (tmp_path / "pkg" / "__pycache__").mkdir(parents=True)
    (tmp_path / "pkg" / "a.py").write_text("a")
    (tmp_path / "pkg" / "__pycache__" / "a.cpython-311.pyc").write_text("x")
    (tmp_path / "pkg" / "b.pyc").write_text("x")
    (tmp_path / "pkg" / "pkg.egg-info").mkdir()
    (tmp_path / "pkg" / "pkg.egg-info" / "PKG-INFO").write_text("x")
    files = recipe.tree_files(tmp_path, ["pkg/**/*"], exclude=["__pycache__", "*.pyc", "*.egg-info"])
    assert files == {"pkg/a.py": b"a"}


def test_images_are_named_under_localhost_fraudmodel_with_a_tag_per_model_version() -> None:
    images = recipe.images(["v1", "v2", "v2-miscalibrated"], "3.10.1")
    assert images["fraud-detector"].refs == (
        "localhost/fraudmodel/fraud-detector:v1",
        "localhost/fraudmodel/fraud-detector:v2",
        "localhost/fraudmodel/fraud-detector:v2-miscalibrated",
    )
    assert images["pause"].refs == ("localhost/fraudmodel/pause:3.10.1",)
    assert images["operator"].refs == ("localhost/fraudmodel/operator:dev",)
    assert not images["base"].load, "the base is built on, never run by the kubelet"


@pytest.mark.parametrize(
    ("name", "tag", "error"),
    [
        ("Fraud", "v1", "image name"),
        ("fraud--x", "v1", "image name"),
        ("fraud", "-v1", "image tag"),
        ("fraud", "v/1", "image tag"),
    ],
    ids=["uppercase", "double-separator", "tag-starts-with-dash", "slash-in-tag"],
)
def test_image_ref_refuses_what_a_reference_cannot_hold(name: str, tag: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        recipe.image_ref(name, tag)


@pytest.mark.parametrize(
    ("asked", "expected"),
    [
        (["all"], ["base", "pause", "operator", "fraud-detector"]),
        (["fraud-detector"], ["base", "fraud-detector"]),
        (["fraud-detector", "pause"], ["base", "pause", "fraud-detector"]),
        (["pause"], ["pause"]),
    ],
    ids=["all", "with-its-base", "build-order", "alone"],
)
def test_select_adds_what_an_image_is_built_on_in_build_order(asked: list[str], expected: list[str]) -> None:
    assert recipe.select(asked, recipe.images(["v1"], "3.10.1")) == expected


def test_select_refuses_an_unknown_image_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown image 'bento'.*fraud-detector"):
        recipe.select(["bento"], recipe.images(["v1"], "3.10.1"))


def test_pause_tag_comes_from_kubernetes_makefile() -> None:
    assert recipe.pause_tag("IMAGE = registry.k8s.io/pause\n\nTAG ?= 3.10.1\nREV = x\n") == "3.10.1"
    with pytest.raises(ValueError, match="TAG"):
        recipe.pause_tag("IMAGE = registry.k8s.io/pause\n")


@pytest.mark.parametrize(
    ("pip_config", "env", "expected"),
    [
        ({}, {}, recipe.IndexSettings()),
        (
            {"global.index-url": "https://mirror.example/simple", "global.trusted-host": "mirror.example"},
            {},
            recipe.IndexSettings("https://mirror.example/simple", (), ("mirror.example",)),
        ),
        (
            {"global.index-url": "https://files/simple", ":env:.index-url": "https://env/simple"},
            {},
            recipe.IndexSettings("https://env/simple"),
        ),
        (
            {"global.index-url": "https://pip/simple", "global.extra-index-url": "https://a/simple https://b/simple"},
            {"UV_DEFAULT_INDEX": "https://uv/simple"},
            recipe.IndexSettings("https://uv/simple", ("https://a/simple", "https://b/simple")),
        ),
    ],
    ids=["defaults", "pip-files", "pip-env-over-files", "uv-env-over-pip"],
)
def test_index_settings_follow_the_hosts_pip_and_uv(
    pip_config: dict[str, str], env: dict[str, str], expected: recipe.IndexSettings
) -> None:
    assert recipe.index_settings(pip_config, env) == expected


def test_build_config_points_pip_and_uv_at_the_index_and_the_mounted_ca_bundle() -> None:
    settings = recipe.IndexSettings(
        "https://mirror.example/simple", ("https://extra.example/simple",), ("mirror.example",)
    )
    pip_conf = recipe.render_pip_conf(settings)
    assert pip_conf.splitlines() == [
        "[global]",
        f"cert = {recipe.CA_IN_BUILD}",
        "break-system-packages = true",
        "index-url = https://mirror.example/simple",
        "extra-index-url = https://extra.example/simple",
        "trusted-host = mirror.example",
    ]
    uv_toml = recipe.render_uv_toml(settings)
    assert "native-tls = true" in uv_toml
    assert 'python-downloads = "never"' in uv_toml
    assert 'index-url = "https://mirror.example/simple"' in uv_toml
    assert 'extra-index-url = ["https://extra.example/simple"]' in uv_toml


def test_build_config_without_a_configured_index_names_none() -> None:
    assert "index-url" not in recipe.render_pip_conf(recipe.IndexSettings())
    assert "index-url" not in recipe.render_uv_toml(recipe.IndexSettings())


def test_a_torch_index_becomes_uv_build_arguments_preferring_the_best_match() -> None:
    assert recipe.torch_index_args(None) == {}
    assert recipe.torch_index_args("https://wheels.example/cpu") == {
        "UV_EXTRA_INDEX_URL": "https://wheels.example/cpu",
        "UV_INDEX_STRATEGY": "unsafe-best-match",
    }
    with pytest.raises(ValueError, match="FRAUDMODEL_TORCH_INDEX_URL"):
        recipe.torch_index_args("wheels.example/cpu")


def test_no_index_host_is_written_into_the_build_files() -> None:
    files = [ROOT / "Dockerfile", ROOT / "bentos" / "fraud_detector" / "bentofile.yaml", *ROOT.glob("scripts/images/*")]
    for path in files:
        urls = re.findall(r"https?://[^\s\"')]+", path.read_text())
        assert all(".example" in url for url in urls), f"{path.name} names a host: {urls}"


def test_each_bento_tag_is_the_built_image_with_its_own_default_model() -> None:
    image = recipe.images(["v1", "v2"], "3.10.1")["fraud-detector"]
    built: dict[str, Any] = {
        "architecture": "amd64",
        "config": {"Env": ["PATH=/app/.venv/bin", "FRAUDMODEL_MODEL_TAG=old"], "User": "1034:1034"},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:a", "sha256:b"]},
    }
    v2 = recipe.tag_config(built, image.tag_env, "v2")
    assert v2["config"] == {
        "Env": ["PATH=/app/.venv/bin", "FRAUDMODEL_MODEL_TAG=fraud_detector:v2"],
        "User": "1034:1034",
    }
    assert v2["rootfs"] == built["rootfs"], "same layers"
    assert built["config"]["Env"][-1] == "FRAUDMODEL_MODEL_TAG=old", "the built config is not modified"


def test_an_image_without_a_tag_variable_keeps_its_config() -> None:
    config = {"config": {"Env": ["A=1"]}, "rootfs": {"diff_ids": []}}
    assert recipe.tag_config(config, None, "dev") == config


def test_blob_digest_is_the_sha256_of_its_canonical_bytes() -> None:
    data, digest = recipe.blob({"b": 1, "a": [1, 2]})
    assert data == b'{"a":[1,2],"b":1}'
    assert digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert recipe.blob({"a": [1, 2], "b": 1}) == (data, digest)


def test_training_modules_cover_what_train_imports() -> None:
    package = ROOT / "bentos" / "fraud_detector" / "fraud_detector"
    listed = {Path(m).stem for m in recipe.TRAINING_MODULES}
    seen, todo = set(), ["train"]
    while todo:
        module = todo.pop()
        seen.add(module)
        text = (package / f"{module}.py").read_text()
        todo += [
            name
            for pair in re.findall(r"^from \.(\w+) import|^from \. import (\w+)", text, re.M)
            for name in pair
            if name
        ]
        todo = [m for m in todo if m not in seen]
    assert seen <= listed, f"train.py imports {sorted(seen - listed)}: add them to recipe.TRAINING_MODULES"
