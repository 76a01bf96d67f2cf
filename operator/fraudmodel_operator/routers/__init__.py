"""Traffic routers: how the canary weight reaches requests. One module per router."""

from __future__ import annotations

from fraudmodel_operator.api import FraudModel, TrafficRouting
from fraudmodel_operator.kube import Kube
from fraudmodel_operator.routers.base import TrafficRouter
from fraudmodel_operator.routers.gateway_api import GatewayAPIRouter
from fraudmodel_operator.routers.istio import IstioRouter
from fraudmodel_operator.routers.nginx import NginxRouter
from fraudmodel_operator.routers.replica_ratio import ReplicaRatioRouter


def router_for(fm: FraudModel, kube: Kube) -> TrafficRouter:
    """The router the FraudModel asks for."""
    return router_from(fm.spec.rollout.traffic_routing, kube)


def router_from(routing: TrafficRouting, kube: Kube) -> TrafficRouter:
    """The router one `trafficRouting` names (also one the spec no longer names, to finalise it)."""
    if routing.gateway_api is not None:
        return GatewayAPIRouter(kube, routing.gateway_api)
    if routing.istio is not None:
        return IstioRouter(kube, routing.istio)
    if routing.nginx is not None:
        return NginxRouter(kube, routing.nginx)
    return ReplicaRatioRouter(kube)


__all__ = [
    "GatewayAPIRouter",
    "IstioRouter",
    "NginxRouter",
    "ReplicaRatioRouter",
    "TrafficRouter",
    "router_for",
    "router_from",
]
