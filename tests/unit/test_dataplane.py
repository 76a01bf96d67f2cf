"""The local data plane (scripts/dataplane.py) sends the canary the share the router really gives it."""

from __future__ import annotations

from typing import Any

import pytest
from scripts.dataplane import canary_weight


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ({}, 0),
        ({"canary": {"version": "v2", "weight": 20, "routedWeight": 20, "effectiveWeight": 33}}, 33),
        ({"canary": {"version": "v2", "weight": 50, "routedWeight": 20, "effectiveWeight": 0}}, 0),
        ({"canary": {"version": "v2", "weight": 50, "routedWeight": 20}}, 20),
        ({"canary": {"version": "v2", "weight": 50}}, 50),
        ({"canary": {"weight": 50, "effectiveWeight": 50}}, 0),
    ],
    ids=[
        "no-canary",
        "replica-ratio-serves-a-third",
        "unready-canary-serves-nothing",
        "no-read-back-yet-routed",
        "status-of-an-older-operator",
        "no-version-no-canary",
    ],
)
def test_traffic_follows_the_effective_weight(status: dict[str, Any], expected: int) -> None:
    assert canary_weight(status) == expected


def test_the_emulated_tiers_follow_the_routed_weight() -> None:
    status = {"canary": {"version": "v2", "weight": 50, "routedWeight": 50, "effectiveWeight": 0}}
    assert canary_weight(status, effective=False) == 50
