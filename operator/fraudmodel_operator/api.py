"""The FraudModel API: pydantic models are the single source of the CRD schema.

Every field carries a description (it becomes `kubectl explain` text). Cross-field
rules are written twice on purpose: as CEL (`x-kubernetes-validations`, enforced by
the API server) and as pydantic validators (enforced by the operator and the unit
tests); the cluster tier proves both agree on the examples.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from itertools import pairwise
from typing import Annotated, Any, Literal

import promql_parser
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

GROUP = "serving.riskml.io"
VERSION = "v1alpha1"
KIND = "FraudModel"
PLURAL = "fraudmodels"
SINGULAR = "fraudmodel"
SHORT_NAMES = ("fm",)

DURATION_PATTERN = r"^([0-9]+(ms|s|m|h))+$"
_DURATION_PART = re.compile(r"([0-9]+)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
HISTORY_LIMIT = 10
# Children are named `<name>`, `<name>-stable` and `<name>-canary`; Services need DNS-1035
# labels (63 characters, starting with a letter). These rules are the root's CEL rules
# (crd.py) and the operator's own check of metadata.name, with the same messages.
MAX_NAME_LENGTH = 56
CHILD_SUFFIXES = ("-stable", "-canary", "-shadow")
NAME_RULES: tuple[tuple[str, str, Callable[[str], bool]], ...] = (
    (
        f"self.metadata.name.size() <= {MAX_NAME_LENGTH}",
        f"metadata.name must be at most {MAX_NAME_LENGTH} characters (child objects append -stable/-canary/-shadow)",
        lambda name: len(name) <= MAX_NAME_LENGTH,
    ),
    (
        "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
        "metadata.name must start with a lowercase letter and hold only lowercase letters, digits and '-' "
        "(a DNS-1035 label): it names the FraudModel's Services",
        lambda name: re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) is not None,
    ),
    (
        " && ".join(f"!self.metadata.name.endsWith('{suffix}')" for suffix in CHILD_SUFFIXES),
        "metadata.name must not end in -stable, -canary or -shadow: FraudModel `fraud` names its own Services "
        "fraud-stable and fraud-canary, so a FraudModel `fraud-canary` would claim the same Service",
        lambda name: not name.endswith(CHILD_SUFFIXES),
    ),
)

# Manual controls live in annotations, not in `spec`, so a GitOps tool that owns
# `spec` never sees drift when a human pauses, promotes, aborts or retries.
ANNOTATION_PREFIX = GROUP + "/"
PAUSE_ANNOTATION = ANNOTATION_PREFIX + "pause"
PROMOTE_ANNOTATION = ANNOTATION_PREFIX + "promote"
ABORT_ANNOTATION = ANNOTATION_PREFIX + "abort"
RETRY_ANNOTATION = ANNOTATION_PREFIX + "retry"
RESUME_ANNOTATION = ANNOTATION_PREFIX + "resume"


def parse_duration(value: str) -> float:
    """Seconds in a duration such as `90s`, `1m30s` or `250ms`."""
    if not re.fullmatch(DURATION_PATTERN, value):
        raise ValueError(f"invalid duration {value!r}: use e.g. 30s, 5m, 1h30m, 500ms")
    return sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(value))


def _cel(*rules: tuple[str, str]) -> dict[str, Any]:
    return {"x-kubernetes-validations": [{"rule": r, "message": m} for r, m in rules]}


@dataclass(frozen=True)
class Rule:
    """One rule checked twice with the same message: by the API server (CEL) and by the operator.

    Used as `Annotated[T, Rule(...)]`: the CEL rule lands on the field's schema node, the
    Python check runs after pydantic's own validation of the field.
    """

    cel: str
    message: str
    check: Callable[[Any], bool]

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        def validate(value: Any) -> Any:
            if not self.check(value):
                raise ValueError(self.message)
            return value

        return core_schema.no_info_after_validator_function(validate, handler(source))

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        node = handler(schema)
        node.setdefault("x-kubernetes-validations", []).append({"rule": self.cel, "message": self.message})
        return node


def duration_between(low: str, high: str) -> Rule:
    """A duration field bounded on both sides (`0s` hot-loops a rollout, `1000h` never ends)."""
    lo, hi = parse_duration(low), parse_duration(high)
    return Rule(
        f"duration(self) >= duration('{low}') && duration(self) <= duration('{high}')",
        f"must be a duration between {low} and {high}",
        lambda value: lo <= parse_duration(value) <= hi,
    )


Duration = Annotated[str, Field(pattern=DURATION_PATTERN, max_length=32)]
Ratio = Annotated[float, Field(ge=0.0, le=1.0)]

# ---------------------------------------------------------------- quantities (as the API server reads them)

_QUANTITY = re.compile(r"([+-]?)([0-9]+(?:\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+|Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?")
_SUFFIX = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    **{s: Decimal(1024) ** (i + 1) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
}


def parse_quantity(value: int | str) -> Decimal:
    """The value of a Kubernetes quantity (`500m`, `1.5`, `1Gi`, `2e3`, `4`); ValueError if it is none."""
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)
    match = _QUANTITY.fullmatch(str(value))
    if match is None:
        raise ValueError(f"{value!r} is not a quantity")
    sign, number, suffix = match.groups()
    try:
        if suffix and suffix[0] in "eE" and len(suffix) > 1:
            magnitude = Decimal(number) * Decimal(10) ** int(suffix[1:])
        else:
            magnitude = Decimal(number) * _SUFFIX[suffix or ""]
    except (InvalidOperation, OverflowError):
        raise ValueError(f"{value!r} is not a quantity") from None
    return -magnitude if sign == "-" else magnitude


MAX_QUANTITY_LENGTH = 64  # also bounds the API server's cost estimate of the CEL rules reading quantities


def _is_quantity(value: int | str) -> bool:
    try:
        return len(str(value)) <= MAX_QUANTITY_LENGTH and parse_quantity(value) >= 0
    except ValueError:
        return False


QUANTITY_MESSAGE = "must be a non-negative quantity such as 500m, 1.5, 2, 1Gi or 512Mi"
Quantity = Annotated[
    int | str,
    Field(json_schema_extra={"x-kubernetes-int-or-string": True, "maxLength": MAX_QUANTITY_LENGTH}),
    Rule(
        "type(self) == int ? self >= 0 : isQuantity(self) && !quantity(self).isLessThan(quantity('0'))",
        QUANTITY_MESSAGE,
        _is_quantity,
    ),
]

# ---------------------------------------------------------------- labels and names (as the API server checks them)

# Written without backslashes, so the same text is a valid CEL string literal.
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
QUALIFIED_NAME_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"  # an optional DNS prefix, '/'
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"  # the name
)
MAX_QUALIFIED_NAME = 253 + 1 + 63  # DNS prefix, '/', name


def _qualified_name(key: str) -> bool:
    return len(key) <= MAX_QUALIFIED_NAME and re.fullmatch(QUALIFIED_NAME_PATTERN, key) is not None


def _label_value(value: str) -> bool:
    return re.fullmatch(LABEL_VALUE_PATTERN, value) is not None


_KEY_CEL = f"k.size() <= {MAX_QUALIFIED_NAME} && k.matches('{QUALIFIED_NAME_PATTERN}')"
LABELS_MESSAGE = (
    "label keys must be qualified names (an optional DNS prefix and '/', then at most 63 letters, digits, '-', "
    "'_' or '.', starting and ending with a letter or digit) and values at most 63 such characters"
)
ANNOTATIONS_MESSAGE = (
    "annotation keys must be qualified names (an optional DNS prefix and '/', then at most 63 letters, digits, "
    "'-', '_' or '.', starting and ending with a letter or digit)"
)
Labels = Annotated[
    dict[str, Annotated[str, Field(max_length=63)]],  # bounds the cost of the CEL rule below
    Field(max_length=64),
    Rule(
        f"self.all(k, {_KEY_CEL} && self[k].matches('{LABEL_VALUE_PATTERN}'))",
        LABELS_MESSAGE,
        lambda labels: all(_qualified_name(k) and _label_value(v) for k, v in labels.items()),
    ),
]
Annotations = Annotated[
    dict[str, str],
    Field(max_length=64),
    Rule(f"self.all(k, {_KEY_CEL})", ANNOTATIONS_MESSAGE, lambda annotations: all(map(_qualified_name, annotations))),
]
LabelValue = Annotated[str, Field(pattern=r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")]
DNSLabel = Annotated[str, Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", max_length=63)]


class _Model(BaseModel):
    """Base: camelCase on the wire, unknown fields rejected, validation by name or alias."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
    )


# ---------------------------------------------------------------- spec.model


class ModelSpec(_Model):
    """Which model version to serve."""

    name: DNSLabel = Field(description="Model name, e.g. `bot-detector`; a DNS label.")
    version: LabelValue = Field(
        max_length=63,
        description="Model version; a change starts a rollout. Must be a valid label value.",
    )
    image: str = Field(
        min_length=1,
        max_length=512,
        pattern=r"^[^\s]+$",
        description="BentoML container image serving this version (`bentoml containerize`).",
    )
    uri: str | None = Field(
        default=None,
        max_length=1024,
        description="Optional exported BentoML model to serve (`bentoml models export`: a `.bentomodel` "
        "archive, `.tar.gz`, `.zip` or folder), as a `file://` URL or path inside the container, or a "
        "remote store the image can read (`s3://bucket/models/bot-v7.bentomodel` with s3fs and AWS "
        "credentials, `gs://` with gcsfs, `https://`). Passed as FRAUDMODEL_MODEL_URI; it wins over "
        "`tag`, which the archive must then hold. The pod is Ready only if the loaded model's version is "
        "`version`, its feature schema `featureSchemaVersion`, and it passed its release gate.",
    )
    tag: str | None = Field(
        default=None,
        max_length=256,
        description="Optional BentoML model tag (`name:version`) in the image's model store, passed as "
        "FRAUDMODEL_MODEL_TAG; without `uri` or `tag`, the model the image's bento was built with. "
        "Never `latest` by default.",
    )
    threshold: float | None = Field(
        default=None,
        gt=0.0,
        lt=1.0,
        description="Decision threshold: scores at or above it are flagged. Unset: the threshold chosen "
        "at training and stored in the model (cost-based or fixed false-positive rate; see its model card).",
    )
    feature_schema_version: str = Field(
        default="v1",
        max_length=32,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="Version of the feature schema the model validates requests against; "
        "passed to the container as FRAUDMODEL_FEATURE_SCHEMA.",
    )


# ---------------------------------------------------------------- spec.serving


RESOURCE_NAME_MESSAGE = (
    "resource names are cpu, memory, ephemeral-storage, hugepages-<size> or a qualified extended resource "
    "such as nvidia.com/gpu"
)
REQUESTS_LE_LIMITS_MESSAGE = (
    "a request must not exceed the limit of the same resource (limits default to {memory: 2Gi} when not set)"
)


def _resource_name(name: str) -> bool:
    return name in ("cpu", "memory", "ephemeral-storage") or name.startswith("hugepages-") or "/" in name


ResourceList = Annotated[
    dict[str, Quantity],
    Field(max_length=16),
    Rule(
        "self.all(k, k in ['cpu', 'memory', 'ephemeral-storage'] || k.startsWith('hugepages-') || k.contains('/'))",
        RESOURCE_NAME_MESSAGE,
        lambda resources: all(map(_resource_name, resources)),
    ),
]


class ResourceRequirements(_Model):
    """Compute resources of each serving container."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "!has(self.requests) || !has(self.limits) || self.requests.all(k, !(k in self.limits)"
                " || !isQuantity(string(self.requests[k])) || !isQuantity(string(self.limits[k]))"
                " || quantity(string(self.requests[k])).compareTo(quantity(string(self.limits[k]))) <= 0)",
                REQUESTS_LE_LIMITS_MESSAGE,
            ),
        )
    )

    requests: ResourceList = Field(
        default_factory=lambda: dict[str, int | str](cpu="500m", memory="1Gi"),
        description="Minimum resources, e.g. `{cpu: 500m, memory: 1Gi}`.",
        json_schema_extra={"default": {"cpu": "500m", "memory": "1Gi"}},
    )
    limits: ResourceList = Field(
        default_factory=lambda: dict[str, int | str](memory="2Gi"),
        description="Maximum resources, e.g. `{memory: 2Gi}`; each request must be at most its limit.",
        json_schema_extra={"default": {"memory": "2Gi"}},
    )

    @model_validator(mode="after")
    def _requests_le_limits(self) -> ResourceRequirements:
        for name, request in self.requests.items():
            if name in self.limits and parse_quantity(request) > parse_quantity(self.limits[name]):
                raise ValueError(f"{REQUESTS_LE_LIMITS_MESSAGE}: {name} request {request} > limit {self.limits[name]}")
        return self


class Autoscaling(_Model):
    """A HorizontalPodAutoscaler per track instead of fixed replicas."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas",
                "minReplicas must be <= maxReplicas",
            ),
        )
    )

    min_replicas: int = Field(default=2, ge=1, le=1000, description="Minimum replicas of the stable track.")
    max_replicas: int = Field(default=10, ge=1, le=1000, description="Maximum replicas of each track.")
    target_cpu_utilization: int = Field(
        default=70, ge=1, le=100, description="Average CPU utilisation (% of requests) to keep."
    )
    target_requests_per_second: float | None = Field(
        default=None,
        gt=0,
        description="Optional average requests per second per pod (Pods metric "
        "`bentoml_service_request_per_second`, needs a custom metrics adapter).",
    )

    @model_validator(mode="after")
    def _min_le_max(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError("minReplicas must be <= maxReplicas")
        return self


class EnvVar(_Model):
    """An environment variable of the serving container."""

    name: str = Field(min_length=1, max_length=256, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="Variable name.")
    value: str = Field(default="", max_length=32768, description="Variable value.")


TOLERATION_RULES = (
    (
        "!has(self.value) || self.value == '' || self.operator != 'Exists'",
        "a toleration with operator Exists must not set a value",
    ),
    (
        "(has(self.key) && self.key != '') || self.operator == 'Exists'",
        "a toleration without a key must use operator Exists",
    ),
    (
        "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
        "tolerationSeconds needs effect NoExecute",
    ),
)


class Toleration(_Model):
    """A pod toleration, as in the core API."""

    model_config = ConfigDict(json_schema_extra=_cel(*TOLERATION_RULES))

    key: str | None = Field(
        default=None,
        max_length=MAX_QUALIFIED_NAME,
        pattern=QUALIFIED_NAME_PATTERN,
        description="Taint key; empty with Exists matches all.",
    )
    operator: Literal["Exists", "Equal"] = Field(default="Equal", description="Exists or Equal.")
    value: str | None = Field(
        default=None, max_length=63, pattern=LABEL_VALUE_PATTERN, description="Taint value (Equal only)."
    )
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all."
    )
    toleration_seconds: int | None = Field(
        default=None, ge=0, description="How long to tolerate NoExecute (needs effect NoExecute)."
    )

    @model_validator(mode="after")
    def _as_the_core_api(self) -> Toleration:
        if self.value and self.operator == "Exists":
            raise ValueError(TOLERATION_RULES[0][1])
        if not self.key and self.operator != "Exists":
            raise ValueError(TOLERATION_RULES[1][1])
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError(TOLERATION_RULES[2][1])
        return self


class TopologySpread(_Model):
    """A topologySpreadConstraint for each track's pods (the operator adds the track's label selector)."""

    topology_key: str = Field(
        max_length=316, description="Node label whose values are the domains, e.g. topology.kubernetes.io/zone."
    )
    max_skew: int = Field(default=1, ge=1, description="Largest allowed difference in pods between two domains.")
    when_unsatisfiable: Literal["ScheduleAnyway", "DoNotSchedule"] = Field(
        default="ScheduleAnyway", description="ScheduleAnyway (a preference) or DoNotSchedule (a hard rule)."
    )


DEFAULT_TOPOLOGY_SPREAD = (
    TopologySpread(topology_key="kubernetes.io/hostname"),
    TopologySpread(topology_key="topology.kubernetes.io/zone"),
)


# The user and group `bentoml containerize` creates in a bento image (BentoML's
# BENTO_UID_GID) and ends the image with (`USER bentoml`, a name): the kubelet
# refuses a name with runAsNonRoot, so pods run with these numeric ids.
BENTO_UID = 1034
BENTO_GID = 1034
MAX_ID = 2**31 - 1


class PodSecurity(_Model):
    """Numeric user and group of the model pods; the rest of the restricted profile is fixed."""

    run_as_user: int = Field(
        default=BENTO_UID,
        ge=1,
        le=MAX_ID,
        description="UID the model container runs as; not 0 (Pod Security restricted). "
        "Default 1034, the bentoml user of images built by `bentoml containerize`.",
    )
    run_as_group: int = Field(
        default=BENTO_GID, ge=0, le=MAX_ID, description="Primary GID of the model container. Default 1034."
    )
    fs_group: int | None = Field(
        default=None, ge=0, le=MAX_ID, description="Group that owns the pod's volumes (default: none)."
    )


# The environment the operator sets on every model container from the spec, which a
# FraudModel's serving.env must not override, and the bento's fault injection, which
# only tests and game days use. The bento's tuning knobs (FRAUDMODEL_WORKERS,
# FRAUDMODEL_ADAPTIVE_BATCHING, FRAUDMODEL_MAX_INFLIGHT, FRAUDMODEL_TRACING, ...) are free.
OPERATOR_ENV = (
    "TMPDIR",
    "FRAUDMODEL_NAME",
    "FRAUDMODEL_VERSION",
    "FRAUDMODEL_TRACK",
    "FRAUDMODEL_THRESHOLD",
    "FRAUDMODEL_FEATURE_SCHEMA",
    "FRAUDMODEL_MODEL_TAG",
    "FRAUDMODEL_MODEL_URI",
    "FRAUDMODEL_ROUTING_FILE",  # the stable edge's routing config (edge_routing.py)
    "BENTOML_PORT",
)
FAULT_ENV_PREFIX = "FRAUDMODEL_FAULT_"
RESERVED_ENV_MESSAGE = (
    "env names the operator sets from the spec (model name, version, track, threshold, "
    "feature schema, model tag or URI, port, TMPDIR) and FRAUDMODEL_FAULT_* are reserved"
)
UNIQUE_ENV_MESSAGE = "env names must be unique"


class ServingSpec(_Model):
    """How each track's pods run."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "!has(self.env) || self.env.all(e, !(e.name in ["
                + ", ".join(f"'{name}'" for name in OPERATOR_ENV)
                + f"]) && !e.name.startsWith('{FAULT_ENV_PREFIX}'))",
                RESERVED_ENV_MESSAGE,
            ),
            ("!has(self.env) || self.env.all(e, self.env.exists_one(x, x.name == e.name))", UNIQUE_ENV_MESSAGE),
        )
    )

    port: int = Field(default=3000, ge=1024, le=65535, description="BentoML HTTP port (API, probes, /metrics).")
    replicas: int = Field(
        default=2, ge=1, le=1000, description="Replicas of the stable track when autoscaling is not set."
    )
    autoscaling: Autoscaling | None = Field(default=None, description="Per-track HPA; when set, `replicas` is ignored.")
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements, description="Container resources.")
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=64,
        description="Extra environment variables, e.g. the bento's FRAUDMODEL_WORKERS, FRAUDMODEL_ADAPTIVE_BATCHING "
        "or FRAUDMODEL_TRACING. Those the operator sets from the spec, and FRAUDMODEL_FAULT_*, are reserved.",
    )
    pod_annotations: Annotations = Field(default_factory=dict, description="Extra pod annotations.")
    pod_labels: Labels = Field(
        default_factory=dict, description="Extra pod labels (the operator's own labels take precedence)."
    )
    node_selector: Labels = Field(default_factory=dict, description="Pod node selector (label keys and values).")
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32, description="Pod tolerations.")
    topology_spread: list[TopologySpread] = Field(
        default_factory=lambda: list(DEFAULT_TOPOLOGY_SPREAD),
        max_length=8,
        description="How each track's pods spread over nodes and zones; default: over nodes "
        "(kubernetes.io/hostname) and zones (topology.kubernetes.io/zone), maxSkew 1, ScheduleAnyway. "
        "An empty list spreads nothing.",
        json_schema_extra={"default": [{"topologyKey": t.topology_key} for t in DEFAULT_TOPOLOGY_SPREAD]},
    )
    service_account_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="ServiceAccount of the pods (default: the namespace's).",
    )
    automount_service_account_token: bool = Field(
        default=False, description="Mount the ServiceAccount token; off unless the model needs the API."
    )
    security_context: PodSecurity = Field(
        default_factory=PodSecurity,
        description="User and group ids of the model pods (must match the image's user); the pods are "
        "otherwise always non-root, read-only, with all capabilities dropped and seccomp RuntimeDefault.",
    )

    @field_validator("env")
    @classmethod
    def _reserved_env(cls, env: list[EnvVar]) -> list[EnvVar]:
        for var in env:
            if var.name in OPERATOR_ENV or var.name.startswith(FAULT_ENV_PREFIX):
                raise ValueError(f"{var.name}: {RESERVED_ENV_MESSAGE}")
        names = [var.name for var in env]
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"{UNIQUE_ENV_MESSAGE}: {', '.join(twice)} set more than once")
        return env


# ---------------------------------------------------------------- spec.rollout


class Strategy(StrEnum):
    CANARY = "Canary"
    IMMEDIATE = "Immediate"


class ReplicaRatioRouting(_Model):
    """Split traffic by replica counts behind the shared Service (works on any cluster)."""


class ParentRef(_Model):
    """A parent (usually a Gateway) of the HTTPRoute, as Gateway API's ParentReference."""

    name: str = Field(min_length=1, max_length=253, description="Name of the parent.")
    namespace: str | None = Field(default=None, max_length=63, description="Its namespace (default: the route's).")
    group: str | None = Field(
        default=None, max_length=253, description="Its API group (default: gateway.networking.k8s.io)."
    )
    kind: str | None = Field(default=None, max_length=63, description="Its kind (default: Gateway).")
    section_name: str | None = Field(default=None, max_length=253, description="A listener of the Gateway.")
    port: int | None = Field(default=None, ge=1, le=65535, description="A port of the Gateway.")


class GatewayAPIRouting(_Model):
    """Weights on the backendRefs of a Gateway API HTTPRoute."""

    http_route: DNSLabel = Field(description="Name of the HTTPRoute (same namespace) whose rule the operator owns.")
    parent_refs: list[ParentRef] = Field(
        default_factory=list,
        max_length=8,
        description="Gateways the route attaches to, e.g. `[{name: public-gw, namespace: gateways}]`; "
        "set when the operator creates the route.",
    )


class IstioRouting(_Model):
    """Route weights of an Istio VirtualService."""

    virtual_service: DNSLabel = Field(description="Name of the VirtualService (same namespace).")
    hosts: list[str] = Field(
        default_factory=list, max_length=16, description="Hosts of the VirtualService (default: the Service)."
    )
    gateways: list[str] = Field(default_factory=list, max_length=8, description="Istio gateways it binds to.")


class NginxRouting(_Model):
    """ingress-nginx canary annotations (`canary-weight`) on a copy of the stable Ingress."""

    ingress: DNSLabel = Field(description="Name of the stable Ingress (same namespace), managed by the user.")


class TrafficRouting(_Model):
    """Which router sets the canary weight; exactly one."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "(has(self.replicaRatio) ? 1 : 0) + (has(self.gatewayAPI) ? 1 : 0)"
                " + (has(self.istio) ? 1 : 0) + (has(self.nginx) ? 1 : 0) == 1",
                "exactly one of replicaRatio, gatewayAPI, istio, nginx must be set",
            ),
        )
    )

    replica_ratio: ReplicaRatioRouting | None = Field(default=None, description="Replica-ratio router.")
    gateway_api: GatewayAPIRouting | None = Field(
        default=None, alias="gatewayAPI", description="Gateway API HTTPRoute router."
    )
    istio: IstioRouting | None = Field(default=None, description="Istio VirtualService router.")
    nginx: NginxRouting | None = Field(default=None, description="ingress-nginx canary router.")

    @model_validator(mode="after")
    def _exactly_one(self) -> TrafficRouting:
        chosen = [r for r in (self.replica_ratio, self.gateway_api, self.istio, self.nginx) if r is not None]
        if len(chosen) != 1:
            raise ValueError("exactly one of replicaRatio, gatewayAPI, istio, nginx must be set")
        return self

    @property
    def kind(self) -> str:
        """The wire name of the chosen router."""
        for attr, name in (
            ("gateway_api", "gatewayAPI"),
            ("istio", "istio"),
            ("nginx", "nginx"),
        ):
            if getattr(self, attr) is not None:
                return name
        return "replicaRatio"


class ErrorRateCheck(_Model):
    """Share of 5xx responses (503 load shedding excluded: see shedRate) of the canary vs the stable,
    over the rollout so far: Pass when the upper end of the interval of (canary share - stable share)
    is <= maxDelta, Fail when its lower end is above maxDelta, else Inconclusive."""

    enabled: bool = Field(default=True, description="Run this check.")
    max_delta: Ratio = Field(
        default=0.01,
        description="Largest excess of the canary's 5xx share over the stable's (0.01: one percentage point).",
    )


class ShedRateCheck(_Model):
    """Share of requests the canary sheds (503 + Retry-After, `fraud_model_shed_requests_total`) vs the
    stable, judged like errorRate. Shed requests are answered at once, so they also hide from latency."""

    enabled: bool = Field(default=True, description="Run this check.")
    max_delta: Ratio = Field(
        default=0.01, description="Largest excess of the canary's shed share over the stable's (0.01: one point)."
    )


class LatencyCheck(_Model):
    """Latency of answered (2xx) requests since the step started, as a test on counts: the limit is
    the stable's quantile times maxRatio or plus toleranceSeconds (the larger), counted at the first
    histogram bucket bound at or above it. The canary's quantile is beyond that bound when more than
    1 - quantile of its answers are, so the check compares the share of answers beyond it, canary
    minus stable, with an interval (alpha spent over looks): Fail when that excess is surely above
    1 - quantile, Pass when surely below, Inconclusive in between."""

    enabled: bool = Field(default=True, description="Run this check.")
    quantile: float = Field(
        default=0.95,
        gt=0.0,
        lt=1.0,
        description="Quantile the limit applies to: the canary may have at most 1 - quantile more of its "
        "answers beyond the limit than the stable (p95: 5 percentage points).",
    )
    max_ratio: float = Field(
        default=1.5, ge=1.0, le=100.0, description="Limit: the stable's quantile x maxRatio (or + toleranceSeconds)."
    )
    tolerance_seconds: float = Field(
        default=0.01,
        ge=0.0,
        le=60.0,
        description="Limit: the stable's quantile + this many seconds, when that is above the ratio's limit: "
        "+10ms on a 8ms p99 is not a regression.",
    )
    max_seconds: float | None = Field(
        default=None,
        gt=0,
        description="Optional absolute ceiling: Fail when surely more than 1 - quantile of the canary's answers "
        "are beyond the first bucket bound at or above it.",
    )


class ScoreDriftCheck(_Model):
    """Score distribution of the canary vs the stable: PSI over the bucket bounds both tracks export
    (minus the PSI sampling noise alone gives), and the share of scores above the bound nearest half
    the decision threshold (the near-misses), compared as a rate ratio with flagRate's bounds and
    interval rule. Fail when PSI > maxPsi or that ratio is surely out of bounds; Pass when PSI <=
    maxPsi and the ratio is surely within them."""

    enabled: bool = Field(default=True, description="Run this check.")
    max_psi: float = Field(
        default=0.5,
        gt=0.0,
        le=10.0,
        description="Fail above this PSI (beyond sampling noise). On the bento's log-spaced buckets a healthy "
        "retrain measured 0.19 against its predecessor and a miscalibrated model 0.87; the 0.1/0.25 rules of "
        "thumb are for ten quantile bins and would fail retrains for moving scores far below the threshold.",
    )


class FlagRateCheck(_Model):
    """Canary flag rate divided by the stable flag rate, over the rollout so far, with an exact
    interval (the canary's share of all flags is binomial given their total): Pass when the whole
    interval is within [minRatio, maxRatio], Fail when it is wholly outside, else Inconclusive.
    A look counts only once the flags could decide, so a canary that flags nothing fails as soon
    as the stable's flags make that implausible."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "!has(self.minRatio) || !has(self.maxRatio) || self.minRatio <= self.maxRatio",
                "minRatio must be <= maxRatio",
            )
        )
    )

    enabled: bool = Field(default=True, description="Run this check.")
    min_ratio: float = Field(default=0.5, ge=0.0, le=100.0, description="Lowest allowed canary/stable flag-rate ratio.")
    max_ratio: float = Field(
        default=2.0, ge=0.0, le=100.0, description="Highest allowed canary/stable flag-rate ratio."
    )

    @model_validator(mode="after")
    def _bounds(self) -> FlagRateCheck:
        if self.min_ratio > self.max_ratio:
            raise ValueError("minRatio must be <= maxRatio")
        return self


class InputRejectionCheck(_Model):
    """Share of requests the canary rejects as invalid input vs the stable, judged like errorRate."""

    enabled: bool = Field(default=True, description="Run this check.")
    max_delta: Ratio = Field(
        default=0.02, description="Largest excess of the canary's rejection share over the stable's."
    )


class BuiltinChecks(_Model):
    """The checks every fraud model gets."""

    error_rate: ErrorRateCheck = Field(
        default_factory=ErrorRateCheck,
        description="Share of 5xx answers (503 excluded: see shedRate) over the rollout so far. Pass when the "
        "upper end of the interval of (canary share - stable share) is <= maxDelta, Fail when its lower end is "
        "above maxDelta (Newcombe's score interval, alpha spent over looks).",
    )
    shed_rate: ShedRateCheck = Field(
        default_factory=ShedRateCheck,
        description="Share of requests shed with 503 (`fraud_model_shed_requests_total`), judged like errorRate. "
        "Shed requests are answered at once, so latency reads answered (2xx) requests only.",
    )
    latency: LatencyCheck = Field(
        default_factory=LatencyCheck,
        description="Answered (2xx) requests since the step started: the canary's share beyond the stable's "
        "quantile (x maxRatio or + toleranceSeconds) may exceed the stable's by at most 1 - quantile; judged "
        "with Newcombe's interval, alpha spent over looks.",
    )
    score_drift: ScoreDriftCheck = Field(
        default_factory=ScoreDriftCheck,
        description="PSI over the score-histogram bounds both tracks export (noise-corrected), plus the share "
        "of scores above the bound nearest half the threshold, judged with flagRate's bounds and rule.",
    )
    flag_rate: FlagRateCheck = Field(
        default_factory=FlagRateCheck,
        description="Canary / stable flag rate over the rollout so far, with an exact interval (Clopper-Pearson "
        "on the canary's share of all flags, mapped to the ratio; alpha spent over looks). Pass when the whole "
        "interval is inside [minRatio, maxRatio], Fail when wholly outside, else Inconclusive. A look counts "
        "only once the flags could decide (totals only), so a canary that never flags fails as soon as the "
        "stable's flags make that implausible.",
    )
    input_rejection: InputRejectionCheck = Field(
        default_factory=InputRejectionCheck,
        description="Share of requests rejected as invalid input, judged like errorRate.",
    )


# What a custom query's placeholders stand for when its syntax is checked (analysis.custom_query
# substitutes the real values; these have the same shape).
PROMQL_PLACEHOLDERS = {"track": "canary", "name": "fraudmodel", "namespace": "default", "window": "1m"}


def promql_problem(template: str) -> str | None:
    """Why a custom check's query (placeholders substituted) is not valid PromQL, or None.

    The API server cannot parse PromQL, so this runs in the operator only: a FraudModel whose
    query could never run is Failed (InvalidSpec) before its first rollout, not at its first analysis.
    """
    query = template
    for name, value in PROMQL_PLACEHOLDERS.items():
        query = query.replace("{{" + name + "}}", value)
    try:
        promql_parser.parse(query)
    except ValueError as exc:
        return f"query is not valid PromQL: {exc}"
    return None


class CustomCheck(_Model):
    """A PromQL query whose scalar result must stay within [min, max]."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            ("has(self.min) || has(self.max)", "a custom check needs min or max"),
            ("!has(self.min) || !has(self.max) || self.min <= self.max", "min must be <= max"),
        )
    )

    name: DNSLabel = Field(description="Check name, shown in status and Events.")
    query: str = Field(
        min_length=1,
        max_length=4096,
        description="PromQL returning one value; `{{track}}` (`canary`), `{{name}}`, `{{namespace}}`, "
        "`{{version}}` (the canary's model version) and `{{window}}` (the evidence range, e.g. `420s`: since "
        "the canary started, at most `window`) are substituted. Judged only once both tracks have minSamples "
        "requests; +Inf or NaN never passes "
        "(`{{track}}` is `canary`).",
    )
    min: float | None = Field(default=None, description="Fail below this value.")
    max: float | None = Field(default=None, description="Fail above this value.")

    @field_validator("query")
    @classmethod
    def _promql(cls, query: str) -> str:
        problem = promql_problem(query)
        if problem:
            raise ValueError(problem)
        return query

    @model_validator(mode="after")
    def _bounds(self) -> CustomCheck:
        if self.min is None and self.max is None:
            raise ValueError("a custom check needs min or max")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min must be <= max")
        return self


class PrometheusSpec(_Model):
    """Where the analysis reads metrics."""

    address: str = Field(
        default="http://prometheus-operated.monitoring.svc:9090",
        pattern=r"^https?://[^\s]+$",
        max_length=512,
        description="Prometheus base URL.",
    )
    timeout: Annotated[Duration, duration_between("100ms", "5m")] = Field(
        default="5s", description="Timeout of each query."
    )


# A Prometheus label name: anything else makes every analysis query a syntax error.
PromLabel = Annotated[str, Field(max_length=128, pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$")]


class MetricLabels(_Model):
    """Prometheus label names that identify a FraudModel's series (set by your scrape config)."""

    track: PromLabel = Field(default="track", description="Label holding `stable` or `canary`.")
    model: PromLabel = Field(default="fraudmodel", description="Label holding the FraudModel name.")
    namespace: PromLabel = Field(default="namespace", description="Label holding the namespace.")


class AnalysisSpec(_Model):
    """How each step's canary is judged against the stable."""

    prometheus: PrometheusSpec = Field(default_factory=PrometheusSpec, description="Metrics source.")
    window: Annotated[Duration, duration_between("1s", "24h")] = Field(
        default="2h",
        description="Longest range of evidence. Each analysis reads everything since the canary revision "
        "started (latency: since its step started), both tracks over the same range, up to this far back.",
    )
    min_samples: int = Field(
        default=100,
        ge=1,
        description="Requests each track must have served in the range before any check is judged; fewer is "
        "inconclusive. Flag-rate and drift checks also wait until their flags could decide (see flagRate).",
    )
    alpha: float = Field(
        default=0.01,
        gt=0.0,
        le=0.2,
        description="Error budget of each check over the whole rollout: a canary exactly at a bound passes "
        "that check (or one exactly inside fails it) with probability at most alpha, however many analyses "
        "look. The k-th look of a check uses intervals with error alpha / (k (k + 1)) on each side.",
    )
    failure_limit: int = Field(
        default=2,
        ge=1,
        le=100,
        description="Failed analyses over the rollout that roll back (a Pass does not reset them).",
    )
    inconclusive_limit: int = Field(
        default=60,
        ge=1,
        le=1000,
        description="Consecutive inconclusive analyses before `onInconclusive`. The default leaves a healthy "
        "canary at 50 requests per second time to show its flag rate is within bounds at its first, 10% step "
        "(99.9% promoted over 1,000 simulated rollouts; at 40, 98.4%: docs/benchmarks.md).",
    )
    on_inconclusive: Literal["Pause", "Rollback"] = Field(
        default="Pause", description="What to do when inconclusiveLimit is reached."
    )
    metric_labels: MetricLabels = Field(default_factory=MetricLabels, description="Label names in Prometheus.")
    checks: BuiltinChecks = Field(default_factory=BuiltinChecks, description="Built-in checks.")
    custom: list[CustomCheck] = Field(default_factory=list, max_length=16, description="Custom PromQL checks.")


# The request fields a sticky key may come from: the identity fields the bento's Transaction
# accepts besides its features (any other field is refused by the bento as unknown, 422).
STICKY_FIELDS = ("account_id", "card_id")
STICKY_BUCKETS = 10_000  # the key space: a weight of w% gives the canary buckets [0, 100 w)
STICKY_ROUTER_MESSAGE = (
    "stickyBy needs trafficRouting.replicaRatio: the split happens at the stable pods' edge, which forwards "
    "the canary's keys; a gateway or mesh route cannot hash a key into weight buckets (see docs/operator.md)"
)


class StickyBy(_Model):
    """Where the key of a request comes from; every request with one key goes to one track."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            ("has(self.field) != has(self.header)", "exactly one of field, header must be set"),
        )
    )

    field: Literal["account_id", "card_id"] | None = Field(
        default=None,
        description="A top-level string field of each transaction: `account_id` or `card_id` (the identity "
        "fields the fraud_detector bento accepts besides its features). In a batch, each transaction goes to "
        "its key's track.",
    )
    header: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9-]*$", max_length=64)] | None = Field(
        default=None,
        description="An HTTP request header, e.g. `X-Account-Id` (matched case-insensitively); the whole request "
        "goes to its key's track.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> StickyBy:
        if (self.field is None) == (self.header is None):
            raise ValueError("exactly one of field, header must be set")
        return self

    @property
    def source(self) -> str:
        """`field:<name>` or `header:<lower-case name>`: how the edge reads the key."""
        return f"field:{self.field}" if self.field is not None else f"header:{(self.header or '').lower()}"


class RollbackSpec(_Model):
    """What happens to the canary after a rollback."""

    scale_down_delay: Annotated[Duration, duration_between("0s", "168h")] = Field(
        default="30s", description="Keep the rolled-back canary running this long (for debugging), then scale to 0."
    )


class FlipRateGate(_Model):
    """Share of paired transactions on which the shadow decides otherwise than the stable did."""

    enabled: bool = Field(default=True, description="Run this gate.")
    max_rate: float = Field(
        default=0.005,
        gt=0.0,
        le=1.0,
        description="Largest share of paired transactions whose decision flips (flag <-> allow). Pass when the "
        "upper end of the exact (Clopper-Pearson) interval of the flip rate is <= maxRate, Fail when its lower "
        "end is above it (alpha spent over looks), else Inconclusive. At a 1% flag rate a healthy retrain "
        "flips a few in a thousand; a miscalibrated model tens.",
    )


class PairedFlagRateGate(_Model):
    """Shadow flag rate / stable flag rate on the *same* transactions, with an exact paired interval."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "!has(self.minRatio) || !has(self.maxRatio) || self.minRatio <= self.maxRatio",
                "minRatio must be <= maxRatio",
            )
        )
    )

    enabled: bool = Field(default=True, description="Run this gate.")
    min_ratio: float = Field(default=0.8, ge=0.0, le=100.0, description="Lowest allowed shadow/stable flag-rate ratio.")
    max_ratio: float = Field(
        default=1.25, ge=0.0, le=100.0, description="Highest allowed shadow/stable flag-rate ratio."
    )

    @model_validator(mode="after")
    def _bounds(self) -> PairedFlagRateGate:
        if self.min_ratio > self.max_ratio:
            raise ValueError("minRatio must be <= maxRatio")
        return self


class ShadowGates(_Model):
    """What a shadow phase must show, transaction by transaction."""

    flip_rate: FlipRateGate = Field(default_factory=FlipRateGate, description="Decision flips (flag <-> allow).")
    flag_rate_ratio: PairedFlagRateGate = Field(
        default_factory=PairedFlagRateGate,
        description="Paired flag-rate ratio (shadow flags / stable flags on the same transactions), with the "
        "score interval for a ratio of paired proportions over the whole agreement table: it must lie inside "
        "[minRatio, maxRatio] to Pass and wholly outside to Fail (alpha spent over looks). The message also "
        "gives the exact McNemar p-value of the discordant pairs (equal flag rates).",
    )


SHADOW_STRATEGY_MESSAGE = "rollout.shadow needs strategy Canary (Immediate replaces the stable at once, unjudged)"


class ShadowSpec(_Model):
    """A shadow phase before any client sees the new version: it scores a mirrored sample of the
    stable's live traffic, its answers are thrown away, and both models are compared pair by pair."""

    duration: Annotated[Duration, duration_between("1m", "168h")] = Field(
        default="30m",
        description="Shortest time in shadow: a Pass counts only after it (a fraud pattern of the night "
        "should be seen); a Fail rolls back at once.",
    )
    min_paired_samples: int = Field(
        default=2000,
        ge=1,
        le=100_000_000,
        description="Paired transactions (scored by both models) needed before any gate is judged.",
    )
    sample: float = Field(
        default=0.25,
        gt=0.0,
        le=1.0,
        description="Share of the stable's scored requests mirrored to the shadow. Mirroring is asynchronous "
        "and dropped (counted), never delayed, when the shadow lags.",
    )
    gates: ShadowGates = Field(default_factory=ShadowGates, description="Paired gates.")
    then: Literal["Canary", "Promote"] = Field(
        default="Canary",
        description="After a passed shadow phase: `Canary` runs the weighted steps (their own analysis), "
        "`Promote` replaces the stable at once.",
    )


DEADLINE_MESSAGE = (
    "progressDeadline must be longer than interval: each step waits interval before its first analysis, "
    "so a shorter deadline always rolls back"
)


class RolloutSpec(_Model):
    """How a new version reaches traffic."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "!has(self.steps) || self.steps.size() == 0 || self.steps.isSorted()",
                "steps must be ascending",
            ),
            (
                "!has(self.steps) || self.steps.all(w, self.steps.filter(x, x == w).size() == 1)",
                "steps must not repeat a weight",
            ),
            (
                "!has(self.stepWeight) || !has(self.maxWeight) || self.stepWeight <= self.maxWeight",
                "stepWeight must be <= maxWeight",
            ),
            (
                "!has(self.interval) || !has(self.progressDeadline)"
                " || duration(self.interval) < duration(self.progressDeadline)",
                DEADLINE_MESSAGE,
            ),
            (
                "!has(self.stickyBy) || !has(self.trafficRouting) || has(self.trafficRouting.replicaRatio)",
                STICKY_ROUTER_MESSAGE,
            ),
            ("!has(self.shadow) || !has(self.strategy) || self.strategy == 'Canary'", SHADOW_STRATEGY_MESSAGE),
        )
    )

    strategy: Strategy = Field(
        default=Strategy.CANARY, description="Canary (weighted steps with analysis) or Immediate (replace)."
    )
    traffic_routing: TrafficRouting = Field(
        default_factory=lambda: TrafficRouting(replica_ratio=ReplicaRatioRouting()),
        description="How traffic is split between tracks (default: replicaRatio).",
        json_schema_extra={"default": {"replicaRatio": {}}},
    )
    steps: list[Annotated[int, Field(ge=1, le=100)]] = Field(
        default_factory=list,
        max_length=20,
        description="Explicit canary weights in percent, ascending, e.g. `[5, 25, 50]`; "
        "when set, stepWeight/maxWeight are ignored. Promotion follows the last step; a step at 100 is the "
        "promotion itself (nothing to compare against a stable without traffic).",
    )
    step_weight: int = Field(default=10, ge=1, le=100, description="Weight added per step (without `steps`).")
    max_weight: int = Field(
        default=50,
        ge=1,
        le=100,
        description="Last weight before promotion (without `steps`), reached even when not a multiple of stepWeight; "
        "100 means promotion after the previous step.",
    )
    interval: Annotated[Duration, duration_between("1s", "24h")] = Field(
        default="1m", description="Time at each step before its analysis."
    )
    progress_deadline: Annotated[Duration, duration_between("1s", "168h")] = Field(
        default="75m",
        description="Longest a step may wait for ready canary pods or conclusive analysis before rollback; "
        "longer than `interval`, and than inconclusiveLimit x interval, so that a canary still held at the "
        "limit is paused for a human rather than rolled back.",
    )
    paused: bool = Field(default=False, description="Hold the rollout at its current step (GitOps-friendly pause).")
    sticky_by: StickyBy | None = Field(
        default=None,
        description="Keep every request of one account (or card) on one track for the whole rollout: its key is "
        f"hashed into {STICKY_BUCKETS} buckets and the canary gets the buckets below its weight, so an account on "
        "the canary at 10% stays there at 30%. The shared Service then selects the stable pods only and their edge "
        "forwards the canary's keys to the canary Service (needs replicaRatio routing). A request without the key "
        "stays on stable.",
    )
    shadow: ShadowSpec | None = Field(
        default=None,
        description="A shadow phase before the canary steps (or instead of them, `then: Promote`): the new "
        "version scores a mirrored sample of live traffic and never answers a client. Needs strategy Canary.",
    )
    analysis: AnalysisSpec = Field(default_factory=AnalysisSpec, description="Canary analysis.")
    on_rollback: RollbackSpec = Field(default_factory=RollbackSpec, description="Rollback behaviour.")

    @field_validator("steps")
    @classmethod
    def _ascending(cls, steps: list[int]) -> list[int]:
        if any(b <= a for a, b in pairwise(steps)):
            raise ValueError("steps must be ascending and must not repeat a weight")
        return steps

    @model_validator(mode="after")
    def _step_le_max(self) -> RolloutSpec:
        if self.step_weight > self.max_weight:
            raise ValueError("stepWeight must be <= maxWeight")
        if parse_duration(self.interval) >= parse_duration(self.progress_deadline):
            raise ValueError(
                f"{DEADLINE_MESSAGE} (interval {self.interval}, progressDeadline {self.progress_deadline})"
            )
        if self.sticky_by is not None and self.traffic_routing.kind != "replicaRatio":
            raise ValueError(STICKY_ROUTER_MESSAGE)
        if self.shadow is not None and self.strategy != Strategy.CANARY:
            raise ValueError(SHADOW_STRATEGY_MESSAGE)
        return self

    @property
    def weights(self) -> tuple[int, ...]:
        """The canary weight of every step, in order; maxWeight is the last (20 up to 50 is 20, 40, 50)."""
        if self.steps:
            return tuple(self.steps)
        weights = tuple(range(self.step_weight, self.max_weight + 1, self.step_weight))
        return weights if weights[-1] == self.max_weight else (*weights, self.max_weight)


class FlagRateDrift(_Model):
    """The stable track's flag rate against the rate its model flagged on its reference sample."""

    enabled: bool = Field(default=True, description="Watch the flag rate.")
    min_ratio: float = Field(
        default=0.5, ge=0.0, le=100.0, description="Lowest allowed live/reference flag-rate ratio."
    )
    max_ratio: float = Field(
        default=2.0,
        ge=1.0,
        le=100.0,
        description="Highest allowed live/reference flag-rate ratio (false alarms grow with drifted "
        "legitimate traffic: the generator's shift 0.25 flags ~10x more).",
    )

    @model_validator(mode="after")
    def _ordered(self) -> FlagRateDrift:
        if self.min_ratio > self.max_ratio:
            raise ValueError("minRatio must be <= maxRatio")
        return self


class MonitoringSpec(_Model):
    """Watching the promoted model: the stable track's live traffic against its model's training reference.

    Population drift moves both tracks alike, so the canary analysis cannot see it; this compares
    the stable track with the reference sample its model was evaluated on (published by the serving
    pods). It reads the Prometheus of `rollout.analysis` with its label names. It reports (the
    `Drifting` condition, an Event, operator metrics) and never changes traffic."""

    enabled: bool = Field(default=True, description="Watch the stable model while the FraudModel is Ready.")
    interval: Annotated[Duration, duration_between("10s", "24h")] = Field(
        default="5m", description="Time between two measurements."
    )
    window: Annotated[Duration, duration_between("1m", "168h")] = Field(
        default="1h", description="Range of live traffic each measurement reads."
    )
    min_samples: int = Field(
        default=1000,
        ge=100,
        description="Transactions the stable track must have scored in the window before anything is judged.",
    )
    max_psi: float = Field(
        default=0.2,
        gt=0.0,
        le=10.0,
        description="Largest PSI of live scores against the reference scores (0.1-0.25: a moderate shift).",
    )
    max_feature_psi: float = Field(
        default=0.25,
        gt=0.0,
        le=10.0,
        description="Largest PSI of each monitored input feature against its reference (where the model exports one).",
    )
    flag_rate: FlagRateDrift = Field(
        default_factory=FlagRateDrift, description="Live flag rate against the reference flag rate."
    )
    alpha: float = Field(
        default=0.01,
        gt=0.0,
        le=0.2,
        description="Error of each measurement: a PSI or flag-rate ratio exactly at its bound reads as drift with "
        "probability at most alpha (sampling noise is subtracted and its margin required).",
    )


class FraudModelSpec(_Model):
    """Desired state of a FraudModel."""

    model: ModelSpec = Field(description="The model version to serve.")
    serving: ServingSpec = Field(default_factory=ServingSpec, description="How pods run.")
    rollout: RolloutSpec = Field(default_factory=RolloutSpec, description="How new versions reach traffic.")
    monitoring: MonitoringSpec = Field(
        default_factory=MonitoringSpec, description="Drift of the stable model against its training reference."
    )


# ---------------------------------------------------------------- status


class Phase(StrEnum):
    PENDING = "Pending"
    PROGRESSING = "Progressing"
    SHADOW = "Shadow"  # a new version scores mirrored traffic; the stable answers every client
    READY = "Ready"
    PAUSED = "Paused"
    ROLLED_BACK = "RolledBack"
    FAILED = "Failed"


class Verdict(StrEnum):
    PASS = "Pass"
    FAIL = "Fail"
    INCONCLUSIVE = "Inconclusive"


class Condition(_Model):
    """A kstatus condition."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    type: str = Field(description="Ready, Progressing, Degraded, Drifting, Reconciling or Stalled.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(default="", description="CamelCase reason.")
    message: str = Field(default="", description="Human-readable detail.")
    last_transition_time: datetime | None = Field(default=None, description="When status last changed.")
    observed_generation: int | None = Field(default=None, description="Generation this condition describes.")


class TrackStatus(_Model):
    """One serving track."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    version: str | None = Field(default=None, description="Model version served.")
    image: str | None = Field(default=None, description="Image served.")
    revision: str | None = Field(default=None, description="Hash of the track's spec.model.")
    model: ModelSpec | None = Field(default=None, description="The spec.model this track serves.")
    weight: int = Field(default=0, ge=0, le=100, description="Percent of traffic.")
    replicas: int = Field(default=0, description="Desired pods.")
    ready_replicas: int = Field(default=0, description="Ready pods.")


class CanaryStatus(TrackStatus):
    """The canary track and its rollout progress (`weight` is the step's weight)."""

    routed_weight: int | None = Field(
        default=None,
        description="Weight the operator set on the router at the last reconcile; it lags `weight` until the "
        "canary has ready pods for the step, and the step's interval starts only once it reaches it.",
    )
    effective_weight: int | None = Field(
        default=None,
        description="Percent of requests the canary really gets, read back from the router at the last "
        "reconcile (replicaRatio: its share of the ready pods behind the shared Service). It lags `weight` "
        "until the canary has ready pods for the step, and differs where replica counts cannot express it.",
    )
    step: int = Field(default=0, description="Index of the current step (0-based).")
    failed_checks: int = Field(
        default=0,
        description="Failed analyses over this rollout (a Pass does not reset them); failureLimit counts these.",
    )
    inconclusive_checks: int = Field(default=0, description="Consecutive inconclusive analyses.")
    started_at: datetime | None = Field(default=None, description="When the rollout started.")
    step_started_at: datetime | None = Field(default=None, description="When the current step's weight was set.")
    progressed_at: datetime | None = Field(
        default=None, description="Last progress (step start or conclusive analysis); the deadline counts from it."
    )
    analyzed_at: datetime | None = Field(default=None, description="When the last analysis of this canary ran.")
    promoting: bool = Field(default=False, description="Promoted; waiting for the stable track to serve it.")
    paused_at: datetime | None = Field(
        default=None, description="When the current pause began (the progress deadline does not run while paused)."
    )
    paused_seconds: float = Field(
        default=0.0, description="Time spent paused so far, left out of the progress deadline."
    )
    pause_reason: str | None = Field(
        default=None,
        description="Why the rollout holds until the resume annotation names this version or revision "
        "(onInconclusive: Pause); analysis still runs and a failure still rolls back.",
    )
    rolled_back_at: datetime | None = Field(default=None, description="When this canary was rolled back.")
    scaled_down: bool = Field(default=False, description="Rolled back and scaled to zero.")


class ShadowStatus(TrackStatus):
    """The shadow track: a new version scoring a mirrored sample of the stable's traffic. `weight` is
    always 0: its answers never reach a client."""

    sample: float = Field(default=0.0, description="Share of the stable's scored requests mirrored to it.")
    started_at: datetime | None = Field(default=None, description="When the shadow phase started.")
    progressed_at: datetime | None = Field(
        default=None, description="Last progress (start or conclusive analysis); the deadline counts from it."
    )
    analyzed_at: datetime | None = Field(default=None, description="When the last paired analysis ran.")
    paired_samples: int | None = Field(
        default=None, description="Transactions scored by both models, at the last analysis."
    )
    failed_checks: int = Field(default=0, description="Failed paired analyses over the shadow phase.")
    inconclusive_checks: int = Field(default=0, description="Consecutive inconclusive paired analyses.")
    passed_at: datetime | None = Field(
        default=None, description="When the paired gates last passed (the phase ends once `duration` has run too)."
    )
    paused_at: datetime | None = Field(default=None, description="When the current pause began.")
    paused_seconds: float = Field(default=0.0, description="Time spent paused, left out of the progress deadline.")


class CheckResult(_Model):
    """One check of one analysis."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str = Field(description="Check name.")
    verdict: Verdict = Field(description="Pass, Fail or Inconclusive.")
    value: float | None = Field(default=None, description="Measured value (canary); absent when not finite.")
    baseline: float | None = Field(default=None, description="Same measure on the stable track.")
    threshold: str = Field(default="", description="The bound applied, e.g. `<= 0.2`.")
    samples: int | None = Field(default=None, description="Canary requests in the evidence range.")
    looks: int = Field(
        default=0, ge=0, description="Looks this check has spent on this revision (alpha spending), this one included."
    )
    message: str = Field(default="", description="Why, in words, with the interval.")

    @field_validator("value", "baseline")
    @classmethod
    def _finite_or_absent(cls, value: float | None) -> float | None:
        # JSON has no Infinity/NaN: written as null they would differ from what the next reconcile computes.
        return value if value is None or math.isfinite(value) else None


class AnalysisStatus(_Model):
    """The latest analysis."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    time: datetime | None = Field(default=None, description="When it ran.")
    step: int = Field(default=0, description="Step it judged.")
    weight: int = Field(default=0, description="Canary weight it judged.")
    revision: str | None = Field(
        default=None, description="Canary revision it judged (looks carry over only within one revision)."
    )
    verdict: Verdict = Field(description="Overall verdict.")
    checks: list[CheckResult] = Field(default_factory=list, description="Per-check results.")
    effective_share: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="stickyBy: share of the judged step's transactions the canary really answered, counted by "
        "the stable pods' edge (the step's weight is its share of accounts; heavy accounts and fallbacks move "
        "this away from it).",
    )


class HistoryEntry(_Model):
    """A finished rollout."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    version: str = Field(description="Version rolled out.")
    outcome: Literal["Promoted", "RolledBack", "Aborted", "Replaced"] = Field(description="How it ended.")
    reason: str = Field(default="", description="Why.")
    time: datetime | None = Field(default=None, description="When it ended.")


class FraudModelStatus(_Model):
    """Observed state, written only by the operator."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    observed_generation: int | None = Field(default=None, description="Generation last reconciled.")
    phase: Phase = Field(
        default=Phase.PENDING, description="Pending, Progressing, Shadow, Ready, Paused, RolledBack, Failed."
    )
    message: str = Field(default="", description="Summary of the current state.")
    stable: TrackStatus = Field(default_factory=TrackStatus, description="The stable track.")
    canary: CanaryStatus | None = Field(default=None, description="The canary track while a rollout runs.")
    shadow: ShadowStatus | None = Field(
        default=None, description="The shadow track while a shadow phase runs (spec.rollout.shadow)."
    )
    rolled_back_revision: str | None = Field(
        default=None, description="Revision of spec.model last rolled back; not retried until retry or change."
    )
    traffic_routing: TrafficRouting | None = Field(
        default=None,
        description="The router carrying the traffic now; when spec names another, this one is finalised "
        "(all traffic to stable, canary routes removed) before the new one takes over.",
    )
    retry_token: str | None = Field(
        default=None, description="Last retry annotation value acted on (or seen when the canary was rolled back)."
    )
    consumed_controls: dict[str, str] = Field(
        default_factory=dict,
        description="Per control annotation (promote, abort, resume), the last value acted on or left over when the "
        "canary it named ended: a value acts once, so a leftover never acts on a later revision.",
    )
    rollbacks: int = Field(default=0, description="Rollbacks so far.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, Progressing, Degraded; Drifting (spec.monitoring); Reconciling and Stalled for kstatus.",
    )
    last_analysis: AnalysisStatus | None = Field(default=None, description="Latest canary analysis.")
    history: list[HistoryEntry] = Field(
        default_factory=list, max_length=HISTORY_LIMIT, description="Recent rollouts, newest first."
    )
    kopf: dict[str, Any] | None = Field(
        default=None,
        description="The operator framework's own bookkeeping (handler progress); not for users.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )


def revision_of(model: ModelSpec) -> str:
    """A short stable hash of a spec.model: a new revision starts a rollout."""
    import hashlib
    import json

    raw = json.dumps(model.model_dump(mode="json", by_alias=True), sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()[:10]


class ObjectMeta(BaseModel):
    """The part of metadata the operator reads."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    namespace: str = "default"
    uid: str = ""
    generation: int = 0
    annotations: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _names_its_children(cls, name: str) -> str:
        for _, message, check in NAME_RULES:
            if not check(name):
                raise ValueError(message)
        return name


class FraudModel(BaseModel):
    """A parsed FraudModel object."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    api_version: str = Field(default=f"{GROUP}/{VERSION}", alias="apiVersion")
    kind: Literal["FraudModel"] = "FraudModel"
    metadata: ObjectMeta
    spec: FraudModelSpec
    status: FraudModelStatus = Field(default_factory=FraudModelStatus)


__all__ = [
    "ABORT_ANNOTATION",
    "GROUP",
    "KIND",
    "PAUSE_ANNOTATION",
    "PLURAL",
    "PROMOTE_ANNOTATION",
    "RESUME_ANNOTATION",
    "RETRY_ANNOTATION",
    "STICKY_BUCKETS",
    "STICKY_FIELDS",
    "VERSION",
    "AnalysisSpec",
    "AnalysisStatus",
    "Autoscaling",
    "CanaryStatus",
    "CheckResult",
    "Condition",
    "CustomCheck",
    "FraudModel",
    "FraudModelSpec",
    "FraudModelStatus",
    "HistoryEntry",
    "ModelSpec",
    "MonitoringSpec",
    "Phase",
    "RolloutSpec",
    "ServingSpec",
    "SpecError",
    "StickyBy",
    "Strategy",
    "TrackStatus",
    "TrafficRouting",
    "Verdict",
    "parse_duration",
    "parse_fraudmodel",
    "revision_of",
]


class SpecError(ValueError):
    """A FraudModel the operator cannot accept, with one line per problem (`path: message`)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_fraudmodel(body: Any) -> FraudModel:
    """Parse a FraudModel object (as served by the API), raising SpecError with field paths."""
    from pydantic import ValidationError

    try:
        return FraudModel.model_validate(body)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{_path(loc)}: {msg}")
        raise SpecError(problems) from None
