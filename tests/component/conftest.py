"""Component tier: the real Kopf operator against an emulated API, with fake metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.kopf_harness import Harness, operator_harness


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    async with operator_harness() as h:
        yield h
