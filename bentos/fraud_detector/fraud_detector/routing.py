"""The stable edge's routing config: what the stable pods do with the traffic they take,
besides scoring it (mirror a sample to a shadow track; forward a share to a canary).

The operator writes it as JSON into the ConfigMap ``<fraudmodel>-routing``, mounted
into the stable pods; ``FRAUDMODEL_ROUTING_FILE`` names the file. It changes during a
rollout without restarting the pods: the kubelet swaps the mounted file (an atomic
symlink swap) on its periodic sync, within about a minute or two of the operator's
write, and :class:`RoutingFile` notices at the next check (at most once a second, on
the request path: one ``stat``).

The document (``fraudmodel_operator.edge_routing`` writes it)::

    {"revision": "3f2a...", "shadow": {"url": "http://fraud-shadow.risk.svc:80",
                                       "sample": 0.25, "version": "v2"},
     "sticky": {"url": "http://fraud-canary.risk.svc:80", "weight": 30,
                "source": "field:account_id", "salt": "<canary revision>"}}

Fields this bento does not know are ignored (a newer operator may add some); a
document that does not parse, or a missing file, is *no routing*: the stable pods
score everything themselves and send nothing anywhere, the safe state.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .sticky import StickyRoute

__all__ = ["NO_ROUTING", "RoutingConfig", "RoutingFile", "ShadowTarget", "StickyTarget", "parse_routing"]

logger = logging.getLogger(__name__)


class _Part(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, strict=False)


class ShadowTarget(_Part):
    """Mirror a sample of scored requests, with the stable's answers, to the shadow track."""

    url: str = Field(min_length=1, description="Base URL of the shadow track's Service.")
    sample: float = Field(
        ge=0.0, le=1.0, allow_inf_nan=False, description="Share of scored requests mirrored."
    )
    version: str = Field(min_length=1, description="The shadow's model version.")


class StickyTarget(_Part):
    """Forward the canary's keys (stickyBy) to the canary track (fraud_detector.sticky_edge)."""

    url: str = Field(min_length=1, description="Base URL of the canary track's Service.")
    weight: float = Field(
        ge=0.0, le=100.0, allow_inf_nan=False, description="Percent of key buckets on the canary."
    )
    source: str = Field(min_length=1, description="field:<name> or header:<name>.")
    salt: str = Field(default="", description="The assignment's hash key: the canary's revision.")

    @model_validator(mode="after")
    def _usable(self) -> StickyTarget:
        self.route()  # the edge's own checks (URL scheme, key field), named at parse time
        return self

    def route(self, revision: str = "") -> StickyRoute:
        return StickyRoute.from_dict(self.model_dump(), revision)


class RoutingConfig(_Part):
    """One revision of the routing config. Each target is an optional field; add new kinds of
    target as new fields (an absent field is None: that target is off)."""

    revision: str = ""
    shadow: ShadowTarget | None = None
    sticky: StickyTarget | None = None

    def sticky_route(self) -> StickyRoute | None:
        """The sticky split this config asks for, if any."""
        return self.sticky.route(self.revision) if self.sticky is not None else None


NO_ROUTING = RoutingConfig()


def parse_routing(raw: bytes | str) -> RoutingConfig:
    """The config in a document; ValueError naming what is wrong."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"routing config is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("routing config must be a JSON object")
    try:
        return RoutingConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "$"
        raise ValueError(f"routing config: {where}: {first['msg']}") from None


FileKey = tuple[int, int, int] | None  # (inode, mtime ns, size) of the file, None: no file


class RoutingFile:
    """The routing config in a file, re-read when the file changes, checked at most every
    `interval_s` seconds. `on_change(config, error)` is called with each new config (and the
    reason when the file could not be used); a failure never raises on the request path."""

    def __init__(
        self,
        path: str | Path | None,
        *,
        interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[RoutingConfig, str | None], None] = lambda config, error: None,
    ) -> None:
        self.path = Path(path) if path else None
        self.interval_s = interval_s
        self.clock = clock
        self.on_change = on_change
        self._config = NO_ROUTING
        self._key: FileKey = None
        self._next = float("-inf")

    def current(self) -> RoutingConfig:
        if self.path is None:
            return NO_ROUTING
        now = self.clock()
        if now < self._next:
            return self._config
        self._next = now + self.interval_s
        try:
            st = os.stat(self.path)  # follows the kubelet's ..data symlink: a swap is a new inode
            key: FileKey = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            key = None
        if key == self._key:
            return self._config
        self._key = key
        self._load(key)
        return self._config

    def _load(self, key: FileKey) -> None:
        assert self.path is not None
        error = None
        if key is None:
            config = NO_ROUTING
        else:
            try:
                config = parse_routing(self.path.read_bytes())
            except (OSError, ValueError) as exc:
                config, error = NO_ROUTING, str(exc)
                logger.warning("%s: %s; routing nothing until it is fixed", self.path, error)
        if config != self._config or error:
            logger.info(
                "routing config %s: %s", config.revision or "(none)", config.model_dump(exclude_none=True)
            )
            self._config = config
            self.on_change(config, error)
