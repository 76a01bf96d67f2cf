"""The fraud detector as a user of Seldon's MLServer would serve it: a custom runtime
(``mlserver.MLModel``) speaking the Open Inference Protocol (``/v2/models/fraud_detector/infer``),
one named input per feature plus ``transaction_id``.

    mlserver start benchmarks/bento/peers/mlserver   (settings.json, model-settings.json here)

The model's directory and threshold come from ``MLSERVER_MODEL_URI`` and
``MLSERVER_MODEL_EXTRA`` (MLServer's own environment settings). Runs in its own venv
(peers/setup-venvs); imports the bento's model and schema code
(PYTHONPATH=bentos/fraud_detector) but not BentoML.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from fraud_detector import model as model_io
from fraud_detector.schema import FEATURE_NAMES, Transaction
from mlserver import MLModel
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.errors import MLServerError
from mlserver.types import InferenceRequest, InferenceResponse
from pydantic import ValidationError

ID_INPUT = "transaction_id"


class FraudDetector(MLModel):  # type: ignore[misc]
    async def load(self) -> bool:
        torch.set_num_threads(1)
        params = self.settings.parameters
        self.model = model_io.load(Path(params.uri))
        self.threshold = float((params.extra or {})["threshold"])
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        columns = {}
        for inp in payload.inputs:
            codec = StringCodec if inp.name == ID_INPUT else NumpyCodec
            values = codec.decode_input(inp)
            columns[inp.name] = values if isinstance(values, list) else values.reshape(-1).tolist()
        try:
            n = len(columns[ID_INPUT])
            txns = [Transaction.model_validate({k: v[i] for k, v in columns.items()}) for i in range(n)]
        except (KeyError, IndexError, ValidationError) as exc:
            raise MLServerError(f"invalid transaction: {exc}", status_code=422) from None
        rows = np.array([[getattr(t, name) for name in FEATURE_NAMES] for t in txns], dtype=np.float32)
        scores = self.model.predict_proba(rows)
        decisions = ["flag" if s >= self.threshold else "allow" for s in scores.tolist()]
        return InferenceResponse(
            model_name=self.name,
            outputs=[
                NumpyCodec.encode_output("score", scores),
                StringCodec.encode_output("decision", decisions),
                StringCodec.encode_output(ID_INPUT, [t.transaction_id for t in txns]),
            ],
        )
