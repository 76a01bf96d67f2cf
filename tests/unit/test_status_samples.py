"""The status samples are what the operator writes today, and every phase maps to kstatus conditions."""

from __future__ import annotations

import pytest

from fraudmodel_operator.api import FraudModelStatus, Phase
from fraudmodel_operator.conditions import KSTATUS, desired_conditions
from tests.status_samples import SAMPLES, SCENARIOS, Scenario, generate, render


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_sample_is_what_the_operator_writes(scenario: Scenario) -> None:
    path = SAMPLES / f"{scenario.name}.yaml"
    assert path.exists(), f"{path} is missing: python -m tests.status_samples --write"
    assert path.read_text() == render(generate(scenario)), f"{path} is stale: python -m tests.status_samples --write"


def test_no_sample_without_a_scenario() -> None:
    assert {p.stem for p in SAMPLES.glob("*.yaml")} == {s.name for s in SCENARIOS}


def test_every_phase_has_kstatus_conditions() -> None:
    assert set(KSTATUS) == set(Phase)


# kstatus: Reconciling=True -> InProgress, Stalled=True -> Failed, neither -> Current.
@pytest.mark.parametrize(
    ("phase", "reconciling", "stalled"),
    [
        (Phase.PENDING, "True", "False"),
        (Phase.PROGRESSING, "True", "False"),
        (Phase.PAUSED, "True", "False"),
        (Phase.READY, "False", "False"),
        (Phase.ROLLED_BACK, "False", "True"),
        (Phase.FAILED, "False", "True"),
    ],
    ids=lambda v: str(v),
)
def test_kstatus_conditions_of_each_phase(phase: Phase, reconciling: str, stalled: str) -> None:
    conditions = {kind: (state, reason) for kind, state, reason, _ in desired_conditions(FraudModelStatus(phase=phase))}
    assert conditions["Reconciling"][0] == reconciling
    assert conditions["Stalled"][0] == stalled
    assert all(reason for _, reason in conditions.values()), "every condition needs a reason"
    assert {"Ready", "Progressing", "Degraded"} <= set(conditions)


def test_stalled_names_the_failure() -> None:
    status = FraudModelStatus(phase=Phase.FAILED, message="Gateway API is not installed")
    conditions = {
        kind: (state, reason, message)
        for kind, state, reason, message in desired_conditions(status, "RouterUnavailable")
    }
    assert conditions["Stalled"] == ("True", "RouterUnavailable", "Gateway API is not installed")
