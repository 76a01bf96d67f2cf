"""Which model the service loads, and whether it may serve it.

The contract (docs/api.md, spec.model; README "Which model is served"):

* ``FRAUDMODEL_MODEL_URI`` (``spec.model.uri``): an exported BentoML model
  (``bentoml models export`` / :func:`bentoml.models.export_model`: a
  ``.bentomodel`` archive, a ``.tar.gz``/``.zip``, or a folder), at a local path,
  a ``file://`` URL, or any fsspec URL BentoML can import from
  (``s3://bucket/models/fraud_detector-v7.bentomodel`` with ``s3fs`` in the image
  and the usual AWS credentials, ``gs://`` with ``gcsfs``, ``https://``). It is
  imported into a scratch model store under ``TMPDIR`` (the image's own store
  stays read-only). With ``FRAUDMODEL_MODEL_TAG`` also set, the archive must
  hold that tag.
* else ``FRAUDMODEL_MODEL_TAG`` (``spec.model.tag``): a model in the image's
  model store (``BENTOML_HOME``), e.g. ``fraud_detector:v7``;
* else the model the bento was built with. Nothing else: there is no fallback
  to ``latest``.

The loaded model must then be the declared one (:func:`assess`): its version
is ``FRAUDMODEL_VERSION`` (``spec.model.version``), its feature schema is
``FRAUDMODEL_FEATURE_SCHEMA`` (``spec.model.featureSchemaVersion``) and the one
this code validates requests against, and its release gate passed at training.
Otherwise the service stays up but not ready: ``/readyz`` answers 503 with the
reason and message, so no traffic reaches it and no rollout proceeds on it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .schema import FEATURE_NAMES, SCHEMA_VERSION

__all__ = [
    "REASONS",
    "Declared",
    "LoadedModel",
    "NotServable",
    "assess",
    "facts_of",
    "fetch",
]

# The reasons /readyz gives (a Kubernetes condition reason each), in the order checked.
REASONS = (
    "ModelNotDeclared",
    "ModelNotFound",
    "ModelLoadFailed",
    "ModelTagMismatch",
    "ModelVersionMismatch",
    "FeatureSchemaMismatch",
    "ModelNotPromotable",
)


class NotServable(Exception):
    """Why the service will not serve the model it was given: reason (one of REASONS) and message."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message

    def as_dict(self) -> dict[str, str]:
        return {"ready": "false", "reason": self.reason, "message": self.message}


@dataclass(frozen=True)
class Declared:
    """What the FraudModel says is served (the environment the operator sets)."""

    version: str | None = None
    feature_schema: str | None = None
    tag: str | None = None
    uri: str | None = None


@dataclass(frozen=True)
class LoadedModel:
    """What a stored model says about itself (its BentoML metadata)."""

    tag: str
    version: str
    feature_schema: str | None
    features: tuple[str, ...]
    threshold: float | None
    threshold_policy: str
    promotable: bool | None  # None: trained before the release gate existed
    gate_failures: tuple[str, ...]
    metadata: Mapping[str, Any]


def facts_of(tag: str, metadata: Mapping[str, Any]) -> LoadedModel:
    """The facts :func:`assess` needs, from a model's tag and metadata."""
    schema = metadata.get("feature_schema") or {}
    features = tuple(str(f.get("name")) for f in schema.get("features", []) if isinstance(f, Mapping))
    raw_threshold = metadata.get("threshold")
    threshold: float | None
    policy = "none"
    if isinstance(raw_threshold, Mapping):
        threshold = float(raw_threshold["value"])
        policy = str(raw_threshold.get("policy", "unknown"))
    elif isinstance(raw_threshold, int | float):
        threshold, policy = float(raw_threshold), "fixed"
    else:
        threshold = None
    release = metadata.get("release")
    promotable = bool(release["promotable"]) if isinstance(release, Mapping) else None
    failures = tuple(str(f) for f in release.get("failures", ())) if isinstance(release, Mapping) else ()
    return LoadedModel(
        tag=tag,
        version=str(metadata.get("version") or tag.partition(":")[2]),
        feature_schema=str(schema["version"]) if schema.get("version") else None,
        features=features,
        threshold=threshold,
        threshold_policy=policy,
        promotable=promotable,
        gate_failures=failures,
        metadata=metadata,
    )


def assess(declared: Declared, model: LoadedModel) -> NotServable | None:
    """None if ``model`` may serve as ``declared``; else the first reason it may not."""
    if declared.version and model.version != declared.version:
        return NotServable(
            "ModelVersionMismatch",
            f"declared version {declared.version} (spec.model.version) but the loaded model "
            f"{model.tag} is version {model.version}",
        )
    if model.features != FEATURE_NAMES or model.feature_schema != SCHEMA_VERSION:
        trained = model.feature_schema or "an unversioned schema"
        return NotServable(
            "FeatureSchemaMismatch",
            f"model {model.tag} was trained on feature schema {trained} "
            f"({len(model.features)} features); this service validates requests against {SCHEMA_VERSION}",
        )
    if declared.feature_schema and declared.feature_schema != model.feature_schema:
        return NotServable(
            "FeatureSchemaMismatch",
            f"declared feature schema {declared.feature_schema} (spec.model.featureSchemaVersion) but model "
            f"{model.tag} was trained on {model.feature_schema}",
        )
    if model.promotable is None:
        return NotServable(
            "ModelNotPromotable",
            f"model {model.tag} has no release-gate record (trained before the gate existed): retrain it",
        )
    if not model.promotable:
        failed = "; ".join(model.gate_failures) or "see its model card"
        return NotServable("ModelNotPromotable", f"model {model.tag} failed its release gate: {failed}")
    return None


def fetch(declared: Declared, pinned: str | None) -> Any:
    """The declared model as a ``bentoml.Model``: imported from the URI, else from the store.

    Raises NotServable (ModelNotDeclared, ModelNotFound, ModelLoadFailed, ModelTagMismatch).
    """
    import bentoml
    from bentoml._internal.models.model import ModelStore
    from bentoml.exceptions import NotFound

    if declared.uri:
        scratch = Path(tempfile.mkdtemp(prefix="fraudmodel-models-"))
        try:
            model = bentoml.models.import_model(declared.uri, _model_store=ModelStore(str(scratch)))
        except Exception as exc:  # any transport or format error: a clear refusal, not a crash
            raise NotServable("ModelLoadFailed", f"cannot import {declared.uri}: {exc}") from None
        if declared.tag and str(model.tag) != declared.tag:
            raise NotServable(
                "ModelTagMismatch",
                f"{declared.uri} holds model {model.tag}, not the declared {declared.tag} (spec.model.tag)",
            )
        return model
    tag = declared.tag or pinned
    if not tag:
        raise NotServable(
            "ModelNotDeclared",
            "no model declared: set spec.model.uri or spec.model.tag "
            "(FRAUDMODEL_MODEL_URI / FRAUDMODEL_MODEL_TAG), or serve a bento built with its model",
        )
    try:
        return bentoml.models.get(tag)
    except (NotFound, ValueError) as exc:
        raise NotServable("ModelNotFound", f"model {tag} is not in the model store: {exc}") from None
