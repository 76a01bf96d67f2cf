"""Every example parses; every invalid example is rejected naming the field and the rule.

The operator checks every rule the API server checks (a FraudModel stored before a rule
existed is caught too), plus those only it can (`# expect-caught-by: operator`).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from fraudmodel_operator.api import SpecError, parse_fraudmodel

EXAMPLES = Path(__file__).parents[2] / "examples"
VALID = sorted(p for p in EXAMPLES.glob("*.yaml") if yaml.safe_load(p.read_text()).get("kind") == "FraudModel")
INVALID = sorted((EXAMPLES / "invalid").glob("*.yaml"))


def expectations(path: Path) -> tuple[str, str]:
    text = path.read_text()
    field = re.search(r"^# expect-field: (.+)$", text, re.M)
    message = re.search(r"^# expect-message: (.+)$", text, re.M)
    assert field, f"{path.name} lacks an expect-field comment"
    assert message, f"{path.name} lacks an expect-message comment"
    caught_by = re.search(r"^# expect-caught-by: (.+)$", text, re.M)
    assert caught_by is None or caught_by.group(1).strip() == "operator", "caught by the API server unless `operator`"
    return field.group(1).strip(), message.group(1).strip()


def test_there_are_examples() -> None:
    assert len(VALID) >= 3
    assert len(INVALID) >= 10


@pytest.mark.parametrize("path", VALID, ids=[p.stem for p in VALID])
def test_valid_example_parses(path: Path) -> None:
    fm = parse_fraudmodel(yaml.safe_load(path.read_text()))
    assert fm.spec.model.version
    assert fm.spec.rollout.weights, "a canary needs at least one step"


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_example_is_rejected_naming_field_and_rule(path: Path) -> None:
    field, message = expectations(path)
    with pytest.raises(SpecError) as caught:
        parse_fraudmodel(yaml.safe_load(path.read_text()))
    problems = caught.value.problems
    assert any(p.startswith(field) and message.lower() in p.lower() for p in problems), problems
