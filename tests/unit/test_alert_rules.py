"""The chart's alerts and the dashboard's rollback queries, evaluated by promtool (Prometheus' own engine).

`promtool test rules` runs tests/unit/fixtures/promtool/alerts.test.yaml against the PrometheusRule
rendered from the chart; every alert must have a case in which it fires. The dashboard's rollback
queries get generated `promql_expr_test` cases. Needs `promtool` (Debian's `prometheus` package)
and helm; skipped without them, except under CI.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from statistics import NormalDist
from typing import Any

import pytest
import yaml

from tests.unit.test_chart import CHART, one, render

FIXTURES = Path(__file__).parent / "fixtures" / "promtool"
DASHBOARD = CHART / "dashboards" / "fraudmodel-operator.json"
# Grafana's variables, as a user who selects every namespace and FraudModel sees them.
GRAFANA_VARIABLES = {"$namespace": ".*", "$fraudmodel": ".*", "$__range": "1h", "$__rate_interval": "2m"}
ROLLBACK_SERIES = 'fraudmodel_operator_rollbacks_total{namespace="team-a", fraudmodel="bot", reason="FlagRateFailed"}'


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing (Debian package `prometheus`; ./scripts/test installs it)")
        pytest.skip("needs promtool (Debian package `prometheus`)")
    return found


def run_promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def rendered_rules() -> dict[str, Any]:
    rule = one(render(CHART / "ci" / "monitoring-values.yaml"), "PrometheusRule")
    return {"groups": rule["spec"]["groups"]}


def alert_names(rules: dict[str, Any]) -> set[str]:
    return {r["alert"] for group in rules["groups"] for r in group["rules"] if "alert" in r}


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rendered_rules()))
    return tmp_path


def test_rules_pass_promtool_check(workdir: Path) -> None:
    result = run_promtool("check", "rules", "rules.yaml", cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_fires_in_a_promtool_case() -> None:
    cases = yaml.safe_load((FIXTURES / "alerts.test.yaml").read_text())["tests"]
    cases += drift_cases()  # generated: each is some thirty series a serving pod exports
    firing = {t["alertname"] for case in cases for t in case.get("alert_rule_test", []) if t["exp_alerts"]}
    assert alert_names(rendered_rules()) <= firing, alert_names(rendered_rules()) - firing


def test_alerts_behave_as_the_promtool_cases_say(workdir: Path) -> None:
    shutil.copy(FIXTURES / "alerts.test.yaml", workdir / "alerts.test.yaml")
    result = run_promtool("test", "rules", "alerts.test.yaml", cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr


def dashboard_rollback_queries() -> list[str]:
    """Every dashboard query (panels and annotations) over the rollbacks counter, variables filled in."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in dashboard.get("annotations", {}).get("list", []) if "expr" in a]
    found = []
    for expr in exprs:
        if "fraudmodel_operator_rollbacks_total" in expr:
            for name, value in sorted(GRAFANA_VARIABLES.items(), key=lambda kv: -len(kv[0])):
                expr = expr.replace(name, value)
            found.append(expr)
    return found


def test_dashboard_shows_the_first_rollback(tmp_path: Path) -> None:
    """The rollback panels and annotation see a series that appears at 1 (a FraudModel's first rollback)."""
    queries = dashboard_rollback_queries()
    assert len(queries) >= 3, queries  # the stat, the time series, the annotation
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": []}))
    cases = [
        {
            "interval": "1m",
            "input_series": [{"series": ROLLBACK_SERIES, "values": "_x10 1x20"}],
            "promql_expr_test": [
                {"expr": f"count({query}) > 0", "eval_time": "10m30s", "exp_samples": [{"labels": "{}", "value": 1}]}
                for query in queries
            ],
        }
    ]
    document = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": cases}
    (tmp_path / "dashboard.test.yaml").write_text(yaml.safe_dump(document))
    result = run_promtool("test", "rules", "dashboard.test.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------- drift after promotion

SCORE_EDGES = sorted({float(f"{10 ** (-5 + i / 5):.3g}") for i in range(26)} | {0.9, 0.99, 1.0})
FEATURE_EDGES = [0.0, *(float(m * 10**e) for e in range(5) for m in (1, 2, 5))]
NORMAL = NormalDist()
THRESHOLD = 0.28
MINUTES = 150  # 2.5 hours of one-minute samples: the hour's window full, then past `for: 30m`


def score_cdf(flag_rate: float) -> Callable[[float], float]:
    """Logit-normal scores of which `flag_rate` reach the threshold."""
    mu = math.log(THRESHOLD / (1 - THRESHOLD)) - 2.0 * NORMAL.inv_cdf(1 - flag_rate)
    return lambda e: 1.0 if e >= 1 else NORMAL.cdf((math.log(e / (1 - e)) - mu) / 2.0)


def amount_cdf(median: float) -> Callable[[float], float]:
    return lambda e: NORMAL.cdf(math.log(e / median)) if e > 0 else 0.0


def le(edge: float) -> str:
    return repr(edge)  # as prometheus_client writes it


def expected_psi(live: Callable[[float], float], ref: Callable[[float], float], edges: list[float]) -> float:
    """The chart's PSI: bins at the edges and +Inf, shares floored at 1e-4."""
    total, below_live, below_ref = 0.0, 0.0, 0.0
    for edge in [*edges, math.inf]:
        at_live, at_ref = (1.0, 1.0) if math.isinf(edge) else (live(edge), ref(edge))
        p, q = max(at_live - below_live, 1e-4), max(at_ref - below_ref, 1e-4)
        total += (p - q) * math.log(p / q)
        below_live, below_ref = at_live, at_ref
    return total


def track_series(
    track: str, per_minute: float, scores: Callable[[float], float], amounts: Callable[[float], float]
) -> list[dict[str, str]]:
    """What the chart's PodMonitor scrapes from one track of `team-a/bot` serving v1, whose reference is
    the population of flag rate 1.1% and median amount 60."""
    labels = f'namespace="team-a", fraudmodel="bot", track="{track}", model_version="v1", pod="bot-{track}-0"'
    reference_scores, reference_amounts = score_cdf(0.011), amount_cdf(60.0)

    def counter(name: str, share: float, extra: str = "") -> dict[str, str]:
        return {"series": f"{name}{{{labels}{extra}}}", "values": f"0+{per_minute * share:.6g}x{MINUTES}"}

    def gauge(name: str, value: float, extra: str = "") -> dict[str, str]:
        return {"series": f"{name}{{{labels}{extra}}}", "values": f"{value:.9g}x{MINUTES}"}

    series = [
        counter("fraud_model_predictions_total", 1.0),
        counter("fraud_model_decisions_total", 1 - scores(THRESHOLD), ', decision="flag"'),
        gauge("fraud_model_reference_flag_rate", 1 - reference_scores(THRESHOLD)),
    ]
    for edge in SCORE_EDGES:
        series.append(counter("fraud_model_score_bucket", scores(edge), f', le="{le(edge)}"'))
        series.append(gauge("fraud_model_reference_score_bucket", reference_scores(edge), f', le="{le(edge)}"'))
    series.append(counter("fraud_model_score_bucket", 1.0, ', le="+Inf"'))
    series.append(gauge("fraud_model_reference_score_bucket", 1.0, ', le="+Inf"'))
    feature = ', feature="amount"'
    for edge in FEATURE_EDGES:
        series.append(counter("fraud_model_feature_bucket", amounts(edge), f'{feature}, le="{le(edge)}"'))
        series.append(
            gauge("fraud_model_reference_feature_bucket", reference_amounts(edge), f'{feature}, le="{le(edge)}"')
        )
    series.append(counter("fraud_model_feature_bucket", 1.0, f'{feature}, le="+Inf"'))
    series.append(gauge("fraud_model_reference_feature_bucket", 1.0, f'{feature}, le="+Inf"'))
    return series


DRIFT_ALERTS = ("FraudModelScoreDrift", "FraudModelFeatureDrift", "FraudModelFlagRateShift")
STABLE_V1 = {
    "severity": "warning",
    "namespace": "team-a",
    "fraudmodel": "bot",
    "track": "stable",
    "model_version": "v1",
}


def drift_case(
    name: str, series: list[dict[str, str]], firing: dict[str, dict[str, Any]], quiet_at: str = "20m"
) -> dict[str, Any]:
    """Every drift alert at 2.5 hours: those in `firing` as given (labels, annotations), the others not;
    none before the drift has held for `for: 30m`."""
    tests = [{"eval_time": quiet_at, "alertname": alert, "exp_alerts": []} for alert in DRIFT_ALERTS]
    for alert in DRIFT_ALERTS:
        expected = firing.get(alert)
        tests.append({"eval_time": f"{MINUTES}m", "alertname": alert, "exp_alerts": [expected] if expected else []})
    return {"name": name, "interval": "1m", "input_series": series, "alert_rule_test": tests}


def drift_cases() -> list[dict[str, Any]]:
    same, shifted = score_cdf(0.011), score_cdf(0.11)  # legitimate traffic shifted: ten times the flags
    amounts, bigger = amount_cdf(60.0), amount_cdf(300.0)
    psi_shifted = expected_psi(shifted, same, SCORE_EDGES)
    assert psi_shifted > 0.2 > expected_psi(score_cdf(0.013), same, SCORE_EDGES)  # the cases straddle the bound
    assert expected_psi(bigger, amounts, FEATURE_EDGES) > 0.25
    summary = "FraudModel team-a/bot: {} stable v1 {} its training reference"
    score_drift = {
        "exp_labels": STABLE_V1,
        "exp_annotations": {
            "summary": summary.format("the scores of", "drift from"),
            # the recorded PSI is the formula's, to the digits shown
            "description": f"Score PSI over the last hour is {psi_shifted:.3f} (alert above 0.2). The population "
            "scored is not the one the model was validated on; the operator does not roll back (docs/operator.md, "
            "Monitoring after promotion): check the feature drift panels and retrain.",
        },
    }
    flag_shift = {
        "exp_labels": STABLE_V1,
        "exp_annotations": {
            "summary": "FraudModel team-a/bot: stable v1 flags at a rate its reference did not",
            "description": "The last hour's flag rate is 10.00x the rate on the model's reference sample (allowed 0.5 "
            "to 2): more false alarms for the review team, or fraud let through.",
        },
    }
    feature_drift = {
        "exp_labels": {**STABLE_V1, "feature": "amount"},
        "exp_annotations": {
            "summary": summary.format("input amount of", "drifts from"),
            "description": f"PSI of amount over the last hour is {expected_psi(bigger, amounts, FEATURE_EDGES):.3f} "
            "(alert above 0.25).",
        },
    }
    drifting_series = (
        'fraudmodel_operator_drifting{namespace="team-a", fraudmodel="bot", job="fraudmodel-operator-metrics", '
        'pod="op-0"}'
    )
    return [
        drift_case(
            "a stable model scoring its reference population raises nothing",
            track_series("stable", 1000, same, amounts),
            {},
        ),
        drift_case(
            "a shifted population on the stable: score drift and a flag-rate shift, after 30 minutes",
            track_series("stable", 1000, shifted, amounts),
            {"FraudModelScoreDrift": score_drift, "FraudModelFlagRateShift": flag_shift},
        ),
        drift_case(
            "bigger baskets: the amount drifts before the scores do",
            track_series("stable", 1000, score_cdf(0.013), bigger),
            {"FraudModelFeatureDrift": feature_drift},
        ),
        drift_case(
            "the canary is the analysis' business, not a drift alert's",
            track_series("canary", 1000, shifted, bigger),
            {},
        ),
        drift_case("too little traffic (600 an hour) to alert on", track_series("stable", 10, shifted, bigger), {}),
        {
            "name": "the operator's Drifting condition held for a minute",
            "interval": "1m",
            "input_series": [{"series": drifting_series, "values": "0x5 1x10 0x5"}],
            "alert_rule_test": [
                {"eval_time": "5m", "alertname": "FraudModelDrifting", "exp_alerts": []},
                {
                    "eval_time": "8m",
                    "alertname": "FraudModelDrifting",
                    "exp_alerts": [
                        {
                            "exp_labels": {"severity": "warning", "namespace": "team-a", "fraudmodel": "bot"},
                            "exp_annotations": {
                                "summary": "FraudModel team-a/bot is Drifting",
                                "description": "Its stable model drifts from its training reference; the values are "
                                "in the Drifting condition: kubectl -n team-a get fraudmodel bot -o "
                                "jsonpath='{.status.conditions[?(@.type==\"Drifting\")].message}'",
                            },
                        }
                    ],
                },
                {"eval_time": "18m", "alertname": "FraudModelDrifting", "exp_alerts": []},
            ],
        },
    ]


def test_drift_rules_alert_on_the_stable_track_drifting_from_its_reference(workdir: Path) -> None:
    """The recording rules' PSI and flag-rate ratio, from the series a serving pod exports, through promtool."""
    document = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": drift_cases()}
    (workdir / "drift.test.yaml").write_text(yaml.safe_dump(document, width=1000))
    result = run_promtool("test", "rules", "drift.test.yaml", cwd=workdir)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
