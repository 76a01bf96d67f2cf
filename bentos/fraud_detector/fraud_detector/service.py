"""The BentoML service: ``bentoml serve fraud_detector.service:FraudDetector``.

Configuration comes from the environment the operator sets (see
:class:`~fraud_detector.settings.Settings`): ``FRAUDMODEL_NAME``,
``FRAUDMODEL_VERSION``, ``FRAUDMODEL_TRACK``, ``FRAUDMODEL_THRESHOLD``,
``FRAUDMODEL_FEATURE_SCHEMA``, ``FRAUDMODEL_MODEL_URI``, ``FRAUDMODEL_MODEL_TAG``,
and the batching/overload knobs. Which model is loaded, and when the service
refuses to serve it (not ready, with the reason on ``/readyz``): :mod:`fraud_detector.loading`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import bentoml
import numpy as np
import torch
from bentoml.validators import ContentType

from . import model as model_io
from .edge import PREDICT, PREDICT_BATCH, EdgeMiddleware, Scorer
from .loading import Declared, LoadedModel, NotServable, assess, facts_of, fetch
from .metrics import MONITORED_FEATURES, ServiceMetrics, service_metrics
from .mirror import Mirror
from .routing import RoutingConfig, RoutingFile
from .schema import FEATURE_NAMES, Prediction, Transaction
from .settings import Settings, tune_gc

__all__ = ["SETTINGS", "FraudDetector", "Loaded", "direct_scorer", "load_declared_model"]

# Declaring the media type matters for speed: without it BentoML 1.4.40 builds
# the output's JSON schema on every response to find out (a third of the CPU
# time of a request in a profile).
JSONPredictions = Annotated[list[Prediction], ContentType("application/json")]

SETTINGS = Settings.from_env()
DECLARED = Declared(
    version=SETTINGS.version,
    feature_schema=SETTINGS.feature_schema,
    tag=SETTINGS.model_tag,
    uri=SETTINGS.model_uri,
)
# Only what `bentoml build` pins into a bento (FRAUDMODEL_MODEL_TAG at build time);
# never a fallback when serving (see fraud_detector.loading).
BUILD_MODEL_TAG = SETTINGS.model_tag or "fraud_detector:latest"
DEFAULT_THRESHOLD = 0.5  # only for a model whose metadata has none
logger = logging.getLogger(__name__)


def pinned_model_tag() -> str | None:
    """The model pinned in the bento being served, if any (BentoML sets ``bento``)."""
    bento = getattr(FraudDetector, "bento", None)
    if bento is not None:
        pinned = [str(m.tag) for svc in bento.info.services for m in svc.models]
        if pinned:
            return pinned[0]
    return None


@dataclass(frozen=True)
class Loaded:
    """This worker's model, or why it serves none."""

    model: model_io.FraudNet | None
    facts: LoadedModel | None
    problem: NotServable | None
    path: Path | None = None  # the model's directory

    @property
    def version(self) -> str:
        """The *loaded* model's version: what responses and metrics carry."""
        if self.facts is not None:
            return self.facts.version
        return SETTINGS.version or "none"

    @property
    def threshold(self) -> float:
        """The FraudModel's threshold if it sets one, else the one chosen at training."""
        if SETTINGS.threshold is not None:
            return SETTINGS.threshold
        if self.facts is not None and self.facts.threshold is not None:
            return self.facts.threshold
        return DEFAULT_THRESHOLD


def load_declared_model() -> Loaded:
    """Fetch the declared model, check it against the declaration, load its weights."""
    facts: LoadedModel | None = None
    try:
        stored = fetch(DECLARED, pinned_model_tag())
        facts = facts_of(str(stored.tag), stored.info.metadata)
        problem = assess(DECLARED, facts)
        if problem is not None:
            raise problem
        try:
            net = model_io.load(Path(stored.path))
        except Exception as exc:  # weights that do not fit the code: refused, not a crash loop
            raise NotServable("ModelLoadFailed", f"cannot load the weights of {facts.tag}: {exc}") from None
    except NotServable as problem:
        logger.error("not serving: %s", problem)
        return Loaded(None, facts, problem)
    return Loaded(net, facts, None, Path(stored.path))


_MONITORED = [FEATURE_NAMES.index(name) for name in MONITORED_FEATURES]


def _publish_reference(loaded: Loaded, metrics: ServiceMetrics) -> None:
    """Publish the model's reference score and feature distributions, if it has them."""
    if loaded.path is None or not (loaded.path / model_io.REFERENCE_FILE).is_file():
        return
    with np.load(loaded.path / model_io.REFERENCE_FILE) as ref:
        metrics.publish_reference(
            ref["scores"].tolist(), {name: ref[name].tolist() for name in MONITORED_FEATURES if name in ref}
        )


@functools.cache
def _loaded() -> Loaded:
    return load_declared_model()


def _problem() -> NotServable | None:
    return _loaded().problem


@functools.cache
def _metrics() -> ServiceMetrics:
    loaded = _loaded()
    return service_metrics(loaded.version, SETTINGS.track, loaded.threshold)


_instances: list[FraudDetector] = []  # this worker's service instance, once BentoML has created it


class InjectedFault(RuntimeError):
    """A deliberate scoring failure (fault injection): answered as a 500, like a real model error."""


@bentoml.service(
    name="fraud_detector",
    workers=SETTINGS.workers,
    traffic={"timeout": 10},
    logging={"access": {"enabled": False}},
    tracing={} if SETTINGS.tracing else {"excluded_urls": [PREDICT, PREDICT_BATCH]},
    # Request-duration buckets from 1 ms, 25% apart (BentoML's default jumps 10 -> 25 -> 50 ms):
    # the operator compares tail latencies of two tracks, and interpolating inside a 15 ms
    # wide bucket would make a p99 jump by up to 15 ms on one slow request.
    metrics={"duration": {"min": 0.001, "max": 10.0, "factor": 1.25}},
    endpoints={"livez": "/livez", "readyz": "/readyz"},
)
class FraudDetector:
    """Scores card transactions for fraud with a PyTorch model."""

    stored = bentoml.models.BentoModel(BUILD_MODEL_TAG)

    def __init__(self) -> None:
        # One intra-op thread per worker: requests are tiny, and more threads
        # per worker only fight the other workers for the same cores.
        torch.set_num_threads(1)
        loaded = _loaded()
        self.problem = loaded.problem
        self.model = loaded.model or model_io.FraudNet()  # unused while not ready: never scored
        self.version = loaded.version
        self.name = SETTINGS.model_name
        self.threshold = loaded.threshold
        self.metrics = _metrics()
        _publish_reference(loaded, self.metrics)
        self.model.predict_proba(np.zeros((1, len(FEATURE_NAMES)), dtype=np.float32))  # warm up
        self._cache_api_callable()
        tune_gc()  # everything loaded so far is frozen out of the collector
        self.ready = self.problem is None
        _instances.append(self)

    def _cache_api_callable(self) -> None:
        """Resolve the API method once instead of on every request.

        BentoML 1.4.40 looks the API up with ``getattr(instance, name).local`` on
        each request, and its descriptor runs ``inspect.signature`` each time
        (about a tenth of a request's CPU time in a profile). The descriptor has
        no ``__set__``, so an instance attribute with the same name shadows it;
        it holds exactly what the descriptor would return for local calls.
        """
        descriptor = type(self).__dict__.get("predict_batch")
        local_call = getattr(descriptor, "_local_call", None)
        if local_call is None:  # a BentoML without this internal: keep its behaviour
            return
        local = local_call(self)
        local.local = local
        self.__dict__["predict_batch"] = local

    def __is_ready__(self) -> bool:
        return self.ready

    async def score(self, transactions: Sequence[Transaction]) -> list[Prediction]:
        """Score validated transactions: the one scoring path of both the
        ``/predict_batch`` API below and the edge's direct route."""
        if SETTINGS.fault_delay_ms:
            await asyncio.sleep(SETTINGS.fault_delay_ms / 1000)
        if SETTINGS.fault_error_rate and random.random() < SETTINGS.fault_error_rate:
            raise InjectedFault(f"injected fault (FRAUDMODEL_FAULT_ERROR_RATE={SETTINGS.fault_error_rate})")
        rows = np.array(
            [[getattr(t, name) for name in FEATURE_NAMES] for t in transactions], dtype=np.float32
        )
        scores = self.model.predict_proba(rows).tolist()
        self.metrics.observe(scores, self.threshold)
        self.metrics.observe_features(rows[:, _MONITORED].T.tolist())
        return [
            Prediction(
                transaction_id=t.transaction_id,
                score=s,
                decision="flag" if s >= self.threshold else "allow",
                threshold=self.threshold,
                model=self.name,
                version=self.version,
            )
            for t, s in zip(transactions, scores, strict=True)
        ]

    @bentoml.api(
        route="/predict_batch",
        batchable=SETTINGS.adaptive_batching,
        max_batch_size=SETTINGS.max_batch_size,
        max_latency_ms=SETTINGS.max_latency_ms,
    )
    async def predict_batch(self, transactions: list[Transaction]) -> JSONPredictions:
        """Score transactions. ``async`` on purpose: the model call takes tens
        of microseconds, less than a hop to a thread pool, so it runs on the
        event loop.

        With adaptive batching on, the edge sends every request here (single
        ones as batches of one) so that BentoML's dispatcher can merge them;
        with it off, the edge calls :meth:`score` itself (see :func:`direct_scorer`).
        """
        return await self.score(transactions)


def direct_scorer() -> Scorer | None:
    """What the edge calls to score a validated request without a second trip
    through BentoML's routing and input/output descriptors.

    None while adaptive batching is on (requests must reach BentoML's
    dispatcher to be batched) and before this worker's service instance
    exists; the edge then forwards the request to the ``/predict_batch`` API.
    """
    if SETTINGS.adaptive_batching or not _instances:
        return None
    return _instances[-1].score


def pair_scorer() -> Scorer | None:
    """What a shadow's ``/mirror`` scores pairs with: the direct path, batching or not."""
    return _instances[-1].score if _instances else None


def _routing_changed(config: RoutingConfig, error: str | None) -> None:
    _metrics().routing_changed(config.revision, error)


# Per worker (the file is first checked on the worker's first request, after BentoML forked it).
ROUTING = RoutingFile(SETTINGS.routing_file, on_change=_routing_changed)

_service: Any = FraudDetector  # a bentoml.Service; its stubs do not say so
_service.add_asgi_middleware(
    EdgeMiddleware,
    settings=SETTINGS,
    metrics=_metrics,
    scorer=direct_scorer,
    problem=_problem,
    routing=ROUTING.current,
    mirror=Mirror(
        capacity=SETTINGS.mirror_queue,
        batch=SETTINGS.mirror_batch,
        timeout_s=SETTINGS.mirror_timeout_ms / 1000,
        counters=_metrics,
    ),
    pair_scorer=pair_scorer,
)
