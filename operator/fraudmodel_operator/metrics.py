"""The operator's own Prometheus metrics (served on the metrics port)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from fraudmodel_operator.api import AnalysisStatus, Phase

if TYPE_CHECKING:
    from fraudmodel_operator.monitoring import DriftReport

PREFIX = "fraudmodel_operator"


class OperatorMetrics:
    """One registry per operator (tests make their own)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.reconciles = Counter(f"{PREFIX}_reconcile", "Reconciles by outcome.", ["outcome"], registry=r)
        self.errors = Counter(f"{PREFIX}_reconcile_errors", "Reconciles that raised.", registry=r)
        self.duration = Histogram(
            f"{PREFIX}_reconcile_duration_seconds", "Reconcile duration by outcome.", ["outcome"], registry=r
        )
        self.writes = Counter(f"{PREFIX}_api_writes", "Writes to the Kubernetes API by verb.", ["verb"], registry=r)
        self.by_phase = Gauge(f"{PREFIX}_fraudmodels", "FraudModels by phase.", ["phase"], registry=r)
        self.phase = Gauge(
            f"{PREFIX}_phase",
            "1 for the current phase of each FraudModel.",
            ["namespace", "fraudmodel", "phase"],
            registry=r,
        )
        self.weight = Gauge(
            f"{PREFIX}_canary_weight",
            "Canary traffic percent as served (the router's read-back).",
            ["namespace", "fraudmodel"],
            registry=r,
        )
        self.effective_share = Gauge(
            f"{PREFIX}_canary_effective_share",
            "stickyBy: share of the last judged step's transactions the canary answered (the stable edge's count).",
            ["namespace", "fraudmodel"],
            registry=r,
        )
        self.rollbacks = Counter(
            f"{PREFIX}_rollbacks", "Automatic and manual rollbacks.", ["namespace", "fraudmodel", "reason"], registry=r
        )
        self.analysis_value = Gauge(
            f"{PREFIX}_analysis_value",
            "Last measured value per check.",
            ["namespace", "fraudmodel", "check"],
            registry=r,
        )
        self.analysis_threshold = Gauge(
            f"{PREFIX}_analysis_threshold",
            "Numeric bound of the last analysis per check (upper bound where there are two).",
            ["namespace", "fraudmodel", "check"],
            registry=r,
        )
        self.verdicts = Counter(
            f"{PREFIX}_analysis_verdict",
            "Check verdicts.",
            ["namespace", "fraudmodel", "check", "verdict"],
            registry=r,
        )
        self.deadline = Gauge(
            f"{PREFIX}_progress_deadline_exceeded",
            "1 when a rollout is past its progress deadline.",
            ["namespace", "fraudmodel"],
            registry=r,
        )
        self.drifting = Gauge(
            f"{PREFIX}_drifting",
            "1 while the Drifting condition of a FraudModel is True (its stable model drifts from its reference).",
            ["namespace", "fraudmodel"],
            registry=r,
        )
        self.drift_value = Gauge(
            f"{PREFIX}_drift_value",
            "Last measured drift of the stable model per signal: PSI (score, feature.<name>) or the "
            "live/reference flag-rate ratio (flagRate).",
            ["namespace", "fraudmodel", "signal"],
            registry=r,
        )
        self.drift_threshold = Gauge(
            f"{PREFIX}_drift_threshold",
            "Upper bound of each drift signal (maxPsi, maxFeaturePsi, flagRate.maxRatio).",
            ["namespace", "fraudmodel", "signal"],
            registry=r,
        )
        self._phases: dict[tuple[str, str], Phase] = {}
        self._signals: dict[tuple[str, str], set[str]] = {}

    def serve(self, port: int, addr: str = "0.0.0.0") -> Callable[[], None]:
        """Serve `/metrics` on `addr:port` in a thread; returns a function that stops it."""
        server, thread = start_http_server(port, addr=addr, registry=self.registry)

        def stop() -> None:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

        return stop

    def observe_phase(self, namespace: str, name: str, phase: Phase | None) -> None:
        key = (namespace, name)
        before = self._phases.pop(key, None)
        if before is not None:
            self.phase.remove(namespace, name, before.value)
        if phase is not None:
            self._phases[key] = phase
            self.phase.labels(namespace, name, phase.value).set(1)
        for p in Phase:
            self.by_phase.labels(p.value).set(sum(1 for v in self._phases.values() if v == p))

    def observe_analysis(self, namespace: str, name: str, analysis: AnalysisStatus) -> None:
        if analysis.effective_share is not None:
            self.effective_share.labels(namespace, name).set(analysis.effective_share)
        for check in analysis.checks:
            self.verdicts.labels(namespace, name, check.name, check.verdict.value).inc()
            if check.value is not None:
                self.analysis_value.labels(namespace, name, check.name).set(check.value)
            bound = _upper_bound(check.threshold)
            if bound is not None:
                self.analysis_threshold.labels(namespace, name, check.name).set(bound)

    def observe_drift(self, namespace: str, name: str, report: DriftReport) -> None:
        """The values of one measurement; a signal without a value this time is removed, not left stale."""
        measured = {s.name: s for s in report.signals if s.value is not None}
        for gone in self._signals.get((namespace, name), set()) - set(measured):
            for gauge in (self.drift_value, self.drift_threshold):
                with suppress(KeyError):
                    gauge.remove(namespace, name, gone)
        for signal_name, signal in measured.items():
            assert signal.value is not None
            self.drift_value.labels(namespace, name, signal_name).set(signal.value)
            self.drift_threshold.labels(namespace, name, signal_name).set(signal.bound)
        self._signals[(namespace, name)] = set(measured)

    def observe_drifting(self, namespace: str, name: str, drifting: bool) -> None:
        self.drifting.labels(namespace, name).set(1 if drifting else 0)

    def forget(self, namespace: str, name: str) -> None:
        self.observe_phase(namespace, name, None)
        for gauge in (self.weight, self.deadline, self.effective_share, self.drifting):
            with suppress(KeyError):
                gauge.remove(namespace, name)
        for signal_name in self._signals.pop((namespace, name), set()):
            for gauge in (self.drift_value, self.drift_threshold):
                with suppress(KeyError):
                    gauge.remove(namespace, name, signal_name)


def _upper_bound(threshold: str) -> float | None:
    """The number after `<=` or the upper end of `in [a, b]`."""
    text = threshold.replace("s", "").replace("]", "")
    for sep in ("<= ", ", "):
        if sep in text:
            try:
                return float(text.rsplit(sep, 1)[1].split()[0])
            except (ValueError, IndexError):
                return None
    return None
