"""Kubernetes writes: server-side apply under one field manager, deletes, status patches.

Reads come from Kopf's in-memory indexes of the children (see handlers.py), so a
reconcile that changes nothing makes no request at all. The pure helpers here
decide *whether* to write; `KubeClient` does the writing, through the official
`kubernetes` client's dynamic client, its blocking calls run on a small thread pool
off the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, TypeVar

from kubernetes import config as kubeconfig
from kubernetes.client import ApiClient, Configuration
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient, Resource

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

FRAUDMODEL_API_VERSION = f"{api.GROUP}/{api.VERSION}"


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


# What the operator reads of a live child, and all that its in-memory index keeps: `up_to_date`
# compares the fields it sets (a Deployment's spec, a ConfigMap's data: every top-level field but
# metadata and status is kept whole), `controller_uid` the owner references, and
# `reconciler.deployment_ready` these status fields. Server-kept metadata (managedFields alone is
# often half of an object), other status and other tools' annotations are dropped.
INDEXED_METADATA = ("name", "namespace", "uid", "generation", "labels", "annotations", "ownerReferences")
INDEXED_STATUS = ("observedGeneration", "replicas", "updatedReplicas", "readyReplicas", "availableReplicas")
UNREAD_ANNOTATIONS = frozenset({"kubectl.kubernetes.io/last-applied-configuration"})


def indexed(obj: Manifest) -> Manifest:
    """The part of a live child the operator reads (new dicts: the full object can be freed)."""
    meta = obj.get("metadata") or {}
    kept: dict[str, Any] = {k: meta[k] for k in INDEXED_METADATA if k in meta}
    if "annotations" in kept:
        kept["annotations"] = {k: v for k, v in kept["annotations"].items() if k not in UNREAD_ANNOTATIONS}
    slim: Manifest = {k: v for k, v in obj.items() if k not in ("metadata", "status")}
    slim["metadata"] = kept
    status = obj.get("status")
    if isinstance(status, dict):
        slim["status"] = {k: status[k] for k in INDEXED_STATUS if k in status}
    return slim


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
    """The HTTP status of a failed request (also when the answer was not a Kubernetes Status,
    e.g. a proxy's plain 404); None when there was no answer at all."""
    return exc.status if isinstance(exc, ApiException) and isinstance(exc.status, int) else None


class NotServable(Exception):
    """The cluster cannot take an object we planned (e.g. a router's CRD is not installed)."""


class WriteRefused(Exception):
    """The API server refused one write (admission webhook, quota, validation): names the object and says why."""

    def __init__(self, kind: str, name: str, message: str) -> None:
        self.kind, self.name, self.message = kind, name, message
        super().__init__(f"{kind} {name}: {message}")


def _refusal(exc: Exception) -> str | None:
    """The API server's words when it answered a write with an error status (None: no answer at all)."""
    code = _code(exc)
    if code is None:
        return None
    body = getattr(exc, "body", None)
    try:
        status = json.loads(body) if body else {}
    except (TypeError, ValueError):
        status = {}
    if not isinstance(status, dict):
        status = {}
    return str(status.get("message") or status.get("reason") or f"HTTP {code}")


class KnownKinds:
    """The dynamic client's discoverer for the fixed set of kinds the operator writes (`KINDS` and
    the FraudModel): no discovery request is ever sent, at startup or per call, and a kind the
    cluster does not serve is answered 404 when used, as for any other request."""

    def __init__(self, client: DynamicClient, cache_file: str | None = None) -> None:
        self.client = client

    def get(self, *, api_version: str, kind: str, **_: Any) -> Resource:
        return _resource(self.client, api_version, kind)


def _resource(client: DynamicClient, api_version: str, kind: str) -> Resource:
    group, _, version = api_version.rpartition("/")
    if (api_version, kind) == (FRAUDMODEL_API_VERSION, api.KIND):
        plural = api.PLURAL
        subresources = {"status": {"kind": kind, "name": f"{plural}/status", "namespaced": True}}
    elif (api_version, kind) in KINDS:
        plural, subresources = KINDS[(api_version, kind)], {}
    else:
        raise NotServable(f"{kind} ({api_version}) is not a kind the operator writes")
    return Resource(
        prefix="apis" if group else "api",
        group=group,
        api_version=version,
        kind=kind,
        namespaced=True,
        name=plural,
        client=client,
        subresources=subresources,
    )


def _raw(_client: DynamicClient, data: Any) -> Any:
    """The dynamic client's answer as parsed JSON (not wrapped in its ResourceInstance)."""
    return data


# Requests in flight at once: the thread pool and the HTTP connection pool have the same size,
# so no thread waits for a connection and no connection is opened only to be discarded.
CONNECTIONS = 8
REQUEST_TIMEOUT = (10.0, 60.0)  # (connect, read) seconds: a stuck API server fails one reconcile, not the loop

T = TypeVar("T")


def load_configuration() -> Configuration:
    """The API server and credentials: in cluster, the service account (its token re-read as it
    rotates); outside, $KUBECONFIG or ~/.kube/config. Blocking (reads files)."""
    configuration = Configuration()
    kubeconfig.load_config(client_configuration=configuration)
    return configuration


@dataclass
class KubeClient:
    """`Kube` over the Kubernetes API (the official client's dynamic client), counting requests for
    metrics and benchmarks. Close it (`close`) to end its threads and connections."""

    client: DynamicClient
    requests: dict[str, int] = field(default_factory=dict)
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=CONNECTIONS, thread_name_prefix="kube")
    )

    @classmethod
    def connect(cls, configuration: Configuration) -> KubeClient:
        """A client of the API server `configuration` names (sends no request)."""
        configuration.connection_pool_maxsize = CONNECTIONS
        return cls(DynamicClient(ApiClient(configuration), discoverer=KnownKinds))

    def close(self) -> None:
        """Ends the worker threads (after the requests in flight) and closes the connections. Idempotent."""
        self.executor.shutdown(wait=True)
        self.client.client.close()

    def _count(self, verb: str) -> None:
        self.requests[verb] = self.requests.get(verb, 0) + 1

    async def _call(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        kwargs.update(serializer=_raw, _request_timeout=REQUEST_TIMEOUT)
        return await asyncio.get_running_loop().run_in_executor(self.executor, partial(call, *args, **kwargs))

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> Manifest | None:
        self._count("get")
        resource = self.client.resources.get(api_version=api_version, kind=kind)
        try:
            obj = await self._call(self.client.get, resource, name=name, namespace=namespace)
        except Exception as exc:
            if _code(exc) == 404:
                return None
            if _code(exc) == 403:  # e.g. a router's resource the operator's RBAC does not cover
                raise NotServable(f"{kind} {name}: the operator may not read it: {_refusal(exc)}") from exc
            raise
        return dict(obj)

    async def apply(self, manifest: Manifest) -> None:
        resource = self.client.resources.get(api_version=manifest["apiVersion"], kind=manifest["kind"])
        self._count("apply")
        try:
            await self._call(
                self.client.server_side_apply,
                resource,
                body=manifest,
                namespace=manifest["metadata"].get("namespace"),
                field_manager=FIELD_MANAGER,
                force_conflicts=True,
            )
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
        resource = self.client.resources.get(api_version=api_version, kind=kind)
        try:
            await self._call(self.client.delete, resource, name=name, namespace=namespace)
        except Exception as exc:
            if _code(exc) == 404:
                return
            refusal = _refusal(exc)
            if refusal is not None:
                raise WriteRefused(kind, name, f"delete refused: {refusal}") from exc
            raise

    async def patch_status(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        self._count("patch_status")
        fraudmodels = self.client.resources.get(api_version=FRAUDMODEL_API_VERSION, kind=api.KIND)
        await self._call(
            self.client.patch,
            fraudmodels.subresources["status"],
            body={"status": patch},
            name=name,
            namespace=namespace,
            content_type="application/merge-patch+json",
        )
