"""The Kubernetes adapter: merge patches, value comparison, the applied hash, ownership, and what a
refused request becomes."""

from __future__ import annotations

from typing import Any

import pytest
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import Status

from fraudmodel_operator.kube import (
    APPLIED_HASH,
    KubeClient,
    NotServable,
    WriteRefused,
    controller_uid,
    merge_patch,
    up_to_date,
    with_owner,
)
from tests.unit.factories import fraudmodel


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
        (
            {"spec": {"resources": {"limits": {"cpu": "1000m"}}}},
            {"spec": {"resources": {"limits": {"cpu": "1"}}}},
            True,
        ),
        ({"spec": {"requests": {"cpu": "0.5"}}}, {"spec": {"requests": {"cpu": "500m"}}}, True),
        ({"spec": {"requests": {"memory": "1024Mi"}}}, {"spec": {"requests": {"memory": "1Gi"}}}, True),
        ({"spec": {"requests": {"cpu": "1"}}}, {"spec": {"requests": {"cpu": "1001m"}}}, False),
        ({"spec": {"target": {"averageValue": "40.0"}}}, {"spec": {"target": {"averageValue": "40"}}}, True),
        ({"spec": {"emptyDir": {"sizeLimit": "1024Mi"}}}, {"spec": {"emptyDir": {"sizeLimit": "1Gi"}}}, True),
        ({"metadata": {"labels": {"version": "1.0"}}}, {"metadata": {"labels": {"version": "1"}}}, False),
        (
            {"spec": {"env": [{"name": "T", "value": "0.5"}]}},
            {"spec": {"env": [{"name": "T", "value": "500m"}]}},
            False,
        ),
    ],
    ids=[
        "server-added-field",
        "number-vs-string",
        "bool-is-not-int",
        "list-item-defaults",
        "list-length",
        "canonical-millicores",
        "canonical-fraction",
        "canonical-binary",
        "other-quantity",
        "hpa-target",
        "size-limit",
        "label-is-not-a-quantity",
        "env-is-not-a-quantity",
    ],
)
def test_up_to_date(desired: dict[str, Any], live: dict[str, Any], same: bool) -> None:
    assert up_to_date({"apiVersion": "v1", "kind": "X", **desired}, live) is same


def test_with_owner_adopts_and_stamps_the_hash_of_what_it_applies() -> None:
    fm = fraudmodel()
    manifest = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bot", "namespace": "risk"}, "spec": {}}
    adopted = with_owner(manifest, fm)
    assert controller_uid(adopted) == "u1"
    stamp = adopted["metadata"]["annotations"][APPLIED_HASH]
    assert with_owner(manifest, fm)["metadata"]["annotations"][APPLIED_HASH] == stamp, "deterministic"
    assert with_owner(adopted, fm)["metadata"]["annotations"][APPLIED_HASH] == stamp, "the hash excludes itself"
    changed = with_owner({**manifest, "spec": {"type": "ClusterIP"}}, fm)
    assert changed["metadata"]["annotations"][APPLIED_HASH] != stamp
    assert "annotations" not in manifest["metadata"], "the planned manifest is not modified"


def test_a_live_object_applied_by_an_older_operator_is_applied_again() -> None:
    """Children applied before the hash existed have no stamp: one apply brings them in line."""
    fm = fraudmodel()
    manifest = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bot", "namespace": "risk"}, "spec": {}}
    live = with_owner(manifest, fm)
    del live["metadata"]["annotations"]
    assert not up_to_date(with_owner(manifest, fm), live)


def ref(uid: str, controller: bool = True, kind: str = "FraudModel") -> dict[str, Any]:
    return {
        "apiVersion": "serving.riskml.io/v1alpha1",
        "kind": kind,
        "name": "bot",
        "uid": uid,
        "controller": controller,
    }


@pytest.mark.parametrize(
    ("refs", "uid"),
    [
        ([ref("u1")], "u1"),
        ([ref("u2")], "u2"),
        ([], None),
        ([ref("u1", controller=False)], None),
        ([{**ref("u1"), "kind": "ReplicaSet", "apiVersion": "apps/v1"}], None),
        ([ref("u1", controller=False), ref("u3")], "u3"),
    ],
    ids=["ours", "another-fraudmodel", "orphan", "not-controller", "another-kind", "controller-of-two"],
)
def test_ownership_is_the_controller_uid_not_labels(refs: list[dict[str, Any]], uid: str | None) -> None:
    obj = {
        "metadata": {"name": "bot-stable", "labels": {"serving.riskml.io/fraudmodel": "bot"}, "ownerReferences": refs}
    }
    assert controller_uid(obj) == uid


class Refusing:
    """A lightkube client whose every call is answered with one API status."""

    def __init__(self, code: int, message: str) -> None:
        self.error = ApiError(status=Status(code=code, message=message, reason="Invalid"))

    async def apply(self, *_: Any, **__: Any) -> None:
        raise self.error

    async def delete(self, *_: Any, **__: Any) -> None:
        raise self.error

    async def get(self, *_: Any, **__: Any) -> None:
        raise self.error


DEPLOYMENT = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "9bot-stable", "namespace": "n"}}


async def test_a_refused_apply_names_the_object_and_quotes_the_api_server() -> None:
    kube = KubeClient(Refusing(422, 'Deployment.apps "9bot-stable" is invalid: metadata.name: Invalid value'))  # type: ignore[arg-type]
    with pytest.raises(WriteRefused) as refused:
        await kube.apply(DEPLOYMENT)
    assert (refused.value.kind, refused.value.name) == ("Deployment", "9bot-stable")
    assert (
        str(refused.value)
        == 'Deployment 9bot-stable: Deployment.apps "9bot-stable" is invalid: metadata.name: Invalid value'
    )
    with pytest.raises(WriteRefused, match="delete refused"):
        await kube.delete("apps/v1", "Deployment", "n", "9bot-stable")


async def test_a_forbidden_read_is_not_servable_and_a_missing_object_is_none() -> None:
    with pytest.raises(NotServable, match="may not read"):
        await KubeClient(Refusing(403, "forbidden")).get("apps/v1", "Deployment", "n", "x")  # type: ignore[arg-type]
    assert await KubeClient(Refusing(404, "not found")).get("apps/v1", "Deployment", "n", "x") is None  # type: ignore[arg-type]
