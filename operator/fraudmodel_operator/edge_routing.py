"""What the stable pods' serving edge does with the traffic it takes: the edge's routing config.

Some routing happens at the edge of the *stable* pods, not in a router: mirroring a
sample of requests to a shadow track, and (account-sticky canaries) forwarding the
canary's share of accounts. What the edge must do changes during a rollout, and
changing the stable Deployment would restart the stable pods, so the operator writes
it into a ConfigMap (`<name>-routing`, one per FraudModel, always present) that is
mounted into the stable pods; the edge re-reads the file when the kubelet refreshes it
(`fraud_detector.routing` in the bento reads the same JSON).

Pure: no client, no I/O. The JSON is the contract between the operator and the bento:
a field the bento does not know is ignored there (an older bento keeps serving), so
fields are only ever added.

Propagation: the kubelet refreshes a mounted ConfigMap on its periodic pod sync
(`syncFrequency`, 1 minute by default) plus its ConfigMap cache's delay, so the
stable pods act on a new config within about one to two minutes. Every config carries
a `revision` (a hash of its content) that the edge exports as
`fraud_model_edge_routing_info{revision}`, so the propagation can be observed.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fraudmodel_operator.api import FraudModel

ROUTING_KEY = "routing.json"
ROUTING_MOUNT = "/etc/fraudmodel/routing"
ROUTING_FILE_ENV = "FRAUDMODEL_ROUTING_FILE"
ROUTING_VOLUME = "routing"
Manifest = dict[str, Any]


def configmap_name(fm_name: str) -> str:
    return f"{fm_name}-routing"


class EdgeTarget(BaseModel):
    """A place the stable edge sends (part of) its traffic to, and how much of it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(description="Base URL of the target track's Service, e.g. http://fraud-shadow.risk.svc:80.")

    def share(self) -> float:
        """The share of the stable's requests this target receives (0..1): what write order compares."""
        raise NotImplementedError


class ShadowTarget(EdgeTarget):
    """Mirror a sample of scored requests, with the stable's answers, to the shadow track."""

    sample: float = Field(ge=0.0, le=1.0, description="Share of scored requests mirrored.")
    version: str = Field(description="The shadow's model version (what its paired metrics carry).")

    def share(self) -> float:
        return self.sample


class StickyTarget(EdgeTarget):
    """Forward the canary's keys (stickyBy) to the canary track: the keys whose bucket is below `weight`."""

    weight: int = Field(ge=0, le=100, description="Percent of the key buckets the canary owns.")
    source: str = Field(description="Where the key comes from: field:<name> or header:<lower-case name>.")
    salt: str = Field(description="The hash key of the assignment: the canary's revision (one draw per rollout).")

    def share(self) -> float:
        return self.weight / 100


class EdgeRouting(BaseModel):
    """The stable edge's routing config. Each target is a field whose value is an `EdgeTarget` (or None)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shadow: ShadowTarget | None = None
    sticky: StickyTarget | None = None

    def targets(self) -> dict[str, EdgeTarget]:
        return {name: value for name, value in self if isinstance(value, EdgeTarget)}

    def exposure(self) -> dict[str, float]:
        return {name: target.share() for name, target in self.targets().items()}

    def document(self) -> dict[str, Any]:
        """The JSON document, with its `revision` (a hash of everything else)."""
        body = self.model_dump(mode="json", exclude_none=True)
        raw = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return {"revision": hashlib.sha256(raw.encode()).hexdigest()[:12], **body}


def parse_document(data: str | None) -> EdgeRouting:
    """The config a ConfigMap holds; an empty one for a missing or unreadable document."""
    if not data:
        return EdgeRouting()
    try:
        raw = json.loads(data)
        raw.pop("revision", None)
        return EdgeRouting.model_validate(raw)
    except (ValueError, TypeError, AttributeError):
        return EdgeRouting()


def service_url(fm: FraudModel, service: str) -> str:
    return f"http://{service}.{fm.metadata.namespace}.svc:80"


def edge_routing(fm: FraudModel, routed: int | None = None) -> EdgeRouting:
    """What the stable edge should do for this FraudModel's current status: mirror to a shadow
    track, forward a sticky canary's keys. `routed`: the canary weight routed in this reconcile
    (default: the step's)."""
    return EdgeRouting(sticky=sticky_target(fm, routed), shadow=shadow_target(fm))


def shadow_target(fm: FraudModel) -> ShadowTarget | None:
    """A shadow phase is mirrored to once its track has a ready pod (status, from the last reconcile):
    before that every mirrored request would only be counted as failed."""
    shadow = fm.status.shadow
    if shadow is None or not shadow.version or shadow.ready_replicas <= 0:
        return None
    url = service_url(fm, f"{fm.metadata.name}-shadow")
    return ShadowTarget(url=url, sample=shadow.sample, version=shadow.version)


def sticky_target(fm: FraudModel, routed: int | None = None) -> StickyTarget | None:
    """stickyBy: the canary's keys go to the canary Service at the routed weight (None: all stay on
    stable, e.g. a warming, rolled-back or promoted canary)."""
    sticky, canary = fm.spec.rollout.sticky_by, fm.status.canary
    if sticky is None or canary is None:
        return None
    weight = canary.weight if routed is None else routed
    if weight <= 0:
        return None
    return StickyTarget(
        url=service_url(fm, f"{fm.metadata.name}-canary"),
        weight=weight,
        source=sticky.source,
        salt=canary.revision or "",
    )


def plan_routing_configmap(fm: FraudModel, routing: EdgeRouting, labels: dict[str, str]) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": configmap_name(fm.metadata.name), "namespace": fm.metadata.namespace, "labels": labels},
        "data": {ROUTING_KEY: json.dumps(routing.document(), sort_keys=True)},
    }


def routing_of(configmap: Manifest | None) -> EdgeRouting:
    return parse_document(((configmap or {}).get("data") or {}).get(ROUTING_KEY))


def routing_rank(desired: Manifest, live: Manifest | None) -> Literal["reduce", "expose"]:
    """Where a routing-config write goes in a reconcile (ordering.RANKS): after the capacity it
    names when it sends more anywhere ("expose"), first when it only sends less ("reduce")."""
    want, have = routing_of(desired).exposure(), routing_of(live).exposure()
    grows = any(share > have.get(name, 0.0) for name, share in want.items())
    return "expose" if grows else "reduce"


def stable_pod_mount(fm_name: str) -> tuple[Manifest, Manifest, Manifest]:
    """(volume, volumeMount, env var) that give the stable pods their routing config. The volume is
    the whole ConfigMap (a subPath mount would never be refreshed) and optional: a pod starts before
    its ConfigMap exists and picks it up once it does."""
    volume = {
        "name": ROUTING_VOLUME,
        "configMap": {"name": configmap_name(fm_name), "optional": True},
    }
    mount = {"name": ROUTING_VOLUME, "mountPath": ROUTING_MOUNT, "readOnly": True}
    env = {"name": ROUTING_FILE_ENV, "value": f"{ROUTING_MOUNT}/{ROUTING_KEY}"}
    return volume, mount, env
