"""Pure helpers of the Kubernetes adapter: merge patches and value comparison."""

from __future__ import annotations

from typing import Any

import pytest

from fraudmodel_operator.kube import merge_patch, up_to_date


@pytest.mark.parametrize(
    ("old", "new", "patch"),
    [
        ({"a": 1}, {"a": 1}, None),
        ({"a": 1}, {"a": 2}, {"a": 2}),
        ({"a": 1, "b": 2}, {"a": 1}, {"b": None}),
        ({"a": {"x": 1, "y": 2}}, {"a": {"x": 1}}, {"a": {"y": None}}),
        ({}, {"a": {"x": 1}}, {"a": {"x": 1}}),
        ({"l": [1, 2]}, {"l": [1]}, {"l": [1]}),
    ],
    ids=["equal", "changed", "removed", "nested-removed", "added", "list-replaced"],
)
def test_merge_patch(old: dict[str, Any], new: dict[str, Any], patch: dict[str, Any] | None) -> None:
    assert merge_patch(old, new) == patch


@pytest.mark.parametrize(
    ("desired", "live", "same"),
    [
        ({"spec": {"replicas": 2}}, {"spec": {"replicas": 2, "x": 1}}, True),
        ({"spec": {"cpu": "1"}}, {"spec": {"cpu": 1}}, True),
        ({"spec": {"flag": False}}, {"spec": {"flag": 0}}, False),
        ({"spec": {"l": [{"a": 1}]}}, {"spec": {"l": [{"a": 1, "b": 2}]}}, True),
        ({"spec": {"l": [{"a": 1}]}}, {"spec": {"l": [{"a": 1}, {"a": 2}]}}, False),
    ],
    ids=["server-added-field", "number-vs-string", "bool-is-not-int", "list-item-defaults", "list-length"],
)
def test_up_to_date(desired: dict[str, Any], live: dict[str, Any], same: bool) -> None:
    assert up_to_date({"apiVersion": "v1", "kind": "X", **desired}, live) is same
