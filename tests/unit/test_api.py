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


# (id, FraudModel body, where the problem is reported, what it says; None: accepted). The cluster
# tier sends every case to the real kube-apiserver: it must accept and refuse the same ones.
RULE_CASES: list[tuple[str, Any, str, str | None]] = [
    ("name", body("fraud"), "", None),
    ("name-with-digits", body("fraud-detector-2"), "", None),
    ("name-canary-prefix", body("canary-fraud"), "", None),
    ("name-digit-first", body("7-eleven"), "metadata.name: ", "must start with a lowercase letter"),
    ("name-dotted", body("fraud.v2"), "metadata.name: ", "must start with a lowercase letter"),  # no Service name
    ("name-upper", body("Fraud"), "metadata.name: ", "must start with a lowercase letter"),
    ("name-canary", body("fraud-canary"), "metadata.name: ", "must not end in -stable, -canary or -shadow"),
    ("name-stable", body("fraud-stable"), "metadata.name: ", "must not end in -stable, -canary or -shadow"),
    ("name-shadow", body("fraud-shadow"), "metadata.name: ", "must not end in -stable, -canary or -shadow"),
    ("name-long", body("a" * 57), "metadata.name: ", "at most 56 characters"),
    *(
        (f"resources-{id_}", body(serving={"resources": resources}), "spec.serving.resources", rule)
        for id_, resources, rule in [
            ("other-units", {"requests": {"cpu": "1500m"}, "limits": {"cpu": "1.5"}}, None),
            ("binary-units", {"requests": {"memory": "1024Mi"}, "limits": {"memory": "1Gi"}}, None),
            ("extended", {"requests": {"cpu": 1, "nvidia.com/gpu": 1}, "limits": {"nvidia.com/gpu": 1}}, None),
            ("cpu-over", {"requests": {"cpu": "2"}, "limits": {"cpu": "1500m"}}, "cpu request 2 > limit 1500m"),
            ("memory-over-default", {"requests": {"memory": "4Gi"}}, "memory request 4Gi > limit 2Gi"),
            ("junk", {"requests": {"cpu": "half a core"}}, "must be a non-negative quantity"),
            ("negative", {"requests": {"cpu": "-1"}}, "must be a non-negative quantity"),
            ("name", {"limits": {"cpus": "1"}}, "resource names are cpu, memory"),
        ]
    ),
    *(
        (f"serving-{id_}", body(serving=serving), "spec.serving", rule)
        for id_, serving, rule in [
            ("env", {"env": [{"name": "FRAUDMODEL_WORKERS", "value": "2"}]}, None),
            ("env-tmpdir", {"env": [{"name": "TMPDIR", "value": "/var/tmp"}]}, "TMPDIR: env names the operator sets"),
            ("env-twice", {"env": [{"name": "A", "value": "1"}, {"name": "A"}]}, "env names must be unique: A"),
            ("labels", {"podLabels": {"team": "fraud", "example.com/tier": "1", "empty": ""}}, None),
            ("label-value", {"podLabels": {"team": "fraud & risk"}}, "label keys must be qualified names"),
            ("label-value-long", {"podLabels": {"team": "x" * 64}}, "at most 63 characters"),
            ("label-key", {"podLabels": {"-team": "fraud"}}, "label keys must be qualified names"),
            ("node-selector-key", {"nodeSelector": {"a/b/c": "x"}}, "label keys must be qualified names"),
            ("annotations", {"podAnnotations": {"example.com/note": "any text at all"}}, None),
            ("annotation-key", {"podAnnotations": {"not a key": "x"}}, "annotation keys must be qualified names"),
            ("service-account", {"serviceAccountName": "Fraud_SA"}, "should match pattern"),
            ("replicas-0", {"replicas": 0}, "greater than or equal to 1"),
            ("toleration", {"tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}]}, None),
            ("toleration-all", {"tolerations": [{"operator": "Exists"}]}, None),
            (
                "toleration-exists-value",
                {"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]},
                "operator Exists must not set a value",
            ),
            ("toleration-no-key", {"tolerations": [{"value": "v"}]}, "without a key must use operator Exists"),
            (
                "toleration-seconds",
                {"tolerations": [{"key": "k", "value": "v", "tolerationSeconds": 30}]},
                "needs effect NoExecute",
            ),
            ("toleration-value", {"tolerations": [{"key": "k", "value": "v w"}]}, "should match pattern"),
        ]
    ),
    *(
        (f"rollout-{id_}", body(rollout=rollout), "spec.rollout", rule)
        for id_, rollout, rule in [
            ("shortest", {"interval": "1s", "progressDeadline": "2s"}, None),
            ("longest", {"interval": "24h", "progressDeadline": "168h"}, None),
            ("interval-0", {"interval": "0s"}, "spec.rollout.interval: must be a duration between 1s and 24h"),
            ("interval-1000h", {"interval": "1000h", "progressDeadline": "168h"}, "interval: must be a duration"),
            ("deadline-equal", {"interval": "10m", "progressDeadline": "10m"}, "must be longer than interval"),
            ("deadline-long", {"progressDeadline": "200h"}, "progressDeadline: must be a duration between 1s and 168h"),
            ("window-0", {"analysis": {"window": "0s"}}, "analysis.window: must be a duration between 1s and 24h"),
            ("timeout-0", {"analysis": {"prometheus": {"timeout": "0s"}}}, "must be a duration between 100ms and 5m"),
            ("scale-down-0", {"onRollback": {"scaleDownDelay": "0s"}}, None),
            ("metric-label", {"analysis": {"metricLabels": {"model": "instance"}}}, None),
            ("metric-label-dotted", {"analysis": {"metricLabels": {"model": "a.b/c"}}}, "should match pattern"),
            ("sticky-field", {"stickyBy": {"field": "account_id"}}, None),
            ("sticky-header", {"stickyBy": {"header": "X-Account-Id"}}, None),
            (
                "sticky-both",
                {"stickyBy": {"field": "card_id", "header": "X-Card"}},
                "stickyBy: exactly one of field, header must be set",
            ),
            ("sticky-neither", {"stickyBy": {}}, "stickyBy: exactly one of field, header must be set"),
            ("sticky-unknown-field", {"stickyBy": {"field": "email"}}, "'account_id' or 'card_id'"),
            ("sticky-header-space", {"stickyBy": {"header": "X Account"}}, "should match pattern"),
            (
                "sticky-gateway",
                {"stickyBy": {"header": "X-Account-Id"}, "trafficRouting": {"istio": {"virtualService": "vs"}}},
                "stickyBy needs trafficRouting.replicaRatio",
            ),
            ("shadow-defaults", {"shadow": {}}, None),
            (
                "shadow-full",
                {
                    "shadow": {
                        "duration": "1h",
                        "minPairedSamples": 5000,
                        "sample": 1,
                        "then": "Promote",
                        "gates": {"flipRate": {"maxRate": 0.01}, "flagRateRatio": {"minRatio": 0.9, "maxRatio": 1.1}},
                    }
                },
                None,
            ),
            ("shadow-immediate", {"strategy": "Immediate", "shadow": {}}, "rollout.shadow needs strategy Canary"),
            ("shadow-duration-short", {"shadow": {"duration": "30s"}}, "must be a duration between 1m and 168h"),
            ("shadow-sample-0", {"shadow": {"sample": 0}}, "greater than 0"),
            ("shadow-then", {"shadow": {"then": "Wait"}}, "'Canary' or 'Promote'"),
            (
                "shadow-ratio-bounds",
                {"shadow": {"gates": {"flagRateRatio": {"minRatio": 2, "maxRatio": 1}}}},
                "minRatio must be <= maxRatio",
            ),
        ]
    ),
]


@pytest.mark.parametrize(("doc", "field", "rule"), [c[1:] for c in RULE_CASES], ids=[c[0] for c in RULE_CASES])
def test_rule(doc: Any, field: str, rule: str | None) -> None:
    assert_rule(doc, field, rule)


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
