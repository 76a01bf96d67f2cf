"""The sticky assignment: deterministic, monotone in the weight, uniform over buckets.

The uniformity tests are chi-square goodness-of-fit tests over many keys. A hash that really
spreads keys uniformly fails each of them with probability ALPHA (1e-6): over the
PARAMETRISED cases below (at most 12 tests) the chance of a false failure on a fresh key set is
below 1.2e-5. The key sets are fixed (seeded), so an outcome never flips between runs.
"""

from __future__ import annotations

import bisect
import math
import random
import uuid
from collections import Counter
from collections.abc import Callable
from statistics import NormalDist

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fraud_detector.sticky import BUCKETS, StickyRoute, bucket_of, canary_buckets, on_canary

ALPHA = 1e-6
KEYS = 200_000
SALTS = ("", "3f9a1c2b7d")


def _sequential(n: int) -> list[str]:
    return [f"acct-{i:07d}" for i in range(n)]


def _uuids(n: int) -> list[str]:
    rng = random.Random(7)
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(n)]


def _cards(n: int) -> list[str]:
    """16-digit numbers sharing a 6-digit issuer prefix: keys that differ only in a few digits."""
    return [f"400012{i:010d}" for i in range(0, n * 37, 37)]


KEY_SETS: dict[str, Callable[[int], list[str]]] = {"sequential": _sequential, "uuid": _uuids, "card": _cards}


def chi2_critical(df: int, alpha: float) -> float:
    """Upper alpha quantile of chi-square (Wilson-Hilferty; within 0.1% for df >= 99)."""
    z = NormalDist().inv_cdf(1 - alpha)
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def chi2(counts: Counter[int], cells: int, n: int) -> float:
    expected = n / cells
    return sum((counts.get(c, 0) - expected) ** 2 / expected for c in range(cells))


def test_golden_buckets_are_the_same_in_every_process() -> None:
    # Fixed values: another pod, another Python (another PYTHONHASHSEED) must assign the same.
    assert bucket_of("acct-42", "3f9a1c2b7d") == 9389
    assert bucket_of("acct-42") == 5428
    assert bucket_of("4000123412341234", "3f9a1c2b7d") == 1644


def test_the_salt_draws_another_set_of_accounts() -> None:
    keys = _sequential(20_000)
    first = {k for k in keys if on_canary(k, "rev-a", 10)}
    second = {k for k in keys if on_canary(k, "rev-b", 10)}
    # Independent draws of 10% overlap on ~1% of keys, not on all of them.
    assert 0.005 < len(first & second) / len(keys) < 0.02


@pytest.mark.parametrize("salt", SALTS, ids=["unsalted", "salted"])
@pytest.mark.parametrize("kind", list(KEY_SETS), ids=list(KEY_SETS))
def test_keys_spread_uniformly_over_the_weight_percents(kind: str, salt: str) -> None:
    """100 cells of 100 buckets each (one per weight percent): chi-square with 99 df at ALPHA."""
    keys = KEY_SETS[kind](KEYS)
    counts = Counter(bucket_of(k, salt) * 100 // BUCKETS for k in keys)
    statistic = chi2(counts, 100, len(keys))
    assert statistic < chi2_critical(99, ALPHA), f"chi2={statistic:.1f} over 99 df"


@pytest.mark.parametrize("kind", list(KEY_SETS), ids=list(KEY_SETS))
def test_keys_spread_uniformly_over_every_bucket(kind: str) -> None:
    """All 10,000 buckets (20 keys expected in each): chi-square with 9,999 df at ALPHA."""
    keys = KEY_SETS[kind](KEYS)
    counts = Counter(bucket_of(k, "3f9a1c2b7d") for k in keys)
    statistic = chi2(counts, BUCKETS, len(keys))
    assert statistic < chi2_critical(BUCKETS - 1, ALPHA), f"chi2={statistic:.1f} over {BUCKETS - 1} df"


def test_the_canary_gets_its_weight_of_the_accounts_at_every_weight() -> None:
    """At each whole weight the canary's share of 200,000 accounts is within the binomial bound
    (two-sided, ALPHA over the 100 weights together)."""
    buckets = sorted(bucket_of(k, "3f9a1c2b7d") for k in _uuids(KEYS))
    z = NormalDist().inv_cdf(1 - ALPHA / 200)
    for weight in range(1, 101):
        p = weight / 100
        share = bisect.bisect_left(buckets, canary_buckets(weight)) / len(buckets)
        assert abs(share - p) <= z * math.sqrt(p * (1 - p) / len(buckets)) + 1e-12, (weight, share)


def test_an_account_on_the_canary_at_10_percent_stays_there_at_30() -> None:
    keys = _sequential(50_000)
    at_10 = {k for k in keys if on_canary(k, "rev", 10)}
    at_30 = {k for k in keys if on_canary(k, "rev", 30)}
    assert at_10 <= at_30
    assert 0.09 < len(at_10) / len(keys) < 0.11
    assert 0.29 < len(at_30) / len(keys) < 0.31


@given(st.text(min_size=1, max_size=64), st.text(max_size=20), st.integers(0, 100), st.integers(0, 100))
def test_assignment_only_grows_with_the_weight(key: str, salt: str, w1: int, w2: int) -> None:
    low, high = sorted((w1, w2))
    assert not on_canary(key, salt, low) or on_canary(key, salt, high)
    assert not on_canary(key, salt, 0)
    assert on_canary(key, salt, 100)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ({"url": "http://c:80", "weight": 20, "source": "field:account_id", "salt": "r"}, None),
        ({"url": "http://c:80/", "weight": 0, "source": "header:X-Account-Id"}, None),
        ({"url": "c:80", "weight": 20, "source": "field:account_id"}, "must be an http(s) URL"),
        ({"url": "http://c", "weight": 101, "source": "field:account_id"}, "within [0, 100]"),
        ({"url": "http://c", "weight": True, "source": "field:account_id"}, "within [0, 100]"),
        ({"url": "http://c", "weight": 5, "source": "field:email"}, "must be one of account_id, card_id"),
        ({"url": "http://c", "weight": 5, "source": "cookie:x"}, "field:<name> or header:<name>"),
        ({"url": "http://c", "weight": 5, "source": "account_id"}, "field:<name> or header:<name>"),
        ([], "must be an object"),
    ],
    ids=[
        "field",
        "header",
        "no-scheme",
        "weight-over",
        "weight-bool",
        "unknown-field",
        "cookie",
        "no-kind",
        "list",
    ],
)
def test_route_parsing(raw: object, problem: str | None) -> None:
    if problem is None:
        route = StickyRoute.from_dict(raw)
        assert not route.url.endswith("/")
        assert route.name == route.name.lower()
        return
    with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        StickyRoute.from_dict(raw)


def test_a_request_without_its_key_stays_on_stable() -> None:
    route = StickyRoute.from_dict({"url": "http://c", "weight": 100, "source": "field:account_id"})
    assert route.canary("acct-1")
    assert not route.canary(None)
    assert not route.canary("")
