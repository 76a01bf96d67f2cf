"""fraudmodel-operator: a Kubernetes operator that serves fraud-detection models with
BentoML and releases new versions through analysed canary steps."""

from fraudmodel_operator.api import FraudModel, FraudModelSpec, FraudModelStatus, Phase

__version__ = "0.1.0"

__all__ = ["FraudModel", "FraudModelSpec", "FraudModelStatus", "Phase", "__version__"]
