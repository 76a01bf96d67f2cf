"""The stable edge's routing config, as the kubelet delivers it: a mounted ConfigMap whose file is
swapped through a `..data` symlink, re-read at most once per interval, never raising on the request path."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fraud_detector.routing import NO_ROUTING, RoutingConfig, RoutingFile, ShadowTarget, parse_routing
from fraud_detector.settings import Settings

SHADOW = {"url": "http://bot-shadow.default.svc:80", "sample": 0.25, "version": "v2"}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def publish(mount: Path, document: str, generation: int) -> None:
    """What the kubelet's atomic writer does: a new timestamped dir, `..data` swapped to it,
    `routing.json` a symlink through `..data`."""
    target = mount / f"..gen{generation}"
    target.mkdir()
    (target / "routing.json").write_text(document)
    tmp = mount / "..data_tmp"
    tmp.symlink_to(target.name)
    os.replace(tmp, mount / "..data")
    link = mount / "routing.json"
    if not link.is_symlink():
        link.symlink_to("..data/routing.json")


def test_the_operators_document_parses_and_unknown_fields_are_ignored() -> None:
    doc = {"revision": "abc", "shadow": {**SHADOW, "later": 1}, "canary": {"url": "x", "weight": 10}}
    config = parse_routing(json.dumps(doc))
    assert config == RoutingConfig(revision="abc", shadow=ShadowTarget(**SHADOW))  # type: ignore[arg-type]
    assert parse_routing("{}") == NO_ROUTING


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("{", "not JSON"),
        ("[]", "JSON object"),
        ('{"shadow": {"url": "x", "sample": 2, "version": "v2"}}', "shadow.sample"),
        ('{"shadow": {"sample": 0.1, "version": "v2"}}', "shadow.url"),
    ],
)
def test_a_broken_document_is_refused_naming_what_is_wrong(document: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_routing(document)


def test_the_kubelets_swap_is_picked_up_at_the_next_check_and_not_before(tmp_path: Path) -> None:
    clock, seen = Clock(), []
    routing = RoutingFile(
        tmp_path / "routing.json",
        interval_s=1.0,
        clock=clock,
        on_change=lambda c, e: seen.append((c.revision, e)),
    )
    assert routing.current() == NO_ROUTING, "no ConfigMap yet (the volume is optional)"
    publish(tmp_path, json.dumps({"revision": "r1"}), 1)
    assert routing.current() == NO_ROUTING, "checked less than a second ago"
    clock.now = 1.0
    assert routing.current().revision == "r1"
    publish(tmp_path, json.dumps({"revision": "r2", "shadow": SHADOW}), 2)
    clock.now = 1.5
    assert routing.current().revision == "r1"
    clock.now = 2.0
    assert routing.current().shadow == ShadowTarget(**SHADOW)  # type: ignore[arg-type]
    assert seen == [("r1", None), ("r2", None)]


def test_a_broken_file_routes_nothing_and_is_reported_once(tmp_path: Path) -> None:
    clock, seen = Clock(), []
    routing = RoutingFile(
        tmp_path / "routing.json",
        interval_s=1.0,
        clock=clock,
        on_change=lambda c, e: seen.append((c.revision, e)),
    )
    publish(tmp_path, json.dumps({"revision": "r1", "shadow": SHADOW}), 1)
    assert routing.current().shadow is not None
    publish(tmp_path, '{"revision": "r2", "shadow": {"url": 3', 2)
    clock.now = 1.0
    assert routing.current() == NO_ROUTING
    clock.now = 2.0
    assert routing.current() == NO_ROUTING
    assert len(seen) == 2 and seen[1][0] == "" and "not JSON" in (seen[1][1] or "")


def test_without_a_file_setting_nothing_is_checked() -> None:
    assert RoutingFile(None).current() is NO_ROUTING
    assert Settings.from_env({}).routing_file is None
    assert Settings.from_env({"FRAUDMODEL_ROUTING_FILE": "/etc/x.json"}).routing_file == "/etc/x.json"
