"""The plain baseline a user might write instead of BentoML: the same model and
the same request validation behind one FastAPI endpoint, no batching.

    uvicorn baseline_app:app   (env BENTOML_HOME, BENCH_MODEL_TAG, BENCH_GC)

With ``BENCH_GC=bento`` it runs with the bento's garbage-collector settings
(``fraud_detector.settings.tune_gc``, applied once the server has started, as the bento
applies them once its worker has): the control that shows how much of the bento's lead
over plain FastAPI is the collector alone.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import bentoml
import numpy as np
import torch
from fastapi import FastAPI
from fraud_detector import model as model_io
from fraud_detector.schema import FEATURE_NAMES, Prediction, Transaction
from fraud_detector.settings import tune_gc

torch.set_num_threads(1)
_stored = bentoml.models.get(os.environ.get("BENCH_MODEL_TAG", "fraud_detector:latest"))
_model = model_io.load(Path(_stored.path))
_version = str(_stored.tag.version)
THRESHOLD = 0.5
GC = os.environ.get("BENCH_GC", "default")
if GC not in ("default", "bento"):
    raise SystemExit(f"BENCH_GC={GC!r}: expected 'default' or 'bento'")


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    if GC == "bento":
        tune_gc()
    yield


app = FastAPI(lifespan=lifespan)


@app.post("/predict")
async def predict(txn: Transaction) -> Prediction:
    row = np.array([[getattr(txn, n) for n in FEATURE_NAMES]], dtype=np.float32)
    score = float(_model.predict_proba(row)[0])
    return Prediction(
        transaction_id=txn.transaction_id,
        score=score,
        decision="flag" if score >= THRESHOLD else "allow",
        threshold=THRESHOLD,
        model="fraud_detector",
        version=_version,
    )


@app.get("/readyz")
async def readyz() -> dict[str, bool]:
    return {"ready": True}
