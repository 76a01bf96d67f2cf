"""Account-sticky canary assignment: which track answers a request, by its key. Pure.

A FraudModel with ``spec.rollout.stickyBy`` names where a request's key comes from (a
transaction field such as ``account_id``, or a header). The key is hashed, with the
rollout's salt (the canary revision), into :data:`BUCKETS` buckets; the canary gets the
buckets below its weight (``weight`` percent of :data:`BUCKETS`). So:

* one key always lands in one bucket, in every pod and process (a keyed hash, never
  Python's per-process ``hash``), so every request of an account gets the same track's
  answer for as long as the weight holds;
* the canary's buckets at 10% are a subset of its buckets at 30%: an account that reached
  the canary stays on it as the weight grows, and a fraudster declined by one model cannot
  retry until the other answers;
* another rollout (another salt) draws another set of accounts, so the same customers are
  not the first to meet every new model.

Uniformity over buckets (and so the canary's share of accounts being its weight) is tested
with a chi-square test over many keys (tests/test_sticky.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "BUCKETS",
    "KEY_FIELDS",
    "ROUTING_HEADER",
    "StickyRoute",
    "bucket_of",
    "canary_buckets",
    "on_canary",
]

BUCKETS = 10_000
"""The key space; the operator's STICKY_BUCKETS (a weight is a whole percent: 100 buckets each)."""

KEY_FIELDS = ("account_id", "card_id")
"""Transaction fields a key may come from (the operator's STICKY_FIELDS)."""

ROUTING_HEADER = "x-fraudmodel-routing"
"""Response header of a split request: the routing config revision that assigned it."""

Source = Literal["field", "header"]


def bucket_of(key: str, salt: str = "") -> int:
    """The bucket (0 .. BUCKETS-1) of a key: the first 8 bytes of BLAKE2b(salt, key), mod BUCKETS.

    The salt is the hash function's key, so no choice of account id can collide with another
    rollout's assignment; the modulo bias over 2**64 is below 1e-15.
    """
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8, key=salt.encode("utf-8")[:64]).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def canary_buckets(weight: float) -> int:
    """How many buckets (from 0) the canary owns at `weight` percent."""
    if not 0.0 <= weight <= 100.0:
        raise ValueError(f"weight {weight} must be within [0, 100]")
    return round(weight * BUCKETS / 100)


def on_canary(key: str, salt: str, weight: float) -> bool:
    """Whether the canary answers this key at `weight` percent (monotone in `weight`)."""
    return bucket_of(key, salt) < canary_buckets(weight)


@dataclass(frozen=True)
class StickyRoute:
    """What the stable edge needs to forward the canary's keys (the routing config's ``sticky``)."""

    url: str  # the canary Service's base URL
    weight: float  # percent of buckets on the canary
    source: Source
    name: str  # the field name, or the header name in lower case
    salt: str  # the rollout's salt: the canary revision
    revision: str = ""  # the routing config's revision, answered in ROUTING_HEADER

    @classmethod
    def from_dict(cls, raw: Any, revision: str = "") -> StickyRoute:
        """Parse the routing config's ``sticky`` object; ValueError naming what is wrong."""
        if not isinstance(raw, dict):
            raise ValueError("sticky must be an object")
        url, weight, source, salt = raw.get("url"), raw.get("weight"), raw.get("source"), raw.get("salt", "")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"sticky.url {url!r} must be an http(s) URL")
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight <= 100:
            raise ValueError(f"sticky.weight {weight!r} must be a number within [0, 100]")
        if not isinstance(source, str) or ":" not in source:
            raise ValueError(f"sticky.source {source!r} must be field:<name> or header:<name>")
        kind, name = source.split(":", 1)
        if kind == "field" and name not in KEY_FIELDS:
            raise ValueError(f"sticky.source {source!r}: the field must be one of {', '.join(KEY_FIELDS)}")
        if kind not in ("field", "header") or not name:
            raise ValueError(f"sticky.source {source!r} must be field:<name> or header:<name>")
        if not isinstance(salt, str):
            raise ValueError("sticky.salt must be a string")
        source_kind: Source = "field" if kind == "field" else "header"
        return cls(url.rstrip("/"), float(weight), source_kind, name.lower(), salt, revision)

    def canary(self, key: str | None) -> bool:
        """Whether the canary answers a request with this key (no key: the stable does)."""
        return key is not None and key != "" and on_canary(key, self.salt, self.weight)
