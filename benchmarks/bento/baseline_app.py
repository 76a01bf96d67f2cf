"""The plain baseline a user might write instead of BentoML: the same model and
the same request validation behind one FastAPI endpoint, no batching.

    uvicorn baseline_app:app   (env BENTOML_HOME, BENCH_MODEL_TAG)
"""

from __future__ import annotations

import os
from pathlib import Path

import bentoml
import numpy as np
import torch
from fastapi import FastAPI
from fraud_detector import model as model_io
from fraud_detector.schema import FEATURE_NAMES, Prediction, Transaction

torch.set_num_threads(1)
_stored = bentoml.models.get(os.environ.get("BENCH_MODEL_TAG", "fraud_detector:latest"))
_model = model_io.load(Path(_stored.path))
_version = str(_stored.tag.version)
THRESHOLD = 0.5

app = FastAPI()


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
