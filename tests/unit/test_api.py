"""The operator's own validation of a FraudModel: every rule the API server checks with CEL, and PromQL.

Each bad input here once reached the cluster and made the API server refuse a child (or
made a rollout that could never succeed); examples/invalid/ holds one manifest per rule,
checked against the real kube-apiserver by the cluster tier.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from fraudmodel_operator.api import SpecError, parse_fraudmodel, parse_quantity, promql_problem


def body(name: str = "fraud", serving: dict[str, Any] | None = None, rollout: dict[str, Any] | None = None) -> Any:
    return {
        "metadata": {"name": name, "namespace": "risk", "uid": "u1"},
        "spec": {
            "model": {"name": "fraud-detector", "version": "v1", "image": "fraud:v1"},
            "serving": serving or {},
            "rollout": rollout or {},
        },
    }


def problems(doc: Any) -> list[str]:
    try:
        parse_fraudmodel(doc)
    except SpecError as error:
        return error.problems
    return []


def assert_rule(doc: Any, field: str, rule: str | None) -> None:
    """`doc` is accepted (rule None), or refused at `field` with a message holding `rule`."""
    found = problems(doc)
    if rule is None:
        assert found == []
    else:
        assert any(p.startswith(field) and rule in p for p in found), found


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", Decimal("0.5")),
        ("1.5", Decimal("1.5")),
        ("1500m", Decimal("1.5")),
        ("40.0", Decimal(40)),
        (2, Decimal(2)),
        ("1Gi", Decimal(2**30)),
        ("1024Mi", Decimal(2**30)),
        ("2e3", Decimal(2000)),
        ("1E", Decimal(10**18)),
        ("1k", Decimal(1000)),
        (".5", Decimal("0.5")),
        ("1.", Decimal(1)),
        ("-1", Decimal(-1)),
        ("100n", Decimal("1e-7")),
    ],
    ids=lambda v: str(v),
)
def test_parse_quantity(text: int | str, value: Decimal) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["half a core", "1.5 cores", "", "1Gb", "e3", "1KiB", "0x10", "1 Gi"])
def test_parse_quantity_refuses_what_the_api_server_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="is not a quantity"):
        parse_quantity(text)


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("fraud", None),
        ("fraud-detector-2", None),
        ("canary-fraud", None),
        ("7-eleven", "must start with a lowercase letter"),
        ("fraud.v2", "must start with a lowercase letter"),  # a valid object name, not a Service name
        ("Fraud", "must start with a lowercase letter"),
        ("fraud-canary", "must not end in -stable or -canary"),
        ("fraud-stable", "must not end in -stable or -canary"),
        ("a" * 57, "at most 56 characters"),
    ],
    ids=lambda v: str(v)[:20],
)
def test_metadata_name_rules(name: str, rule: str | None) -> None:
    assert_rule(body(name), "metadata.name: ", rule)


@pytest.mark.parametrize(
    ("resources", "rule"),
    [
        ({"requests": {"cpu": "1500m"}, "limits": {"cpu": "1.5"}}, None),
        ({"requests": {"memory": "1024Mi"}, "limits": {"memory": "1Gi"}}, None),
        ({"requests": {"cpu": 1, "nvidia.com/gpu": 1}, "limits": {"nvidia.com/gpu": 1}}, None),
        ({"requests": {"cpu": "2"}, "limits": {"cpu": "1500m"}}, "cpu request 2 > limit 1500m"),
        ({"requests": {"memory": "4Gi"}}, "memory request 4Gi > limit 2Gi"),  # limits default to {memory: 2Gi}
        ({"requests": {"cpu": "half a core"}}, "must be a non-negative quantity"),
        ({"requests": {"cpu": "-1"}}, "must be a non-negative quantity"),
        ({"limits": {"cpus": "1"}}, "resource names are cpu, memory"),
    ],
    ids=[
        "same-in-other-units",
        "binary-units",
        "extended",
        "cpu-over",
        "memory-over-default",
        "junk",
        "negative",
        "name",
    ],
)
def test_resources(resources: dict[str, Any], rule: str | None) -> None:
    assert_rule(body(serving={"resources": resources}), "spec.serving.resources", rule)


@pytest.mark.parametrize(
    ("serving", "rule"),
    [
        ({"env": [{"name": "FRAUDMODEL_WORKERS", "value": "2"}]}, None),
        ({"env": [{"name": "TMPDIR", "value": "/var/tmp"}]}, "TMPDIR: env names the operator sets"),
        ({"env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}, "env names must be unique: A"),
        ({"podLabels": {"team": "fraud", "example.com/tier": "1", "empty": ""}}, None),
        ({"podLabels": {"team": "fraud & risk"}}, "label keys must be qualified names"),
        ({"podLabels": {"team": "x" * 64}}, "at most 63 characters"),
        ({"podLabels": {"-team": "fraud"}}, "label keys must be qualified names"),
        ({"nodeSelector": {"a/b/c": "x"}}, "label keys must be qualified names"),
        ({"podAnnotations": {"example.com/note": "any text at all"}}, None),
        ({"podAnnotations": {"not a key": "x"}}, "annotation keys must be qualified names"),
        ({"serviceAccountName": "Fraud_SA"}, "should match pattern"),
        ({"replicas": 0}, "greater than or equal to 1"),
        ({"tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]}, None),
        ({"tolerations": [{"operator": "Exists"}]}, None),
        ({"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]}, "operator Exists must not set a value"),
        ({"tolerations": [{"value": "v"}]}, "without a key must use operator Exists"),
        ({"tolerations": [{"key": "k", "value": "v", "tolerationSeconds": 30}]}, "needs effect NoExecute"),
        ({"tolerations": [{"key": "k", "value": "v w"}]}, "should match pattern"),
    ],
    ids=lambda v: str(v)[:40],
)
def test_serving(serving: dict[str, Any], rule: str | None) -> None:
    assert_rule(body(serving=serving), "spec.serving", rule)


@pytest.mark.parametrize(
    ("rollout", "rule"),
    [
        ({"interval": "1s", "progressDeadline": "2s"}, None),
        ({"interval": "24h", "progressDeadline": "168h"}, None),
        ({"interval": "0s"}, "spec.rollout.interval: must be a duration between 1s and 24h"),
        ({"interval": "1000h", "progressDeadline": "168h"}, "spec.rollout.interval: must be a duration between"),
        ({"interval": "10m", "progressDeadline": "10m"}, "progressDeadline must be longer than interval"),
        ({"progressDeadline": "200h"}, "spec.rollout.progressDeadline: must be a duration between 1s and 168h"),
        ({"analysis": {"window": "0s"}}, "spec.rollout.analysis.window: must be a duration between 1s and 24h"),
        ({"analysis": {"prometheus": {"timeout": "0s"}}}, "timeout: must be a duration between 100ms and 5m"),
        ({"onRollback": {"scaleDownDelay": "0s"}}, None),
        ({"analysis": {"metricLabels": {"model": "app.kubernetes.io/instance"}}}, "should match pattern"),
        ({"analysis": {"metricLabels": {"model": "instance"}}}, None),
    ],
    ids=[
        "shortest",
        "longest",
        "zero",
        "1000h",
        "deadline-equal",
        "deadline-too-long",
        "window",
        "timeout",
        "delay-0",
        "metric-label-not-a-prometheus-label",
        "metric-label",
    ],
)
def test_rollout(rollout: dict[str, Any], rule: str | None) -> None:
    assert_rule(body(rollout=rollout), "", rule)


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ('sum(rate(fraud_dollars_total{track="{{track}}"}[{{window}}]))', None),
        ('histogram_quantile(0.99, sum by (le) (rate(x_bucket{ns="{{namespace}}",m="{{name}}"}[5m])))', None),
        ("sum(rate(x[1m])", "unclosed left parenthesis"),
        ("rate(x[0s])", "duration must be greater than 0"),
        ("sum(rate(x[{{windw}}]))", "query is not valid PromQL"),  # a misspelt placeholder is left as is
        ("up +", "query is not valid PromQL"),
    ],
    ids=["placeholders", "quantile", "unclosed", "zero-range", "unknown-placeholder", "dangling-operator"],
)
def test_promql_problem(query: str, problem: str | None) -> None:
    found = promql_problem(query)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert found.startswith("query is not valid PromQL")
        assert problem in found


def test_broken_custom_query_is_an_invalid_spec_naming_the_check() -> None:
    custom = [{"name": "fraud-dollars", "query": "sum(rate(x[1m])", "max": 10}]
    found = problems(body(rollout={"analysis": {"custom": custom}}))
    assert found == ["spec.rollout.analysis.custom[0].query: query is not valid PromQL: unclosed left parenthesis"]
