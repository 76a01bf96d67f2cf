"""The BentoML service: ``bentoml serve fraud_detector.service:FraudDetector``.

Configuration comes from the environment the operator sets (see
:class:`~fraud_detector.settings.Settings`): ``FRAUDMODEL_NAME``,
``FRAUDMODEL_VERSION``, ``FRAUDMODEL_TRACK``, ``FRAUDMODEL_THRESHOLD``,
``FRAUDMODEL_MODEL_TAG``, and the batching/overload knobs.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import bentoml
import numpy as np
import torch
from bentoml.validators import ContentType

from . import model as model_io
from .edge import PREDICT, PREDICT_BATCH, EdgeMiddleware, Scorer
from .metrics import ServiceMetrics, service_metrics
from .schema import FEATURE_NAMES, Prediction, Transaction
from .settings import Settings

__all__ = ["SETTINGS", "FraudDetector", "direct_scorer"]

# Declaring the media type matters for speed: without it BentoML 1.4.40 builds
# the output's JSON schema on every response to find out (a third of the CPU
# time of a request in a profile).
JSONPredictions = Annotated[list[Prediction], ContentType("application/json")]

SETTINGS = Settings.from_env()
DEFAULT_MODEL_TAG = "fraud_detector:latest"


def model_tag() -> str:
    """FRAUDMODEL_MODEL_TAG if set; else the model pinned in the bento being
    served (BentoML itself would resolve "latest" in the global store); else
    fraud_detector:latest."""
    if SETTINGS.model_tag:
        return SETTINGS.model_tag
    bento = getattr(FraudDetector, "bento", None)  # set by BentoML when serving a bento
    if bento is not None:
        pinned = [str(m.tag) for svc in bento.info.services for m in svc.models]
        if pinned:
            return pinned[0]
    return DEFAULT_MODEL_TAG


@functools.cache
def _stored_model() -> bentoml.Model:
    tag = model_tag()
    try:
        return bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        raise RuntimeError(
            f"model {tag} is not in the model store "
            "(train it with `python -m fraud_detector.train --version ...`, "
            "or check BENTOML_HOME / FRAUDMODEL_MODEL_TAG)"
        ) from None


def _version() -> str:
    return SETTINGS.version or str(_stored_model().tag.version)


@functools.cache
def _metrics() -> ServiceMetrics:
    return service_metrics(_version(), SETTINGS.track, SETTINGS.threshold)


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

    stored = bentoml.models.BentoModel(SETTINGS.model_tag or DEFAULT_MODEL_TAG)

    def __init__(self) -> None:
        # One intra-op thread per worker: requests are tiny, and more threads
        # per worker only fight the other workers for the same cores.
        torch.set_num_threads(1)
        stored = _stored_model()
        self.model = model_io.load(Path(stored.path))
        self.version = _version()
        self.name = SETTINGS.model_name
        self.threshold = SETTINGS.threshold
        self.metrics = _metrics()
        self.model.predict_proba(np.zeros((1, len(FEATURE_NAMES)), dtype=np.float32))  # warm up
        self._cache_api_callable()
        # Garbage collection was the p99: with torch and BentoML loaded, full
        # collections paused requests for 20-100 ms (measured with gc.callbacks).
        # What is loaded now lives as long as the process, so it is frozen out
        # of the collector; and a larger young generation lets each request's
        # short-lived cycles die young instead of being promoted into the
        # expensive full collections. p99 at 8 connections: ~90 ms -> ~15 ms.
        gc.freeze()
        gc.set_threshold(10_000, 10, 10)
        self.ready = True
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
        rows = np.array([[getattr(t, name) for name in FEATURE_NAMES] for t in transactions], dtype=np.float32)
        scores = self.model.predict_proba(rows).tolist()
        self.metrics.observe(scores, self.threshold)
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


_service: Any = FraudDetector  # a bentoml.Service; its stubs do not say so
_service.add_asgi_middleware(EdgeMiddleware, settings=SETTINGS, metrics=_metrics, scorer=direct_scorer)
