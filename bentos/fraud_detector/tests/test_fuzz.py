"""Fuzz the predict endpoints: whatever the body, never a 5xx."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fraud_detector.data import payloads
from fraud_detector.schema import FEATURE_NAMES
from hypothesis import given, settings
from hypothesis import strategies as st

from .conftest import Server

pytestmark = pytest.mark.server

VALID = payloads(20, seed=31)
FIELDS = ["transaction_id", *FEATURE_NAMES]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=10,
)


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    """A valid transaction with a few fields removed, replaced or added."""
    body = dict(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(0, 3))):
        action = draw(st.sampled_from(["drop", "replace", "add", "edge"]))
        name = draw(st.sampled_from(FIELDS))
        if action == "drop":
            body.pop(name, None)
        elif action == "replace":
            body[name] = draw(json_values)
        elif action == "add":
            body[draw(st.text(min_size=1, max_size=12))] = draw(json_values)
        else:
            body[name] = draw(st.sampled_from([0, -1, 1e308, -1e-308, 2**63, -(2**63), 10**30, "", "0", True, 23, 24]))
    return body


def _dumps(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


bodies = st.one_of(
    mutated().map(lambda b: ("/predict", _dumps(b))),
    st.lists(mutated(), max_size=5).map(lambda bs: ("/predict_batch", _dumps({"transactions": bs}))),
    json_values.map(lambda v: ("/predict", _dumps(v))),
    json_values.map(lambda v: ("/predict_batch", _dumps(v))),
    st.binary(max_size=64).map(lambda b: ("/predict", b)),
)


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10, headers={"content-type": "application/json"}) as c:
        yield c


@settings(max_examples=300, deadline=None)
@given(request=bodies)
def test_no_5xx_whatever_the_body(client: httpx.Client, request: tuple[str, bytes]) -> None:
    path, body = request
    r = client.post(path, content=body)
    assert r.status_code < 500, (r.status_code, r.text, body[:300])
    assert r.status_code in (200, 400, 413, 422), r.text
    if r.status_code != 200:
        out = r.json()
        assert out["reason"]
        assert out["field"]
