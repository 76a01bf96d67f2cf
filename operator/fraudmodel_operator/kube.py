"""Kubernetes writes: server-side apply under one field manager, deletes, status patches.

Reads come from Kopf's in-memory indexes of the children (see handlers.py), so a
reconcile that changes nothing makes no request at all. The pure helpers here
decide *whether* to write; `KubeWriter` does the writing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Protocol

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.generic_resource import create_namespaced_resource
from lightkube.types import PatchType

from fraudmodel_operator import api
from fraudmodel_operator.settings import FIELD_MANAGER

Manifest = dict[str, Any]

# (apiVersion, kind) -> plural, for every kind the operator may own.
KINDS: dict[tuple[str, str], str] = {
    ("apps/v1", "Deployment"): "deployments",
    ("v1", "Service"): "services",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "horizontalpodautoscalers",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudgets",
    ("v1", "ConfigMap"): "configmaps",
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): "httproutes",
    ("networking.istio.io/v1", "VirtualService"): "virtualservices",
    ("networking.k8s.io/v1", "Ingress"): "ingresses",
}


@cache
def _resource(api_version: str, kind: str) -> Any:
    group, _, version = api_version.rpartition("/")
    return create_namespaced_resource(group, version, kind, KINDS[(api_version, kind)])


FRAUDMODEL = create_namespaced_resource(api.GROUP, api.VERSION, api.KIND, api.PLURAL)


def key(manifest: Manifest) -> tuple[str, str, str]:
    """`(apiVersion, kind, name)`: how children are matched with live objects."""
    return manifest["apiVersion"], manifest["kind"], manifest["metadata"]["name"]


# The hash of the manifest last applied, on every child: a field the operator stops setting
# (a nodeSelector, a toleration, an annotation removed from the spec) changes the hash, so the
# next apply sends the manifest without it and server-side apply removes it from the object.
APPLIED_HASH = f"{api.GROUP}/applied-hash"


def applied_hash(manifest: Manifest) -> str:
    """A short hash of everything in a manifest but the hash itself (key order does not matter)."""
    meta = dict(manifest.get("metadata") or {})
    meta["annotations"] = {k: v for k, v in (meta.get("annotations") or {}).items() if k != APPLIED_HASH}
    raw = json.dumps({**manifest, "metadata": meta}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def with_owner(manifest: Manifest, owner: api.FraudModel) -> Manifest:
    """The manifest adopted by its FraudModel (garbage-collected with it), stamped with its `APPLIED_HASH`."""
    meta = dict(manifest["metadata"])
    meta["ownerReferences"] = [
        {
            "apiVersion": f"{api.GROUP}/{api.VERSION}",
            "kind": api.KIND,
            "name": owner.metadata.name,
            "uid": owner.metadata.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    adopted = {**manifest, "metadata": meta}
    meta["annotations"] = {**(meta.get("annotations") or {}), APPLIED_HASH: applied_hash(adopted)}
    return adopted


def controller_uid(obj: Manifest) -> str | None:
    """The uid of the FraudModel controlling `obj`, if one does (its controller owner reference).

    Labels select the children the operator watches; this uid decides whose child an object is.
    """
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if (
            ref.get("controller")
            and ref.get("kind") == api.KIND
            and str(ref.get("apiVersion", "")).startswith(f"{api.GROUP}/")
        ):
            uid = ref.get("uid")
            return str(uid) if uid is not None else None
    return None


# Values the API server canonicalises as quantities ("40.0" -> "40", "1000m" -> "1", "0.5" -> "500m")
# compare by value: container resources, an emptyDir's sizeLimit, an HPA metric's target.
_QUANTITY_MAPS = frozenset({"requests", "limits"})
_QUANTITY_FIELDS = {"sizeLimit": "emptyDir", "averageValue": "target", "value": "target"}  # field -> parent


def _same_quantity(desired: Any, live: Any) -> bool:
    try:
        return api.parse_quantity(desired) == api.parse_quantity(live)
    except (ValueError, TypeError):
        return False


def _same(desired: Any, live: Any, key: str = "", parent: str = "") -> bool:
    if isinstance(desired, dict):
        return isinstance(live, dict) and all(_same(v, live.get(k), str(k), key) for k, v in desired.items())
    if isinstance(desired, list):
        return (
            isinstance(live, list)
            and len(desired) == len(live)
            and all(_same(d, v, key, parent) for d, v in zip(desired, live, strict=True))
        )
    if isinstance(desired, bool) or isinstance(live, bool):
        return desired is live
    if isinstance(desired, int | float) and isinstance(live, int | float):
        return float(desired) == float(live)
    if desired == live or (desired is not None and live is not None and str(desired) == str(live)):
        return True
    quantity = parent in _QUANTITY_MAPS or _QUANTITY_FIELDS.get(key) == parent
    return quantity and _same_quantity(desired, live)


def up_to_date(desired: Manifest, live: Manifest | None) -> bool:
    """Whether the manifest is live as we would apply it.

    Every field we set must be live (the API server adds defaults; those are ignored, and
    quantities compare by value), including the `APPLIED_HASH` annotation, which tells
    whether a field we *stopped* setting has been removed by an apply since.
    """
    if live is None:
        return False
    return _same({k: v for k, v in desired.items() if k not in ("apiVersion", "kind")}, live)


def merge_patch(old: Any, new: Any) -> Any:
    """An RFC 7386 merge patch turning `old` into `new` (None when they are equal)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return None if old == new else new
    patch: dict[str, Any] = {}
    for k in old.keys() - new.keys():
        patch[k] = None
    for k, v in new.items():
        if k not in old:
            patch[k] = v
        else:
            sub = merge_patch(old[k], v)
            if sub is not None or (v is None and old[k] is not None):
                patch[k] = sub
    return patch or None


class Kube(Protocol):
    """What the reconciler and routers need from the cluster (a fake records calls in tests)."""

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> Manifest | None: ...
    async def apply(self, manifest: Manifest) -> None: ...
    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None: ...
    async def patch_status(self, namespace: str, name: str, patch: dict[str, Any]) -> None: ...


def _code(exc: Exception) -> int | None:
    """The HTTP status of a failed request, also when the answer was not a Kubernetes Status
    (lightkube then raises its HTTP library's status error, e.g. for a proxy's plain 404)."""
    if isinstance(exc, ApiError):
        return exc.status.code
    status = getattr(getattr(exc, "response", None), "status_code", None)
    return status if isinstance(status, int) else None


class NotServable(Exception):
    """The cluster cannot take an object we planned (e.g. a router's CRD is not installed)."""


class WriteRefused(Exception):
    """The API server refused one write (admission webhook, quota, validation): names the object and says why."""

    def __init__(self, kind: str, name: str, message: str) -> None:
        self.kind, self.name, self.message = kind, name, message
        super().__init__(f"{kind} {name}: {message}")


def _refusal(exc: Exception) -> str | None:
    """The API server's words when it answered a write with an error status (None: no answer at all)."""
    if isinstance(exc, ApiError):
        return exc.status.message or exc.status.reason or f"HTTP {exc.status.code}"
    code = _code(exc)
    return None if code is None else f"HTTP {code}"


@dataclass
class KubeClient:
    """`Kube` over the Kubernetes API (lightkube), counting requests for metrics and benchmarks."""

    client: AsyncClient
    requests: dict[str, int] = field(default_factory=dict)

    def _count(self, verb: str) -> None:
        self.requests[verb] = self.requests.get(verb, 0) + 1

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> Manifest | None:
        self._count("get")
        try:
            obj = await self.client.get(_resource(api_version, kind), name, namespace=namespace)
        except Exception as exc:
            if _code(exc) == 404:
                return None
            if _code(exc) == 403:  # e.g. a router's resource the operator's RBAC does not cover
                raise NotServable(f"{kind} {name}: the operator may not read it: {_refusal(exc)}") from exc
            raise
        return dict(obj)

    async def apply(self, manifest: Manifest) -> None:
        res = _resource(manifest["apiVersion"], manifest["kind"])
        self._count("apply")
        try:
            await self.client.apply(res(manifest), field_manager=FIELD_MANAGER, force=True)
        except Exception as exc:
            if _code(exc) == 404:
                raise NotServable(
                    f"{manifest['kind']} ({manifest['apiVersion']}) is not served by this cluster: "
                    "install its CRD or choose another traffic router"
                ) from exc
            refusal = _refusal(exc)
            if refusal is not None:
                raise WriteRefused(manifest["kind"], manifest["metadata"]["name"], refusal) from exc
            raise

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        self._count("delete")
        try:
            await self.client.delete(_resource(api_version, kind), name, namespace=namespace)
        except Exception as exc:
            if _code(exc) == 404:
                return
            refusal = _refusal(exc)
            if refusal is not None:
                raise WriteRefused(kind, name, f"delete refused: {refusal}") from exc
            raise

    async def patch_status(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        self._count("patch_status")
        await self.client.patch(
            FRAUDMODEL.Status, name, {"status": patch}, namespace=namespace, patch_type=PatchType.MERGE
        )
