"""The chart's alerts and the dashboard's rollback queries, evaluated by promtool (Prometheus' own engine).

`promtool test rules` runs tests/unit/fixtures/promtool/alerts.test.yaml against the PrometheusRule
rendered from the chart; every alert must have a case in which it fires. The dashboard's rollback
queries get generated `promql_expr_test` cases. Needs `promtool` (Debian's `prometheus` package)
and helm; skipped without them, except under CI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
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
