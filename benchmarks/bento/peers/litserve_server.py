"""The fraud detector as a user of LitServe would serve it: a ``litserve.LitAPI`` run by
a ``LitServer`` on the CPU, one inference worker, one API server (``POST /predict``).

    python litserve_server.py --model-dir DIR --threshold T --port P

Runs in its own venv (peers/setup-venvs); imports the bento's model and schema code
(PYTHONPATH=bentos/fraud_detector) but not BentoML.

No ``from __future__ import annotations`` here: LitServe reads ``decode_request``'s
annotation as the request model, and needs the class, not its name.
"""

import argparse
from pathlib import Path
from typing import Any

import litserve as ls
import numpy as np
import torch
from fraud_detector import model as model_io
from fraud_detector.schema import FEATURE_NAMES, Transaction


class FraudDetectorAPI(ls.LitAPI):  # type: ignore[misc]
    def __init__(self, model_dir: Path, threshold: float) -> None:
        super().__init__()
        self.model_dir = model_dir
        self.threshold = threshold

    def setup(self, device: str) -> None:
        torch.set_num_threads(1)
        self.model = model_io.load(self.model_dir)

    # The annotation is LitServe's request schema: FastAPI validates the body against it
    # (422 on invalid input) before the request reaches the inference worker.
    def decode_request(self, request: Transaction) -> Transaction:
        return request

    def predict(self, txn: Transaction) -> tuple[Transaction, float]:
        row = np.array([[getattr(txn, n) for n in FEATURE_NAMES]], dtype=np.float32)
        return txn, float(self.model.predict_proba(row)[0])

    def encode_response(self, output: tuple[Transaction, float]) -> dict[str, Any]:
        txn, score = output
        return {
            "transaction_id": txn.transaction_id,
            "score": score,
            "decision": "flag" if score >= self.threshold else "allow",
            "threshold": self.threshold,
        }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--threshold", type=float, required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    server = ls.LitServer(
        FraudDetectorAPI(args.model_dir, args.threshold), accelerator="cpu", devices=1, workers_per_device=1
    )
    # log_level warning: no access-log line per request (the bento logs none either)
    server.run(port=args.port, num_api_servers=1, generate_client_file=False, log_level="warning")
