"""Operator configuration, from the environment (the Helm chart sets it) and flags."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

FIELD_MANAGER = "fraudmodel-operator"


class OperatorConfig(BaseModel):
    """How this operator process runs."""

    model_config = ConfigDict(frozen=True)

    namespaces: tuple[str, ...] = Field(default=(), description="Namespaces to watch; empty means all.")
    metrics_port: int = 8080
    liveness_port: int = 8081
    peering: str = "fraudmodel-operator"
    standalone: bool = False
    reconcile_interval: float = Field(default=10.0, gt=0, description="Seconds between level-triggered reconciles.")
    watch_timeout: int = Field(default=300, gt=0, description="Server-side watch timeout, seconds.")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> OperatorConfig:
        values: dict[str, object] = {}
        if env.get("WATCH_NAMESPACES"):
            values["namespaces"] = tuple(n.strip() for n in env["WATCH_NAMESPACES"].split(",") if n.strip())
        for key, name, kind in (
            ("metrics_port", "METRICS_PORT", int),
            ("liveness_port", "LIVENESS_PORT", int),
            ("reconcile_interval", "RECONCILE_INTERVAL", float),
            ("watch_timeout", "WATCH_TIMEOUT", int),
        ):
            if env.get(name):
                values[key] = kind(env[name])
        if env.get("PEERING_NAME"):
            values["peering"] = env["PEERING_NAME"]
        if env.get("STANDALONE", "").lower() in ("1", "true", "yes"):
            values["standalone"] = True
        return cls.model_validate(values)
