"""Generate the FraudModel CRD from the pydantic models.

`python -m fraudmodel_operator.crd --write` refreshes the committed copies (the CRD
directory and the chart's); a unit test fails when either differs. The output is a *structural*
schema: every `$ref` is inlined, nullable unions collapse to the non-null type
(absent means null), titles are dropped, and every node has a type (or
`x-kubernetes-int-or-string` / `x-kubernetes-preserve-unknown-fields`) and a
description.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from fraudmodel_operator import api

_KEEP = {
    "type",
    "description",
    "default",
    "enum",
    "format",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "maxProperties",
    "items",
    "properties",
    "required",
    "additionalProperties",
    "x-kubernetes-validations",
    "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields",
}


def _is_null(node: dict[str, Any]) -> bool:
    return node.get("type") == "null"


def structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Turn one pydantic JSON-schema node into a structural OpenAPI v3 node."""
    extra = {k: v for k, v in node.items() if k in ("description", "default", "_optional")}
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        return structural({**target, **extra}, defs) | extra
    if node.get("x-kubernetes-int-or-string"):
        rules = {k: node[k] for k in ("maxLength", "x-kubernetes-validations") if k in node}
        return {"x-kubernetes-int-or-string": True} | rules | extra
    union = node.get("anyOf") or node.get("oneOf") or node.get("allOf")
    if union:
        options = [o for o in union if not _is_null(o)]
        if len(options) != 1:
            raise ValueError(f"cannot express union {union!r} as a structural schema")
        rest = {k: v for k, v in node.items() if k not in ("anyOf", "oneOf", "allOf")}
        merged = structural({**options[0], **rest}, defs)
        if merged.get("default", "") is None:
            del merged["default"]
        return merged
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key not in _KEEP:
            continue
        if key == "properties":
            value = {name: structural(prop, defs) for name, prop in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            value = structural(value, defs) if value else {}
        out[key] = value
    if node.get("const") is not None:
        out.setdefault("type", "string")
        out["enum"] = [node["const"]]
    if node.get("_optional"):
        out["_optional"] = True
    if out.get("x-kubernetes-preserve-unknown-fields"):
        out = {"type": "object", "x-kubernetes-preserve-unknown-fields": True} | extra
    elif out.get("additionalProperties") == {}:
        # dict[str, Any]: keep arbitrary values
        del out["additionalProperties"]
        out["x-kubernetes-preserve-unknown-fields"] = True
    if out.get("type") == "object" and "properties" in out:
        _default_nested_objects(out)
    if "default" in out and out["default"] is None:
        del out["default"]
    if out.get("additionalProperties") is False:
        del out["additionalProperties"]  # forbidden in structural schemas; unknown fields are pruned
    for bound in ("Minimum", "Maximum"):
        if isinstance(out.get(f"exclusive{bound}"), int | float) and not isinstance(out.get(f"exclusive{bound}"), bool):
            out[bound.lower()] = out[f"exclusive{bound}"]
            out[f"exclusive{bound}"] = True  # OpenAPI v3.0 form
    return _ordered(out)


_ORDER = ("type", "description", "default", "enum")


def _ordered(node: dict[str, Any]) -> dict[str, Any]:
    first = {k: node[k] for k in _ORDER if k in node}
    return first | {k: v for k, v in node.items() if k not in first}


def _default_nested_objects(node: dict[str, Any]) -> None:
    """Give non-optional nested objects `default: {}` so their own defaults apply when omitted."""
    required = set(node.get("required", ()))
    for name, prop in node["properties"].items():
        if name in required or "default" in prop or prop.get("type") != "object":
            continue
        if "properties" in prop and not prop.get("required") and not prop.get("_optional"):
            prop["default"] = {}


def _mark_optional(node: dict[str, Any]) -> None:
    """Tag `X | None` properties so `_default_nested_objects` leaves them unset."""
    for prop in node.get("properties", {}).values():
        union = prop.get("anyOf")
        if union and any(_is_null(o) for o in union):
            prop["_optional"] = True


def _strip_marks(node: Any) -> None:
    if isinstance(node, dict):
        node.pop("_optional", None)
        for value in node.values():
            _strip_marks(value)
    elif isinstance(node, list):
        for value in node:
            _strip_marks(value)


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural schema of a pydantic model."""
    schema = model.model_json_schema(by_alias=True, mode="validation")
    defs = schema.pop("$defs", {})
    for node in [schema, *defs.values()]:
        _mark_optional(node)
    result = structural(schema, defs)
    _strip_marks(result)
    _explain(result)
    return result


def _explain(node: dict[str, Any]) -> None:
    """Put defaults and formats into the descriptions: `kubectl explain` prints neither."""
    for prop in node.get("properties", {}).values():
        notes = []
        default = prop.get("default")
        said = "default" in prop.get("description", "").lower()
        objects = isinstance(default, dict) or (isinstance(default, list) and any(isinstance(v, dict) for v in default))
        if default not in (None, "", {}, []) and not said and not objects:
            notes.append(f"default {json.dumps(default) if not isinstance(default, str) else default}")
        if prop.get("pattern") == api.DURATION_PATTERN:
            notes.append("a duration such as 30s, 5m or 1h30m")
        if notes:
            text = prop.get("description", "").rstrip()
            end = "." if text.endswith(".") else ""
            prop["description"] = f"{text.removesuffix('.')} ({'; '.join(notes)}){end}".lstrip()
        _explain(prop)
        if isinstance(prop.get("items"), dict):
            _explain(prop["items"])


PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Lifecycle phase."},
    {
        "name": "Stable",
        "type": "string",
        "jsonPath": ".status.stable.version",
        "description": "Version on the stable track.",
    },
    {
        "name": "Canary",
        "type": "string",
        "jsonPath": ".status.canary.version",
        "description": "Version on the canary track.",
    },
    {
        "name": "Shadow",
        "type": "string",
        "jsonPath": ".status.shadow.version",
        "description": "Version scoring mirrored traffic in a shadow phase (answers no client).",
    },
    {
        "name": "Weight",
        "type": "integer",
        "jsonPath": ".status.canary.weight",
        "description": "Percent of traffic on the canary.",
    },
    {
        "name": "Ready",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
        "description": "Ready condition.",
    },
    {
        "name": "Reason",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Degraded")].reason',
        "description": "Why it is degraded, if it is.",
        "priority": 1,
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def crd() -> dict[str, Any]:
    """The FraudModel CustomResourceDefinition."""
    spec = openapi_schema(api.FraudModelSpec)
    spec["description"] = (
        "Desired state of a FraudModel: the model version, how it is served, how new versions roll out."
    )
    status = openapi_schema(api.FraudModelStatus)
    status["description"] = "Observed state, written only by the operator."
    # The API server serves a FraudModel the operator has not seen yet with observedGeneration 0
    # (defaults apply on every read), so kstatus reads it as InProgress rather than Current.
    status["default"] = {"observedGeneration": 0}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{api.PLURAL}.{api.GROUP}",
            "labels": {"app.kubernetes.io/part-of": "fraudmodel-operator"},
        },
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": list(api.SHORT_NAMES),
                "categories": ["all", "riskml"],
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A fraud-detection model served by BentoML, "
                            "released through canary steps judged against the stable version.",
                            "required": ["spec"],
                            "x-kubernetes-validations": [
                                {"rule": rule, "message": message} for rule, message, _ in api.NAME_RULES
                            ],
                            "properties": {
                                "apiVersion": {"type": "string", "description": "API version."},
                                "kind": {"type": "string", "description": "Kind: FraudModel."},
                                # The API server allows nothing more here (not even a description).
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }


def render() -> str:
    header = "# Generated by `python -m fraudmodel_operator.crd`; do not edit by hand.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=120)


def _rows(node: dict[str, Any], path: str) -> list[str]:
    rows = []
    for name, prop in node.get("properties", {}).items():
        here = f"{path}.{name}" if path else name
        kind = prop.get("type", "int-or-string" if prop.get("x-kubernetes-int-or-string") else "")
        if kind == "array":
            kind = f"[]{prop.get('items', {}).get('type', '')}"
        default = f"`{prop['default']}`" if "default" in prop and prop["default"] not in ({}, []) else ""
        allowed = " / ".join(str(v) for v in prop.get("enum", []))
        description = prop.get("description", "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{here}` | {kind} | {default} | {description}{' (' + allowed + ')' if allowed else ''} |")
        rows += _rows(prop, here)
        if isinstance(prop.get("items"), dict):
            rows += _rows(prop["items"], f"{here}[]")
    return rows


def markdown() -> str:
    """The API reference (docs/api.md), generated from the same schema as the CRD."""
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    lines = [
        "# FraudModel API reference",
        "",
        "Generated by `python -m fraudmodel_operator.crd --write` from the same pydantic models as the CRD;",
        "`kubectl explain fraudmodel.spec --recursive` shows the same text in a cluster.",
        "",
        f"Group `{api.GROUP}`, version `{api.VERSION}`, kind `{api.KIND}`, short name `fm`.",
        "",
    ]
    for part in ("spec", "status"):
        lines += [f"## {part}", "", "| field | type | default | description |", "|---|---|---|---|"]
        lines += _rows(schema["properties"][part], part)
        lines.append("")
    return "\n".join(lines)


# The chart ships a byte-identical copy (Helm installs CRDs from the chart's crds/).
TARGETS = ("crds/fraudmodel.yaml", "charts/fraudmodel-operator/crds/fraudmodel.yaml")
API_DOC = "docs/api.md"


def main(argv: list[str] | None = None) -> None:
    """Print the CRD, or with `--write` refresh both committed copies (run from the repository root)."""
    args = sys.argv[1:] if argv is None else argv
    if args == ["--write"]:
        for target in TARGETS:
            Path(target).write_text(render())
        Path(API_DOC).write_text(markdown())
        return
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
