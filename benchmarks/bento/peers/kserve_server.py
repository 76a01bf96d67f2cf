"""The fraud detector as a user of KServe would serve it: a ``kserve.Model`` subclass
run by KServe's Python ``ModelServer`` (V1 protocol, ``/v1/models/fraud_detector:predict``).

    python kserve_server.py --model_dir DIR --threshold T --http_port P --workers 1

Runs in its own venv (peers/setup-venvs); imports the bento's model and schema code
(PYTHONPATH=bentos/fraud_detector) but not BentoML.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fraud_detector import model as model_io
from fraud_detector.schema import FEATURE_NAMES, Transaction
from kserve import Model, ModelServer, model_server
from kserve.errors import InvalidInput
from pydantic import ValidationError


class FraudDetector(Model):  # type: ignore[misc]
    def __init__(self, name: str, model_dir: Path, threshold: float) -> None:
        super().__init__(name)
        self.model_dir = model_dir
        self.threshold = threshold
        self.load()

    def load(self) -> bool:
        torch.set_num_threads(1)
        self.model = model_io.load(self.model_dir)
        self.ready = True
        return True

    async def predict(self, payload: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
        try:
            txns = [Transaction.model_validate(i) for i in payload["instances"]]
        except (KeyError, TypeError, ValidationError) as exc:
            raise InvalidInput(str(exc)) from None
        rows = np.array([[getattr(t, n) for n in FEATURE_NAMES] for t in txns], dtype=np.float32)
        scores = self.model.predict_proba(rows).tolist()
        return {
            "predictions": [
                {
                    "transaction_id": t.transaction_id,
                    "score": s,
                    "decision": "flag" if s >= self.threshold else "allow",
                    "threshold": self.threshold,
                }
                for t, s in zip(txns, scores, strict=True)
            ]
        }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[model_server.parser])
    parser.add_argument("--model_dir", type=Path, required=True)
    parser.add_argument("--threshold", type=float, required=True)
    args, _ = parser.parse_known_args()
    ModelServer(http_port=args.http_port, workers=args.workers, enable_grpc=args.enable_grpc).start(
        [FraudDetector("fraud_detector", args.model_dir, args.threshold)]
    )
