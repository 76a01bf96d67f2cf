"""Small builders of FraudModels for unit tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fraudmodel_operator.api import (
    CanaryStatus,
    FraudModel,
    FraudModelStatus,
    ModelSpec,
    TrackStatus,
    revision_of,
)

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def model(version: str = "v1", **extra: Any) -> ModelSpec:
    return ModelSpec(name="bot-detector", version=version, image=f"bot:{version}", **extra)


def track(version: str, weight: int = 100) -> TrackStatus:
    m = model(version)
    return TrackStatus(version=version, image=m.image, revision=revision_of(m), model=m, weight=weight)


def canary(version: str = "v2", weight: int = 0, **extra: Any) -> CanaryStatus:
    m = model(version)
    fields: dict[str, Any] = {"started_at": T0, "step_started_at": T0, "progressed_at": T0} | extra
    return CanaryStatus(version=version, image=m.image, revision=revision_of(m), model=m, weight=weight, **fields)


def fraudmodel(
    version: str = "v1",
    status: FraudModelStatus | None = None,
    serving: dict[str, Any] | None = None,
    rollout: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
    name: str = "bot",
) -> FraudModel:
    return FraudModel.model_validate(
        {
            "metadata": {
                "name": name,
                "namespace": "risk",
                "uid": "u1",
                "generation": 3,
                "annotations": annotations or {},
            },
            "spec": {
                "model": {"name": "bot-detector", "version": version, "image": f"bot:{version}"},
                "serving": serving or {},
                "rollout": rollout or {},
            },
            "status": (status or FraudModelStatus()).model_dump(by_alias=True),
        }
    )
