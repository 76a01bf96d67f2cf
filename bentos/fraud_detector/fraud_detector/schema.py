"""The feature schema: one source for the generator, training validation and the API.

Every feature is declared once in :data:`FEATURES` with its kind and valid range.
The request model :class:`Transaction` is built from it, and training-data
validation (:mod:`fraud_detector.validation`) checks the same ranges, so the
service accepts exactly what the model was trained to understand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Kind = Literal["float", "int", "bool"]

__all__ = [
    "FEATURES",
    "FEATURE_NAMES",
    "ID_FIELD",
    "LOG_FEATURES",
    "SCHEMA_VERSION",
    "FeatureSpec",
    "Prediction",
    "Transaction",
    "schema_as_dict",
]

# The version a FraudModel declares (spec.model.featureSchemaVersion); bump it with
# any change to FEATURES, so a model trained on other features is never served here.
SCHEMA_VERSION = "v1"
ID_FIELD = "transaction_id"
ID_MAX_LENGTH = 64


@dataclass(frozen=True)
class FeatureSpec:
    """One model input: its name, kind, inclusive range and meaning."""

    name: str
    kind: Kind
    minimum: float
    maximum: float
    description: str
    log_scale: bool = False  # heavy-tailed: the model sees log1p(x)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "minimum": self.minimum,
            "maximum": self.maximum,
            "description": self.description,
            "log_scale": self.log_scale,
        }


FEATURES: tuple[FeatureSpec, ...] = (
    FeatureSpec("amount", "float", 0.01, 50_000.0, "Transaction amount in account currency.", True),
    FeatureSpec("txn_count_1h", "int", 0, 500, "Transactions by this account in the last hour.", True),
    FeatureSpec("txn_count_24h", "int", 0, 5_000, "Transactions by this account in the last 24 hours.", True),
    FeatureSpec("amount_sum_24h", "float", 0.0, 1_000_000.0, "Sum of amounts in the last 24 hours.", True),
    FeatureSpec("account_age_days", "int", 0, 36_500, "Days since the account was opened.", True),
    FeatureSpec("device_accounts_7d", "int", 1, 1_000, "Accounts seen on this device in 7 days.", True),
    FeatureSpec("ip_accounts_24h", "int", 1, 10_000, "Accounts seen from this IP in 24 hours.", True),
    FeatureSpec("geo_mismatch", "bool", 0, 1, "Billing country differs from the IP's country."),
    FeatureSpec("distance_from_home_km", "float", 0.0, 20_040.0, "Distance from the usual location.", True),
    FeatureSpec("promo_redemptions_30d", "int", 0, 1_000, "Promotions redeemed in 30 days.", True),
    FeatureSpec("chargebacks_180d", "int", 0, 100, "Chargebacks on the account in 180 days.", True),
    FeatureSpec("failed_logins_24h", "int", 0, 1_000, "Failed logins in the last 24 hours.", True),
    FeatureSpec("is_new_device", "bool", 0, 1, "First transaction from this device."),
    FeatureSpec("card_present", "bool", 0, 1, "Card physically present (not e-commerce)."),
    FeatureSpec("hour_of_day", "int", 0, 23, "Local hour of the transaction."),
)

FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
LOG_FEATURES: tuple[bool, ...] = tuple(f.log_scale for f in FEATURES)


_BY_NAME = {f.name: f for f in FEATURES}


def _field(name: str) -> Any:
    """The pydantic Field of a feature: its range and description from FEATURES."""
    spec = _BY_NAME[name]
    if spec.kind == "bool":
        return Field(description=spec.description)
    if spec.kind == "int":
        return Field(ge=int(spec.minimum), le=int(spec.maximum), description=spec.description)
    return Field(ge=spec.minimum, le=spec.maximum, description=spec.description)


class Transaction(BaseModel):
    """One transaction to score. Every feature is required.

    Strict: "12" is not a number and 1 is not a bool; NaN and infinity are
    refused; unknown fields are refused so a misspelt feature never silently
    turns into a default.
    """

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, frozen=True)

    transaction_id: str = Field(
        min_length=1, max_length=ID_MAX_LENGTH, description="Caller's transaction id."
    )
    # Identity, not features: the model never sees them. A FraudModel's `stickyBy` may key its canary
    # assignment on one of them (fraud_detector.sticky), so every transaction of an account gets one
    # track's answer during a rollout.
    account_id: str | None = Field(
        default=None, min_length=1, max_length=ID_MAX_LENGTH, description="Caller's account id (optional)."
    )
    card_id: str | None = Field(
        default=None, min_length=1, max_length=ID_MAX_LENGTH, description="Caller's card id (optional)."
    )
    amount: float = _field("amount")
    txn_count_1h: int = _field("txn_count_1h")
    txn_count_24h: int = _field("txn_count_24h")
    amount_sum_24h: float = _field("amount_sum_24h")
    account_age_days: int = _field("account_age_days")
    device_accounts_7d: int = _field("device_accounts_7d")
    ip_accounts_24h: int = _field("ip_accounts_24h")
    geo_mismatch: bool = _field("geo_mismatch")
    distance_from_home_km: float = _field("distance_from_home_km")
    promo_redemptions_30d: int = _field("promo_redemptions_30d")
    chargebacks_180d: int = _field("chargebacks_180d")
    failed_logins_24h: int = _field("failed_logins_24h")
    is_new_device: bool = _field("is_new_device")
    card_present: bool = _field("card_present")
    hour_of_day: int = _field("hour_of_day")


class Prediction(BaseModel):
    """The model's answer for one transaction."""

    transaction_id: str
    score: float = Field(description="Fraud probability in [0, 1].")
    decision: Literal["flag", "allow"]
    threshold: float
    model: str
    version: str


def schema_as_dict() -> dict[str, Any]:
    """The schema as stored in model metadata (JSON-friendly)."""
    return {
        "version": SCHEMA_VERSION,
        "id_field": ID_FIELD,
        "features": [f.as_dict() for f in FEATURES],
    }


def in_range(spec: FeatureSpec, value: float) -> bool:
    return math.isfinite(value) and spec.minimum <= value <= spec.maximum
