"""Synthetic card-transaction data, deterministic by seed.

Legitimate traffic follows everyday shapes (log-normal amounts, a daytime hour
profile, rare chargebacks). Fraud is rare (1.5 % by default) and comes in three
labelled patterns:

* ``bot``: scripted account takeover: bursts of small card-not-present
  payments, many accounts behind one IP, failed logins, any hour of the night.
* ``chargeback``: stolen cards: large amounts far from home, geo mismatch,
  new devices, young accounts, a chargeback history.
* ``promo_abuse``: farms of fresh accounts on shared devices redeeming
  promotions over and over.

Each fraud row takes its pattern's value feature by feature only with
probability ``pattern_strength``, so some fraud looks partly legitimate and the
task is not trivially separable. ``shift`` (0..1) moves the legitimate
population (bigger baskets, more new devices and travel, younger accounts) to
produce drift.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .schema import FEATURE_NAMES, FEATURES, ID_FIELD

__all__ = ["PATTERNS", "Dataset", "generate", "payloads"]

PATTERNS = ("legit", "bot", "chargeback", "promo_abuse")
_PATTERN_MIX = {"bot": 0.40, "chargeback": 0.35, "promo_abuse": 0.25}

# Relative transaction volume by local hour: quiet nights, busy evenings.
_HOUR_PROFILE = np.array(
    [2, 1, 1, 1, 1, 2, 4, 6, 8, 9, 9, 10, 11, 10, 9, 9, 10, 11, 12, 12, 10, 8, 5, 3],
    dtype=np.float64,
)

FloatArray = npt.NDArray[Any]


@dataclass(frozen=True)
class Dataset:
    """Columns by feature name, plus ids, labels (1 = fraud) and pattern names."""

    ids: npt.NDArray[np.str_]
    columns: dict[str, npt.NDArray[Any]]
    labels: npt.NDArray[np.int8]
    patterns: npt.NDArray[np.str_]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def matrix(self) -> npt.NDArray[np.float32]:
        """The feature matrix in schema order, as the model consumes it."""
        return np.column_stack([np.asarray(self.columns[name], dtype=np.float32) for name in FEATURE_NAMES])

    def subset(self, index: npt.NDArray[np.intp]) -> Dataset:
        return Dataset(
            ids=self.ids[index],
            columns={k: v[index] for k, v in self.columns.items()},
            labels=self.labels[index],
            patterns=self.patterns[index],
        )

    def fingerprint(self) -> str:
        """sha256 over ids, features and labels: identifies the training data."""
        h = hashlib.sha256()
        h.update(json.dumps(list(FEATURE_NAMES)).encode())
        h.update("\x00".join(self.ids.tolist()).encode())
        for name in FEATURE_NAMES:
            h.update(np.ascontiguousarray(self.columns[name], dtype=np.float64).tobytes())
        h.update(np.ascontiguousarray(self.labels, dtype=np.int8).tobytes())
        return h.hexdigest()

    def rows(self) -> Iterator[dict[str, Any]]:
        """Rows as request payloads (JSON-ready: int, float, bool)."""
        kinds = {f.name: f.kind for f in FEATURES}
        cols = {name: self.columns[name].tolist() for name in FEATURE_NAMES}
        for i, tid in enumerate(self.ids.tolist()):
            row: dict[str, Any] = {ID_FIELD: tid}
            for name in FEATURE_NAMES:
                value = cols[name][i]
                kind = kinds[name]
                row[name] = bool(value) if kind == "bool" else int(value) if kind == "int" else float(value)
            yield row


def _legit(rng: np.random.Generator, n: int, shift: float) -> dict[str, FloatArray]:
    s = float(shift)
    amount = rng.lognormal(mean=3.4 + 0.9 * s, sigma=1.0, size=n)
    c1 = rng.poisson(0.3 * (1 + 2 * s), size=n)
    c24 = c1 + rng.poisson(2.5 * (1 + s), size=n)
    return {
        "amount": amount,
        "txn_count_1h": c1.astype(np.float64),
        "txn_count_24h": c24.astype(np.float64),
        "account_age_days": np.floor(rng.gamma(1.6, 420.0 * (1 - 0.6 * s), size=n)),
        "device_accounts_7d": 1.0 + rng.poisson(0.08 + 0.4 * s, size=n),
        "ip_accounts_24h": 1.0 + rng.poisson(0.6 + 1.5 * s, size=n),
        "geo_mismatch": (rng.random(n) < 0.03 + 0.20 * s).astype(np.float64),
        "distance_from_home_km": rng.lognormal(2.3 + 1.5 * s, 1.2, size=n),
        "promo_redemptions_30d": rng.poisson(0.25 + 1.0 * s, size=n).astype(np.float64),
        "chargebacks_180d": rng.poisson(0.02, size=n).astype(np.float64),
        "failed_logins_24h": rng.poisson(0.1 + 0.5 * s, size=n).astype(np.float64),
        "is_new_device": (rng.random(n) < 0.08 + 0.30 * s).astype(np.float64),
        "card_present": (rng.random(n) < 0.35 * (1 - 0.7 * s)).astype(np.float64),
        "hour_of_day": rng.choice(24, size=n, p=_HOUR_PROFILE / _HOUR_PROFILE.sum()).astype(np.float64),
    }


def _pattern(rng: np.random.Generator, name: str, n: int) -> dict[str, FloatArray]:
    if name == "bot":
        c1 = 3 + rng.poisson(12, size=n)
        return {
            "amount": rng.lognormal(2.0, 0.8, size=n),
            "txn_count_1h": c1.astype(np.float64),
            "txn_count_24h": (c1 + rng.poisson(30, size=n)).astype(np.float64),
            "ip_accounts_24h": 1.0 + rng.poisson(40, size=n),
            "device_accounts_7d": 1.0 + rng.poisson(3, size=n),
            "failed_logins_24h": rng.poisson(8, size=n).astype(np.float64),
            "is_new_device": (rng.random(n) < 0.7).astype(np.float64),
            "card_present": np.zeros(n),
            "hour_of_day": rng.integers(0, 24, size=n).astype(np.float64),
        }
    if name == "chargeback":
        return {
            "amount": rng.lognormal(6.0, 0.9, size=n),
            "geo_mismatch": (rng.random(n) < 0.6).astype(np.float64),
            "distance_from_home_km": rng.lognormal(7.0, 1.0, size=n),
            "is_new_device": (rng.random(n) < 0.6).astype(np.float64),
            "account_age_days": np.floor(rng.gamma(1.2, 60.0, size=n)),
            "chargebacks_180d": rng.poisson(1.5, size=n).astype(np.float64),
            "card_present": (rng.random(n) < 0.05).astype(np.float64),
        }
    if name == "promo_abuse":
        return {
            "account_age_days": rng.integers(0, 15, size=n).astype(np.float64),
            "device_accounts_7d": 2.0 + rng.poisson(6, size=n),
            "promo_redemptions_30d": 2.0 + rng.poisson(6, size=n),
            "amount": rng.lognormal(2.8, 0.5, size=n),
            "ip_accounts_24h": 1.0 + rng.poisson(6, size=n),
        }
    raise ValueError(f"unknown fraud pattern {name!r}")


def generate(
    rows: int = 50_000,
    seed: int = 7,
    *,
    fraud_rate: float = 0.015,
    shift: float = 0.0,
    pattern_strength: float = 0.6,
) -> Dataset:
    """Generate ``rows`` labelled transactions; the same arguments give the same data."""
    if rows < 1:
        raise ValueError("rows must be positive")
    if not 0.0 <= shift <= 1.0:
        raise ValueError("shift must be within [0, 1]")
    rng = np.random.default_rng(seed)
    cols = _legit(rng, rows, shift)
    pattern = np.full(rows, "legit", dtype="<U11")

    is_fraud = rng.random(rows) < fraud_rate
    names = list(_PATTERN_MIX)
    probs = np.array(list(_PATTERN_MIX.values()))
    fraud_idx = np.flatnonzero(is_fraud)
    chosen = rng.choice(len(names), size=fraud_idx.size, p=probs / probs.sum())
    for k, name in enumerate(names):
        idx = fraud_idx[chosen == k]
        pattern[idx] = name
        for feature, values in _pattern(rng, name, idx.size).items():
            take = rng.random(idx.size) < pattern_strength
            cols[feature][idx[take]] = values[take]

    # Derived and clipped after the patterns so they stay consistent.
    cols["txn_count_24h"] = np.maximum(cols["txn_count_24h"], cols["txn_count_1h"])
    earlier = cols["txn_count_24h"] * rng.lognormal(3.3, 0.6, size=rows)
    cols["amount_sum_24h"] = cols["amount"] + earlier
    for spec in FEATURES:
        col = np.clip(cols[spec.name], spec.minimum, spec.maximum)
        if spec.kind == "float":
            cols[spec.name] = np.round(col, 2)
        elif spec.kind == "int":
            cols[spec.name] = col.astype(np.int64)
        else:
            cols[spec.name] = col.astype(bool)

    ids = np.array([f"tx-{seed}-{i:08d}" for i in range(rows)])
    return Dataset(
        ids=ids,
        columns={name: cols[name] for name in FEATURE_NAMES},
        labels=is_fraud.astype(np.int8),
        patterns=pattern,
    )


def payloads(count: int, seed: int = 1234, *, shift: float = 0.0) -> list[dict[str, Any]]:
    """``count`` valid request bodies for ``POST /predict`` (realistic traffic)."""
    return list(generate(count, seed, shift=shift).rows())
