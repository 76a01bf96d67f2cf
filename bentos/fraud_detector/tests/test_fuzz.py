"""Fuzz the predict endpoints: whatever the body and its content type, a prompt answer, never a 5xx.

Bodies are mutated transactions, arbitrary JSON, bytes, and deeply nested JSON (a
body nested ~1,000 levels deep once hung for the whole request timeout and came
back as an uncounted 500); content types include none at all (once taken for JSON).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fraud_detector.data import payloads
from fraud_detector.schema import FEATURE_NAMES

from .conftest import Server

pytestmark = pytest.mark.server

VALID = payloads(20, seed=31)
FIELDS = ["transaction_id", *FEATURE_NAMES]
# Well under the service's 10 s request timeout: a refusal is immediate.
PROMPT_S = 2.0

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
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
            body[name] = draw(
                st.sampled_from([0, -1, 1e308, -1e-308, 2**63, -(2**63), 10**30, "", "0", True, 23, 24])
            )
    return body


def _dumps(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


@st.composite
def deeply_nested(draw: st.DrawFn) -> tuple[str, bytes]:
    """Brackets or objects nested up to 5,000 levels, alone or where a value or a batch item goes."""
    depth = draw(st.integers(1, 5_000))
    kind = draw(st.sampled_from(["array", "object"]))
    inner = "[" * depth + "]" * depth if kind == "array" else '{"a":' * depth + "1" + "}" * depth
    where = draw(st.sampled_from(["body", "field", "batch item"]))
    if where == "body":
        return draw(st.sampled_from(["/predict", "/predict_batch"])), inner.encode()
    if where == "field":
        head = _dumps({**VALID[0], "amount": None}).decode().replace('"amount": null', '"amount": ' + inner)
        return "/predict", head.encode()
    return "/predict_batch", ('{"transactions": [' + inner + "]}").encode()


bodies = st.one_of(
    mutated().map(lambda b: ("/predict", _dumps(b))),
    st.lists(mutated(), max_size=5).map(lambda bs: ("/predict_batch", _dumps({"transactions": bs}))),
    json_values.map(lambda v: ("/predict", _dumps(v))),
    json_values.map(lambda v: ("/predict_batch", _dumps(v))),
    st.binary(max_size=64).map(lambda b: ("/predict", b)),
    deeply_nested(),
)

JSON_TYPES = ["application/json", "application/json; charset=utf-8", "Application/JSON"]
# None: no content-type header at all
content_types = st.sampled_from([*JSON_TYPES, None, "", "text/plain", "application/x-www-form-urlencoded"])


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


@settings(max_examples=400, deadline=None)
@given(request=bodies, content_type=content_types)
def test_no_5xx_whatever_the_body(
    client: httpx.Client, request: tuple[str, bytes], content_type: str | None
) -> None:
    path, body = request
    headers = {} if content_type is None else {"content-type": content_type}
    r = client.post(path, content=body, headers=headers)
    assert r.status_code < 500, (r.status_code, r.text, body[:300])
    assert r.elapsed.total_seconds() < PROMPT_S, (r.elapsed, body[:300])
    if content_type not in JSON_TYPES:
        assert r.status_code == 415, (content_type, r.status_code, r.text)
    assert r.status_code in (200, 400, 413, 415, 422), r.text
    if r.status_code != 200:
        out = r.json()
        assert out["reason"]
        assert out["field"]
