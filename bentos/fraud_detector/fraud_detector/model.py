"""The PyTorch model: a tabular MLP with feature normalisation baked in.

The network takes raw feature values in schema order. ``log1p`` of the
heavy-tailed features and the standardisation fitted on the training data are
buffers of the module, so a saved model needs no separate preprocessing code
and the service cannot apply a different one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from .schema import FEATURE_NAMES, LOG_FEATURES

__all__ = ["FraudNet", "ModelConfig", "load", "save"]

WEIGHTS_FILE = "model.pt"
CONFIG_FILE = "config.json"
# The model's reference sample (test-split scores and monitored features), published by the service.
REFERENCE_FILE = "reference.npz"


@dataclass(frozen=True)
class ModelConfig:
    features: tuple[str, ...] = FEATURE_NAMES
    log_features: tuple[bool, ...] = LOG_FEATURES
    hidden: tuple[int, ...] = (64, 32)


class FraudNet(nn.Module):
    mean: torch.Tensor
    std: torch.Tensor
    log_mask: torch.Tensor

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        n = len(self.config.features)
        self.register_buffer("log_mask", torch.tensor(self.config.log_features, dtype=torch.bool))
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("std", torch.ones(n))
        layers: list[nn.Module] = []
        width = n
        for h in self.config.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(self.log_mask, torch.log1p(torch.clamp(x, min=0.0)), x)

    def fit_normalisation(self, x: npt.NDArray[np.float32]) -> None:
        """Set the baked-in standardisation from training features."""
        with torch.no_grad():
            t = self._transform(torch.from_numpy(np.asarray(x, dtype=np.float32)))
            self.mean.copy_(t.mean(dim=0))
            self.std.copy_(t.std(dim=0).clamp(min=1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, shape (batch,)."""
        z = (self._transform(x) - self.mean) / self.std
        out: torch.Tensor = self.net(z).squeeze(-1)
        return out

    def predict_proba(
        self, x: npt.NDArray[np.float32] | Sequence[Sequence[float]]
    ) -> npt.NDArray[np.float32]:
        """Fraud probabilities for raw feature rows."""
        t = torch.as_tensor(np.asarray(x, dtype=np.float32))
        with torch.inference_mode():
            scores: npt.NDArray[np.float32] = torch.sigmoid(self(t)).numpy()
        return scores


def save(model: FraudNet, directory: Path) -> None:
    """Write weights (state_dict) and config as two files in ``directory``."""
    torch.save(model.state_dict(), directory / WEIGHTS_FILE)
    cfg: dict[str, Any] = asdict(model.config)
    (directory / CONFIG_FILE).write_text(json.dumps(cfg, indent=2))


def load(directory: Path) -> FraudNet:
    cfg = json.loads((directory / CONFIG_FILE).read_text())
    config = ModelConfig(
        features=tuple(cfg["features"]),
        log_features=tuple(cfg["log_features"]),
        hidden=tuple(cfg["hidden"]),
    )
    if config.features != FEATURE_NAMES:
        raise ValueError(f"model expects features {config.features}, this code serves {FEATURE_NAMES}")
    model = FraudNet(config)
    model.load_state_dict(torch.load(directory / WEIGHTS_FILE, weights_only=True))
    model.eval()
    return model
