"""The committed CRD is generated from the pydantic models and is a structural schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from fraudmodel_operator import api, crd

CRD_FILE = Path(__file__).parents[2] / "crds" / "fraudmodel.yaml"
FORBIDDEN = ("$ref", "anyOf", "allOf", "oneOf", "$defs", "title", "const")


def schema() -> dict[str, Any]:
    doc = yaml.safe_load(CRD_FILE.read_text())
    result: dict[str, Any] = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return result


@pytest.mark.parametrize("target", crd.TARGETS)
def test_committed_crd_is_the_generated_one(target: str) -> None:
    path = Path(__file__).parents[2] / target
    assert path.read_text() == crd.render(), f"{target} is stale: run `python -m fraudmodel_operator.crd --write`"


def test_api_reference_is_generated() -> None:
    path = Path(__file__).parents[2] / crd.API_DOC
    assert path.read_text() == crd.markdown(), "docs/api.md is stale: run `python -m fraudmodel_operator.crd --write`"
    assert "`spec.rollout.analysis.checks.scoreDrift.maxPsi`" in path.read_text()


def walk(node: dict[str, Any], path: str) -> list[str]:
    problems = [f"{path}: has {key}" for key in FORBIDDEN if key in node]
    if node.get("additionalProperties") is False:
        problems.append(f"{path}: additionalProperties: false is not structural")
    typed = "type" in node or node.get("x-kubernetes-int-or-string")
    if not typed:
        problems.append(f"{path}: no type")
    for name, prop in node.get("properties", {}).items():
        if not prop.get("description") and f"{path}.{name}" != ".metadata":  # metadata: only `type` allowed
            problems.append(f"{path}.{name}: no description")
        problems += walk(prop, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        problems += walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        problems += walk(node["additionalProperties"], f"{path}{{}}")
    return problems


def test_schema_is_structural_and_documented() -> None:
    assert walk(schema(), "") == []


def test_walk_catches_a_ref_and_a_missing_description() -> None:
    bad = {"type": "object", "properties": {"a": {"$ref": "#/x"}, "b": {"type": "string"}}}
    problems = walk(bad, "")
    assert ".a: has $ref" in problems
    assert ".a: no type" in problems
    assert ".b: no description" in problems


def rules(node: dict[str, Any]) -> list[str]:
    found = [r["rule"] for r in node.get("x-kubernetes-validations", [])]
    for child in node.get("properties", {}).values():
        found += rules(child)
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            found += rules(node[key])
    return found


@pytest.mark.parametrize(
    "fragment",
    [
        "self.minReplicas <= self.maxReplicas",
        "isSorted()",
        "has(self.replicaRatio) ? 1 : 0",
        "minRatio <= self.maxRatio",
        "self.metadata.name.matches('^[a-z]",
        "!self.metadata.name.endsWith('-canary')",
        "!quantity(self).isLessThan(quantity('0'))",
        "compareTo(quantity(string(self.limits[k]))) <= 0",
        "self.env.exists_one(x, x.name == e.name)",
        "self.operator != 'Exists'",
        "duration(self.interval) < duration(self.progressDeadline)",
        "duration(self) >= duration('1s')",
    ],
    ids=[
        "replicas",
        "steps-ascending",
        "one-router",
        "flag-rate-bounds",
        "name-dns-1035",
        "name-not-a-child",
        "quantity",
        "requests-le-limits",
        "env-unique",
        "toleration-exists",
        "deadline-after-interval",
        "duration-bounds",
    ],
)
def test_cel_rules_present(fragment: str) -> None:
    assert any(fragment in rule for rule in rules(schema()))


def test_defaults_enums_bounds_and_subresources() -> None:
    doc = yaml.safe_load(CRD_FILE.read_text())
    version = doc["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    spec = schema()["properties"]["spec"]["properties"]
    rollout = spec["rollout"]["properties"]
    assert rollout["strategy"]["enum"] == ["Canary", "Immediate"]
    assert rollout["strategy"]["default"] == "Canary"
    assert rollout["trafficRouting"]["default"] == {"replicaRatio": {}}
    assert rollout["steps"]["items"]["maximum"] == 100
    threshold = spec["model"]["properties"]["threshold"]
    assert (threshold["minimum"], threshold["maximum"], threshold["exclusiveMaximum"]) == (0.0, 1.0, True)
    assert "default" not in spec["serving"]["properties"]["autoscaling"], "autoscaling must stay opt-in"
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Phase"] == ".status.phase"
    assert columns["Stable"] == ".status.stable.version"
    assert columns["Canary"] == ".status.canary.version"
    assert columns["Weight"] == ".status.canary.weight"
    assert "Age" in columns
    assert doc["spec"]["names"]["shortNames"] == ["fm"]


def properties(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = []
    for name, prop in node.get("properties", {}).items():
        here = f"{path}.{name}" if path else name
        found.append((here, prop))
        found += properties(prop, here)
        if isinstance(prop.get("items"), dict):
            found += properties(prop["items"], f"{here}[]")
    return found


def test_kubectl_explain_shows_defaults_and_formats() -> None:
    """kubectl explain prints descriptions, not schema defaults or patterns: the descriptions say them."""
    spec = schema()["properties"]["spec"]
    for path, prop in properties(spec, "spec"):
        description = prop["description"]
        default = prop.get("default")
        if default not in (None, "", {}, []) and not isinstance(default, dict | list):
            assert "default" in description.lower(), f"{path}: {description!r} does not give its default"
        if prop.get("pattern") == api.DURATION_PATTERN:
            assert "a duration such as 30s, 5m or 1h30m" in description, f"{path}: {description!r}"
    interval = dict(properties(spec, "spec"))["spec.rollout.interval"]
    assert (
        interval["description"]
        == "Time at each step before its analysis (default 1m; a duration such as 30s, 5m or 1h30m)."
    )


def test_gateway_parent_refs_are_typed() -> None:
    refs = dict(properties(schema()["properties"]["spec"], "spec"))["spec.rollout.trafficRouting.gatewayAPI.parentRefs"]
    assert refs["items"]["required"] == ["name"]
    assert {"name", "namespace", "group", "kind", "sectionName", "port"} == set(refs["items"]["properties"])
    routing = {"httpRoute": "r", "parentRefs": [{"name": "gw", "nmespace": "gateways"}]}
    with pytest.raises(ValidationError, match="nmespace"):
        api.GatewayAPIRouting.model_validate(routing)
